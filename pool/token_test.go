package pool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fakeCred issues numbered tokens valid for lifetime, or fails with err.
type fakeCred struct {
	clock    *fakeClock
	lifetime time.Duration
	calls    atomic.Int32
	gate     chan struct{} // if set, each call waits for it to be closed

	mu  sync.Mutex
	err error
}

func (c *fakeCred) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *fakeCred) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	n := c.calls.Add(1)
	if c.gate != nil {
		<-c.gate
	}
	if len(opts.Scopes) != 1 || opts.Scopes[0] != GraphScope {
		return azcore.AccessToken{}, fmt.Errorf("unexpected scopes %v", opts.Scopes)
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return azcore.AccessToken{}, err
	}
	return azcore.AccessToken{Token: fmt.Sprintf("token-%d", n), ExpiresOn: c.clock.Now().Add(c.lifetime)}, nil
}

func TestTokenCachedAndRenewedBeforeExpiry(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: time.Hour}
	ts := newTokenSource(cred, clock.Now, nil)
	ctx := context.Background()

	steps := []struct {
		advance   time.Duration
		wantToken string
		wantCalls int32
	}{
		{0, "token-1", 1},
		{54 * time.Minute, "token-1", 1}, // 6 min left: cached
		{2 * time.Minute, "token-2", 2},  // 4 min left: renewed ahead of expiry
		{time.Minute, "token-2", 2},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		got, err := ts.Token(ctx)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got != s.wantToken || cred.calls.Load() != s.wantCalls {
			t.Errorf("step %d: token %q after %d calls, want %q after %d", i, got, cred.calls.Load(), s.wantToken, s.wantCalls)
		}
	}
}

func TestTokenShortLifetimeRenewsHalfway(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: 2 * time.Minute}
	ts := newTokenSource(cred, clock.Now, nil)
	for range 3 {
		if _, err := ts.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("%d token requests for a fresh 2-minute token, want 1", n)
	}
	clock.Advance(61 * time.Second)
	if got, _ := ts.Token(context.Background()); got != "token-2" {
		t.Errorf("past half-life got %q, want a renewed token", got)
	}
}

// TestTokenNoThunderingHerd: many goroutines needing a token at once cause
// one token request.
func TestTokenNoThunderingHerd(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: time.Hour, gate: make(chan struct{})}
	ts := newTokenSource(cred, clock.Now, nil)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := ts.Token(context.Background())
			if err == nil && tok != "token-1" {
				err = fmt.Errorf("got %q", tok)
			}
			errs <- err
		}()
	}
	for cred.calls.Load() == 0 {
		time.Sleep(time.Millisecond) // wait until the renewal is in flight
	}
	close(cred.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := cred.calls.Load(); got != 1 {
		t.Errorf("%d token requests, want 1", got)
	}
}

func TestTokenFailureBacksOffAndRecovers(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: time.Hour}
	cred.setErr(errors.New(`POST https://login/tenant/oauth2/v2.0/token
RESPONSE 401: 401 Unauthorized
{"error":"invalid_client","error_description":"AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. Trace ID: x","error_codes":[700027]}`))
	var failed atomic.Int64
	ts := newTokenSource(cred, clock.Now, &failed)
	ctx := context.Background()

	_, err := ts.Token(ctx)
	var te *TokenError
	if !errors.As(err, &te) || !errors.Is(err, ErrTokenUnavailable) {
		t.Fatalf("err = %v, want TokenError", err)
	}
	if !strings.HasPrefix(te.Reason, "AADSTS700027: The certificate") || strings.Contains(te.Reason, "RESPONSE") {
		t.Errorf("reason = %q, want the AADSTS message alone", te.Reason)
	}
	// Within the backoff, no request reaches Entra.
	for range 5 {
		if _, err := ts.Token(ctx); err == nil {
			t.Fatal("token during backoff")
		}
	}
	if got := cred.calls.Load(); got != 1 {
		t.Fatalf("%d requests during backoff, want 1", got)
	}
	failing, _, retryAt := ts.status()
	if !failing || !retryAt.Equal(testNow.Add(time.Second)) {
		t.Errorf("status = %v, retry at %v; want failing, retry after 1s", failing, retryAt)
	}
	// The second failure doubles the backoff.
	clock.Advance(time.Second)
	if _, err := ts.Token(ctx); err == nil {
		t.Fatal("token while Entra still refuses")
	}
	if _, _, retryAt := ts.status(); !retryAt.Equal(clock.Now().Add(2 * time.Second)) {
		t.Errorf("second backoff until %v, want 2s", retryAt)
	}
	// Once Entra accepts again, the source recovers.
	cred.setErr(nil)
	clock.Advance(2 * time.Second)
	if tok, err := ts.Token(ctx); err != nil || tok != "token-3" {
		t.Fatalf("after recovery: %q, %v", tok, err)
	}
	if failing, _, _ := ts.status(); failing {
		t.Error("still failing after a successful renewal")
	}
	// Answers from the backoff are not requests: two reached Entra and failed.
	if n := failed.Load(); n != 2 {
		t.Errorf("failed token requests counted = %d, want 2", n)
	}
}

func TestTokenValidTokenSurvivesFailedRenewal(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: time.Hour}
	ts := newTokenSource(cred, clock.Now, nil)
	if _, err := ts.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	cred.setErr(errors.New("connection refused"))
	clock.Advance(57 * time.Minute) // inside the renewal window, not expired
	if tok, err := ts.Token(context.Background()); err != nil || tok != "token-1" {
		t.Fatalf("got %q, %v; want the still-valid token", tok, err)
	}
	clock.Advance(4 * time.Minute) // expired now
	if _, err := ts.Token(context.Background()); err == nil {
		t.Fatal("expired token returned")
	}
}

func TestTokenWaiterHonoursContext(t *testing.T) {
	clock := &fakeClock{now: testNow}
	cred := &fakeCred{clock: clock, lifetime: time.Hour, gate: make(chan struct{})}
	defer close(cred.gate)
	ts := newTokenSource(cred, clock.Now, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ts.Token(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
