package graphsim

import (
	"slices"
	"sync"
)

// BearerCredentials are the bearer credentials a server handed out or
// received: whoever holds one acts as the app it names, so a client must
// never log or return them. Tests search a client's output for them.
type BearerCredentials struct {
	// AccessTokens are the access_token values of the token endpoint.
	AccessTokens []string
	// ClientAssertions are the client_assertion JWTs clients sent to the
	// token endpoint, valid or not: each is signed with an app's key.
	ClientAssertions []string
	// TempAuths are the tempauth values of the pre-authenticated download
	// URLs handed out (in delta items and /content redirects).
	TempAuths []string
}

// issuedLog records bearer credentials when Options.RecordCredentials is set.
type issuedLog struct {
	on bool
	mu sync.Mutex
	c  BearerCredentials
}

func (l *issuedLog) add(list *[]string, v string) {
	if !l.on || v == "" {
		return
	}
	l.mu.Lock()
	*list = append(*list, v)
	l.mu.Unlock()
}

// IssuedCredentials returns every bearer credential recorded since New, in
// order; all lists are empty unless Options.RecordCredentials is set.
func (s *Server) IssuedCredentials() BearerCredentials {
	s.issued.mu.Lock()
	defer s.issued.mu.Unlock()
	c := s.issued.c
	return BearerCredentials{
		AccessTokens:     slices.Clone(c.AccessTokens),
		ClientAssertions: slices.Clone(c.ClientAssertions),
		TempAuths:        slices.Clone(c.TempAuths),
	}
}
