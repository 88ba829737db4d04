package pool

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// GraphScope is the only scope the agent asks for: Microsoft Graph with the
// application permissions consented to the app.
const GraphScope = "https://graph.microsoft.com/.default"

// Token timing.
const (
	// refreshBefore renews a token this long before it expires, so requests
	// in flight never carry an expired token.
	refreshBefore = 5 * time.Minute
	// tokenRequestTimeout bounds one token request to Entra.
	tokenRequestTimeout = 30 * time.Second
	// Backoff after failed token requests: 1 s, 2 s, 4 s, ... up to maxBackoff.
	minBackoff = time.Second
	maxBackoff = 5 * time.Minute
)

// credential obtains access tokens; azidentity.ClientCertificateCredential is one.
type credential interface {
	GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error)
}

// tokenSource caches an application's access token. The fast path is one
// atomic load; renewal runs once however many goroutines need a token (no
// thundering herd against Entra), and failures back off exponentially.
type tokenSource struct {
	cred credential
	now  func() time.Time
	// failed counts failed token requests. It belongs to the application,
	// so the count survives a certificate update, which replaces the source.
	failed *atomic.Int64

	current atomic.Pointer[cachedToken]

	mu       sync.Mutex
	inflight chan struct{} // closed when the running renewal ends
	failures int
	retryAt  time.Time
	lastErr  error
}

type cachedToken struct {
	token     string
	expires   time.Time
	refreshAt time.Time
}

// newTokenSource returns a source that counts its failed token requests in
// failed (a counter of its own if nil).
func newTokenSource(cred credential, now func() time.Time, failed *atomic.Int64) *tokenSource {
	if failed == nil {
		failed = new(atomic.Int64)
	}
	return &tokenSource{cred: cred, now: now, failed: failed}
}

// ErrTokenUnavailable wraps the reason an application has no token now.
var ErrTokenUnavailable = errors.New("no access token")

// Token returns a valid access token, renewing it when it is near expiry.
// While renewal is failing it answers at once with the last failure until the
// backoff has passed, without calling Entra; a token that has not yet
// expired is still used meanwhile.
func (s *tokenSource) Token(ctx context.Context) (string, error) {
	if t := s.current.Load(); t != nil && s.now().Before(t.refreshAt) {
		return t.token, nil
	}
	s.mu.Lock()
	if t := s.current.Load(); t != nil && s.now().Before(t.refreshAt) {
		s.mu.Unlock()
		return t.token, nil // renewed by another goroutine meanwhile
	}
	if s.inflight == nil && s.now().Before(s.retryAt) {
		err := s.lastErr
		s.mu.Unlock()
		return s.unexpired(err)
	}
	if s.inflight == nil {
		s.inflight = make(chan struct{})
		go s.renew(s.inflight)
	}
	done := s.inflight
	s.mu.Unlock()

	select {
	case <-done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	s.mu.Lock()
	err := s.lastErr
	s.mu.Unlock()
	return s.unexpired(err)
}

// unexpired returns the cached token if it has not expired, else err (or a
// generic error if there is none).
func (s *tokenSource) unexpired(err error) (string, error) {
	if t := s.current.Load(); t != nil && s.now().Before(t.expires) {
		return t.token, nil
	}
	if err == nil {
		err = &TokenError{Reason: "Entra issued a token that had already expired"}
	}
	return "", err
}

// renew asks Entra for a token. It runs detached from any caller's context:
// one caller giving up must not fail the renewal the others wait for.
func (s *tokenSource) renew(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), tokenRequestTimeout)
	defer cancel()
	tok, err := s.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{GraphScope}})
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if err != nil {
		s.failures++
		s.failed.Add(1)
		backoff := minBackoff << min(s.failures-1, 20)
		s.retryAt = now.Add(min(backoff, maxBackoff))
		s.lastErr = &TokenError{Reason: describeTokenError(err)}
	} else {
		s.failures, s.retryAt, s.lastErr = 0, time.Time{}, nil
		// Renew refreshBefore ahead of expiry, or half-way for short-lived tokens.
		ahead := min(refreshBefore, tok.ExpiresOn.Sub(now)/2)
		s.current.Store(&cachedToken{token: tok.Token, expires: tok.ExpiresOn, refreshAt: tok.ExpiresOn.Add(-ahead)})
	}
	close(done)
	s.inflight = nil
}

// status reports whether the source is failing and why.
func (s *tokenSource) status() (failing bool, reason string, retryAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr == nil {
		return false, "", time.Time{}
	}
	return true, s.lastErr.Error(), s.retryAt
}

// TokenError is a failed token request, described without secrets.
type TokenError struct{ Reason string }

func (e *TokenError) Error() string { return "token request failed: " + e.Reason }

// Unwrap makes errors.Is(err, ErrTokenUnavailable) hold.
func (e *TokenError) Unwrap() error { return ErrTokenUnavailable }

var aadsts = regexp.MustCompile(`AADSTS\d+: [^\r\n"]*`)

// describeTokenError keeps the AADSTS code and message of an Entra error
// (e.g. "AADSTS700027: The certificate with identifier ... was not found")
// and drops the rest: response dumps carry headers and trace ids.
func describeTokenError(err error) string {
	msg := err.Error()
	if m := aadsts.FindString(msg); m != "" {
		const max = 300
		if len(m) > max {
			m = m[:max] + "…"
		}
		return m
	}
	var ctxErr error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		ctxErr = context.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		ctxErr = context.Canceled
	}
	if ctxErr != nil {
		return "Entra did not answer: " + ctxErr.Error()
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return msg
}
