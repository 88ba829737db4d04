package scheduler

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/internal/version"
)

func TestRoundRobinSpreadAndDecoration(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{Company: "Contoso"}, src)
	for range 30 {
		mustGet(t, s, graph+"/drives/d/items/i")
		clock.Advance(100 * time.Millisecond)
	}
	reqs := srv.requests()
	count := map[string]int{}
	for i, r := range reqs {
		count[r.app]++
		if want := "ISV|Contoso|backup-proxy/" + version.Version; r.header.Get("User-Agent") != want {
			t.Fatalf("request %d User-Agent %q, want %q", i, r.header.Get("User-Agent"), want)
		}
		if want := "Bearer tok-" + r.app; r.header.Get("Authorization") != want {
			t.Fatalf("request %d Authorization %q", i, r.header.Get("Authorization"))
		}
	}
	if count["a"] != 10 || count["b"] != 10 || count["c"] != 10 {
		t.Fatalf("spread %v, want 10 each", count)
	}
	// Strict rotation: no app twice in a row.
	for i := 1; i < len(reqs); i++ {
		if reqs[i].app == reqs[i-1].app {
			t.Fatalf("app %s twice in a row at %d: %v", reqs[i].app, i, appsOf(reqs))
		}
	}
}

// throttleApp answers the first request of app with a 429 carrying kv.
func throttleApp(srv *fakeServer, app string, kv ...string) {
	done := false
	srv.handle = func(r *http.Request, a string, n int) (*http.Response, error) {
		if a == app && !done {
			done = true
			return respond(r, 429, []byte(`{"error":{"code":"TooManyRequests"}}`), kv...), nil
		}
		return respond(r, 200, nil), nil
	}
}

// silentFor sends a request every second and checks that app is not used
// for d after the throttle, and is used again after it.
func silentFor(t *testing.T, s *Scheduler, clock *FakeClock, srv *fakeServer, app string, d time.Duration) {
	t.Helper()
	mustGet(t, s, graph+"/drives/d/items/i") // a (throttled, retried on b), then ...
	start := clock.Now()
	var throttledAt time.Time
	for _, r := range srv.requests() {
		if r.app == app {
			throttledAt = r.at
		}
	}
	if throttledAt.IsZero() {
		t.Fatalf("app %s was never asked", app)
	}
	for clock.Now().Sub(start) < d-time.Second {
		clock.Advance(time.Second)
		mustGet(t, s, graph+"/drives/d/items/i")
	}
	used := map[string]int{}
	for _, r := range srv.requests() {
		if r.app == app && r.at.After(throttledAt) {
			t.Fatalf("app %s used %v after its throttle, inside its %v cooldown", app, r.at.Sub(throttledAt), d)
		}
		used[r.app]++
	}
	for a, n := range used {
		if a != app && n < int(d/time.Second)/3 {
			t.Errorf("app %s carried only %d requests", a, n)
		}
	}
	if st := s.Stats().Apps[app]; !st.CooldownUntil.Equal(throttledAt.Add(d)) {
		t.Errorf("stats: cooldown until +%v, want +%v", st.CooldownUntil.Sub(throttledAt), d)
	}
	clock.Advance(time.Second + time.Millisecond)
	for range 3 {
		mustGet(t, s, graph+"/drives/d/items/i")
	}
	reqs := srv.requests()
	if !slices.Contains(appsOf(reqs[len(reqs)-3:]), app) {
		t.Fatalf("app %s not back in rotation after its cooldown: %v", app, appsOf(reqs[len(reqs)-3:]))
	}
}

func TestRetryAfterKeepsAppSilent(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "Retry-After", "30", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0", "RateLimit-Reset", "30")
	silentFor(t, s, clock, srv, "a", 30*time.Second)
	st := s.Stats()
	if st.Apps["a"].Throttled429 != 1 || st.Throttled != 1 || st.PausedUntil != (time.Time{}) {
		t.Fatalf("stats after one app-level 429: %+v", st)
	}
	if st.Violations != 0 {
		t.Fatalf("violations = %d", st.Violations)
	}
}

func TestRateLimitResetLongerThanRetryAfter(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "Retry-After", "10", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0", "RateLimit-Reset", "40")
	silentFor(t, s, clock, srv, "a", 40*time.Second)
}

