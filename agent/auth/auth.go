package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// How a caller was identified.
const (
	// ViaPlaintext: the agent runs without TLS and trusts every caller.
	ViaPlaintext = "plaintext"
	// ViaNone: the agent runs with TLS and the caller presented nothing.
	ViaNone = "none"
	// ViaCertificate: a verified client certificate.
	ViaCertificate = "certificate"
	// ViaToken: a bearer token of the token file.
	ViaToken = "token"
)

// Identity is who a caller is and what it may do.
type Identity struct {
	// Name is the certificate's Subject CN or the token's name; empty for
	// ViaPlaintext and ViaNone.
	Name string
	// Via is how the caller was identified: ViaPlaintext, ViaNone,
	// ViaCertificate or ViaToken.
	Via string
	// Roles the caller holds.
	Roles Role
}

// RateKey is the key of the caller's rate limit: its name when it has one,
// else the peer's host, so anonymous callers are limited per address.
func (id Identity) RateKey(peerHost string) string {
	if id.Via == ViaCertificate || id.Via == ViaToken {
		return id.Via + ":" + id.Name
	}
	return "peer:" + peerHost
}

// IdentityFromCertificate names a verified client certificate's holder by its
// Subject CN and gives it the roles of its Subject Organization values
// OrgRead and OrgWrite; other O values are ignored.
func IdentityFromCertificate(cert *x509.Certificate) Identity {
	id := Identity{Name: cert.Subject.CommonName, Via: ViaCertificate}
	if id.Name == "" {
		id.Name = cert.Subject.String()
	}
	for _, o := range cert.Subject.Organization {
		switch o {
		case OrgRead:
			id.Roles |= Read
		case OrgWrite:
			id.Roles |= Write
		}
	}
	return id
}

// Credentials are what a caller presented with one call.
type Credentials struct {
	// TLS is the connection's TLS state; nil on a plaintext connection.
	TLS *tls.ConnectionState
	// Authorization are the call's authorization metadata values.
	Authorization []string
}

// ErrUnauthenticated is wrapped by every error of a caller that could not be
// identified or presented no credentials where some are needed.
var ErrUnauthenticated = errors.New("unauthenticated")

// DeniedError refuses a call to a caller that lacks the role it needs.
type DeniedError struct {
	Method string
	Caller Identity
	Need   Role
	// Unknown is set for a method without an entry in the roles table.
	Unknown bool
}

func (e *DeniedError) Error() string {
	if e.Unknown {
		return fmt.Sprintf("%s is not an operation of this agent", e.Method)
	}
	return fmt.Sprintf("%s needs the %s role; %s %q has %s", e.Method, e.Need, e.Caller.Via, e.Caller.Name, e.Caller.Roles)
}

// Policy authenticates and authorizes calls.
type Policy struct {
	secure bool
	tokens *Tokens
}

// Open is the policy of an agent without TLS: every caller holds every role.
// It is for loopback listeners, where only local users can call.
func Open() *Policy { return &Policy{} }

// Secure is the policy of an agent with TLS: a caller is identified by a
// verified client certificate or by one of tokens (nil: none), and holds
// the roles granted to it. A call with a token is made as the token's
// identity, even over a connection with a client certificate.
func Secure(tokens *Tokens) *Policy { return &Policy{secure: true, tokens: tokens} }

// Authenticate identifies the caller of a call. A bearer token over a
// connection without TLS is refused whatever the policy: it has crossed the
// network readable, and the caller must learn that.
func (p *Policy) Authenticate(c Credentials) (Identity, error) {
	if len(c.Authorization) > 0 && c.TLS == nil {
		return Identity{Via: ViaToken}, fmt.Errorf("%w: a bearer token was sent over a connection without TLS; consider it exposed and replace it", ErrUnauthenticated)
	}
	token, present, err := bearer(c.Authorization)
	if err != nil {
		return Identity{Via: ViaToken}, err
	}
	if present {
		if p.tokens == nil {
			return Identity{Via: ViaToken}, fmt.Errorf("%w: this agent accepts no bearer tokens", ErrUnauthenticated)
		}
		id, ok := p.tokens.lookup(token)
		if !ok {
			return Identity{Via: ViaToken}, fmt.Errorf("%w: unknown bearer token", ErrUnauthenticated)
		}
		return id, nil
	}
	if !p.secure {
		return Identity{Via: ViaPlaintext, Roles: Read | Write}, nil
	}
	// VerifiedChains, not PeerCertificates: only a chain to a client CA counts.
	if c.TLS != nil && len(c.TLS.VerifiedChains) > 0 && len(c.TLS.VerifiedChains[0]) > 0 {
		return IdentityFromCertificate(c.TLS.VerifiedChains[0][0]), nil
	}
	return Identity{Via: ViaNone}, nil
}

// Authorize checks that id may call method.
func (p *Policy) Authorize(id Identity, method string) error {
	need, ok := Required(method)
	if !ok {
		return &DeniedError{Method: method, Caller: id, Unknown: true}
	}
	if id.Roles.Has(need) {
		return nil
	}
	if id.Via == ViaNone {
		return fmt.Errorf("%w: %s needs a client certificate or a bearer token", ErrUnauthenticated, method)
	}
	return &DeniedError{Method: method, Caller: id, Need: need}
}

// bearer extracts the token of an "authorization: Bearer <token>" value.
func bearer(values []string) (token string, present bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, fmt.Errorf("%w: more than one authorization value", ErrUnauthenticated)
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", true, fmt.Errorf("%w: authorization must be \"Bearer <token>\"", ErrUnauthenticated)
	}
	return token, true, nil
}