func TestRetryAfterHTTPDate(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	date := clock.Now().Add(20 * time.Second).Format(http.TimeFormat)
	throttleApp(srv, "a", "Retry-After", date, "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
	silentFor(t, s, clock, srv, "a", 20*time.Second)
}

func Test503WithRetryAfterIsThrottling(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, clock, srv := newTest(t, Config{}, src)
	first := true
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		if first {
			first = false
			return respond(r, 503, nil, "Retry-After", "15", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0"), nil
		}
		return respond(r, 200, nil), nil
	}
	silentFor(t, s, clock, srv, "a", 15*time.Second)
	if st := s.Stats().Apps["a"]; st.Throttled503 != 1 {
		t.Fatalf("503s counted %d", st.Throttled503)
	}
}

func TestTenantPauseWithoutRateLimitHeaders(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "Retry-After", "20") // another limit fired
	done := make(chan error, 1)
	go func() {
		_, err := get(t, s, graph+"/drives/d/items/i")
		done <- err
	}()
	clock.BlockUntil(1) // the retry waits for the pause
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests before the pause ended, want only the throttled one", n)
	}
	if st := s.Stats(); !st.PausedUntil.Equal(t0.Add(20*time.Second)) || st.Queued != 1 {
		t.Fatalf("stats during the pause: paused until %v, queued %d", st.PausedUntil, st.Queued)
	}
	clock.Advance(19 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("request finished during the tenant pause: %v", err)
	default:
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests during the tenant pause", n)
	}
	clock.Advance(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	reqs := srv.requests()
	if len(reqs) != 2 || reqs[1].at.Sub(reqs[0].at) != 20*time.Second {
		t.Fatalf("retry at +%v, want after the 20 s pause", reqs[len(reqs)-1].at.Sub(reqs[0].at))
	}
	if st := s.Stats(); st.RatePerMinute >= 0.5*18750/5*0.99 {
		t.Errorf("tenant rate not decreased after a tenant-level 429: %v RU/min", st.RatePerMinute)
	}
}

func TestUnusableAppsTakenOut(t *testing.T) {
	apps, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	apps[1].set(nil, true)      // b: certificate expired, the pool says so
	apps[2].set(errTest, false) // c: the pool thinks it fine, but no token comes
	for range 12 {
		mustGet(t, s, graph+"/drives/d/items/i")
		clock.Advance(100 * time.Millisecond)
	}
	for _, r := range srv.requests() {
		if r.app != "a" {
			t.Fatalf("request sent with app %q", r.app)
		}
	}
	if apps[2].tokens != 1 {
		t.Errorf("the failing app was asked for a token %d times, want once (then out of rotation)", apps[2].tokens)
	}
	st := s.Stats()
	if st.Apps["a"].InRotation != true || st.Apps["b"].InRotation || st.Apps["c"].InRotation {
		t.Fatalf("in rotation: a %v b %v c %v", st.Apps["a"].InRotation, st.Apps["b"].InRotation, st.Apps["c"].InRotation)
	}
	// c's token works again: after the retry delay it is back.
	apps[2].set(nil, false)
	clock.Advance(tokenRetry)
	for range 4 {
		mustGet(t, s, graph+"/drives/d/items/i")
	}
	if !slices.Contains(appsOf(srv.requests()), "c") {
		t.Fatal("app c not back after its token recovered")
	}
}

func TestNoUsableApp(t *testing.T) {
	apps, src := fakeApps("a")
	s, clock, _ := newTest(t, Config{NoAppWait: 5 * time.Second}, src)
	apps[0].set(nil, true)
	done := make(chan error, 1)
	go func() {
		_, err := get(t, s, graph+"/drives/d/items/i")
		done <- err
	}()
	for range 5 {
		clock.BlockUntil(1)
		clock.Advance(time.Second)
	}
	err := <-done
	if !errors.Is(err, ErrNoApp) || !strings.Contains(err.Error(), "a: not usable") {
		t.Fatalf("err = %v, want ErrNoApp naming the app", err)
	}
	empty := AppSourceFunc(func() []App { return nil })
	s2, _, _ := newTest(t, Config{}, empty)
	if _, err := get(t, s2, graph+"/drives/d/items/i"); !errors.Is(err, ErrNoApp) {
		t.Fatalf("no apps: err = %v", err)
	}
}

func TestDeadlineRespected(t *testing.T) {
	_, src := fakeApps("a")
	s, clock, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "Retry-After", "30", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The only app is throttled for 30 s: the retry cannot happen before the
	// deadline, so the request fails at once instead of waiting.
	_, err := getCtx(ctx, t, s, graph+"/drives/d/items/i")
	var de *DeadlineError
	if !errors.Is(err, ErrDeadline) || !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &de) {
		t.Fatalf("err = %v, want a DeadlineError", err)
	}
	if de.Wait < 29*time.Second || !strings.Contains(err.Error(), "429") {
		t.Fatalf("err = %v: want the 30 s wait and the 429 that caused it", err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests sent, want 1", n)
	}
	if clock.Pending() != 0 {
		t.Fatalf("%d timers left behind", clock.Pending())
	}
	// With a later deadline the request waits for the slot.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	done := make(chan error, 1)
	go func() {
		_, err := getCtx(ctx2, t, s, graph+"/drives/d/items/i")
		done <- err
	}()
	clock.BlockUntil(1)
	clock.Advance(30 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Failed != 1 || st.Requests != 2 {
		t.Fatalf("stats: %d failed of %d", st.Failed, st.Requests)
	}
}

func TestContextCancelWhileWaiting(t *testing.T) {
	_, src := fakeApps("a")
	s, clock, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "Retry-After", "30", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := getCtx(ctx, t, s, graph+"/drives/d/items/i")
		done <- err
	}()
	clock.BlockUntil(1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if st := s.Stats(); st.Queued != 0 {
		t.Fatalf("%d requests still queued", st.Queued)
	}
}
