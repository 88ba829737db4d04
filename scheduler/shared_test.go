package scheduler

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeShared is an in-memory SharedBudget: a pool of RU per key that the
// test fills, cooldowns recorded and delivered by the test.
type fakeShared struct {
	mu        sync.Mutex
	pool      map[string]int64 // RU left per key; a key not set is unlimited
	err       error
	takes     int
	published []Cooldown
	watch     chan Cooldown
	used      func(key string) int64 // what all agents took, if set
}

func newFakeShared() *fakeShared {
	return &fakeShared{pool: map[string]int64{}, watch: make(chan Cooldown, 8)}
}

func (f *fakeShared) Take(_ context.Context, reqs []Take) ([]Taken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.takes++
	if f.err != nil {
		return nil, f.err
	}
	out := make([]Taken, len(reqs))
	for i, r := range reqs {
		left, limited := f.pool[r.Key]
		g := r.Want
		if limited {
			g = min(g, left)
			f.pool[r.Key] = left - g
		}
		out[i] = Taken{Granted: g, Used: g}
		if f.used != nil {
			out[i].Used = f.used(r.Key)
		}
	}
	return out, nil
}

func (f *fakeShared) Publish(_ context.Context, c Cooldown) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published = append(f.published, c)
	return f.err
}

func (f *fakeShared) Watch(ctx context.Context, fn func(Cooldown)) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-f.watch:
			fn(c)
		}
	}
}

func (f *fakeShared) set(key string, ru int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if key != "" {
		f.pool[key] = ru
	}
	f.err = err
}

func (f *fakeShared) takeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.takes
}

func (f *fakeShared) publishedCopy() []Cooldown {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Cooldown(nil), f.published...)
}

func newSharedTest(t *testing.T, cfg Config, fs *fakeShared) (*Scheduler, *FakeClock, *fakeServer) {
	t.Helper()
	cfg.Shared = fs
	_, src := fakeApps("a")
	s, clock, srv := newTest(t, cfg, src)
	t.Cleanup(s.Close)
	return s, clock, srv
}

// eventually polls cond, for conditions another goroutine (the
// replenisher) brings about without the clock moving.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A request needs credit from the shared budget: when the other agents have
// taken the app's window, it waits, and goes as soon as RU are free again.
func TestSharedBudgetHoldsRequestsUntilCredit(t *testing.T) {
	fs := newFakeShared()
	fs.set("app:a", 3, nil)
	s, clock, srv := newSharedTest(t, Config{}, fs)

	for range 3 {
		mustGet(t, s, graph+"/sites/x")
	}
	done := make(chan error, 1)
	go func() {
		_, err := get(t, s, graph+"/sites/x")
		done <- err
	}()
	eventually(t, "the fourth request to queue", func() bool { return s.Stats().Queued == 1 })
	before := fs.takeCount()
	// The replenisher retries a full window after a quarter second.
	clock.Advance(time.Second / 4)
	eventually(t, "another take", func() bool { return fs.takeCount() > before })
	if got := len(srv.requests()); got != 3 {
		t.Fatalf("%d requests sent with 3 RU of shared credit, want 3", got)
	}
	fs.set("app:a", 100, nil)
	for i := 0; i < 20 && len(done) == 0; i++ {
		clock.Advance(time.Second / 4)
		time.Sleep(time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := len(srv.requests()); got != 4 {
		t.Fatalf("%d requests sent, want 4", got)
	}
}

// Throttles this agent receives are published for the others, with the
// scope that tells them what to hold back.
func TestSharedBudgetPublishesCooldowns(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		want    Cooldown
	}{
		{"app limit", []string{"Retry-After", "10", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0", "RateLimit-Reset", "12"},
			Cooldown{Scope: ScopeApp, App: "a", For: 12 * time.Second}},
		{"tenant limit", []string{"Retry-After", "7"}, Cooldown{Scope: ScopeTenant, For: 7 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeShared()
			s, _, srv := newSharedTest(t, Config{MaxAttempts: 1}, fs)
			srv.handle = func(r *http.Request, _ string, _ int) (*http.Response, error) {
				return respond(r, http.StatusTooManyRequests, nil, tc.headers...), nil
			}
			_, _ = get(t, s, graph+"/sites/x")
			eventually(t, "a published cooldown", func() bool { return len(fs.publishedCopy()) > 0 })
			got := fs.publishedCopy()[0]
			if got.Origin == "" {
				t.Error("cooldown published without origin")
			}
			got.Origin = ""
			if got != tc.want {
				t.Errorf("published %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A cooldown another agent received holds this agent's requests back for as
// long; its own, echoed back, is ignored.
func TestSharedBudgetAppliesRemoteCooldowns(t *testing.T) {
	tests := []struct {
		name string
		c    Cooldown
		wait time.Duration // until the next request may go
	}{
		{"app", Cooldown{Origin: "other", Scope: ScopeApp, App: "a", For: 30 * time.Second}, 30 * time.Second},
		{"other app", Cooldown{Origin: "other", Scope: ScopeApp, App: "b", For: 30 * time.Second}, 0},
		{"tenant", Cooldown{Origin: "other", Scope: ScopeTenant, For: 20 * time.Second}, 20 * time.Second},
		{"shared bucket", Cooldown{Origin: "other", Scope: ScopeShared, For: 15 * time.Second}, 15 * time.Second},
		{"own echo", Cooldown{Scope: ScopeApp, App: "a", For: 30 * time.Second}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeShared()
			s, clock, srv := newSharedTest(t, Config{}, fs)
			if tc.c.Origin == "" {
				tc.c.Origin = s.sh.origin
			}
			applied := s.Stats().RemoteCooldowns
			fs.watch <- tc.c
			if tc.wait > 0 {
				eventually(t, "the cooldown applied", func() bool { return s.Stats().RemoteCooldowns > applied })
			} else {
				time.Sleep(10 * time.Millisecond) // give a wrongly applied one the chance to show
			}
			done := make(chan error, 1)
			go func() {
				_, err := get(t, s, graph+"/sites/x")
				done <- err
			}()
			if tc.wait > 0 {
				eventually(t, "the request to queue", func() bool { return s.Stats().Queued == 1 })
				clock.Advance(tc.wait - time.Millisecond)
				if n := len(srv.requests()); n != 0 {
					t.Fatalf("request sent %s into a %s remote cooldown", tc.wait-time.Millisecond, tc.wait)
				}
				clock.Advance(2 * time.Millisecond)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := len(srv.requests()); n != 1 {
				t.Fatalf("%d requests sent, want 1", n)
			}
		})
	}
}

// While the backend fails, the agent sends on its fallback share of the
// limits, says so, and shares again once the backend answers.
func TestSharedBudgetFallsBackAndRecovers(t *testing.T) {
	tests := []struct {
		name       string
		sentBefore int // while the backend answered
		wantStates []bool
	}{
		{"down from the start", 0, []bool{false, true}},
		// What the agent sent before the outage counts against its share.
		{"down after 40 requests", 40, []bool{false, true}},
		{"down after more than the share", 80, []bool{false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeShared()
			var mu sync.Mutex
			var states []bool
			cfg := Config{
				// The app's own limiter allows a burst of 100, more than the share.
				Limits: Limits{AppPerMinute: 6000, AppPer24h: 1_000_000, TenantPer5Min: 1_000_000}, FallbackShare: 0.01,
				SharedState: func(up bool) { mu.Lock(); states = append(states, up); mu.Unlock() },
			}
			if tc.sentBefore == 0 {
				fs.set("", 0, errors.New("connection refused"))
			}
			s, clock, srv := newSharedTest(t, cfg, fs)
			for range tc.sentBefore {
				mustGet(t, s, graph+"/sites/x")
			}
			fs.set("", 0, errors.New("connection refused"))
			// Spend what credit is left, so the next request asks the backend.
			clock.Advance(time.Second)

			// 1 % of 6000 RU per minute: 60 requests in all, then one waits.
			allowed := max(60-tc.sentBefore, 0)
			for range allowed {
				mustGet(t, s, graph+"/sites/x")
			}
			// A block the replenisher took just before the outage may land
			// after it and is spent too: it was granted. So requests go out
			// one by one until one queues, at most a block beyond the share.
			const block = 6000 / 60 / 4 // sharedBlock at the app's rate
			var done chan error
			for extra := 0; ; extra++ {
				if extra > block {
					t.Fatalf("%d requests beyond the fallback share went out", extra)
				}
				done = make(chan error, 1)
				go func() {
					_, err := get(t, s, graph+"/sites/x")
					done <- err
				}()
				queued := false
				eventually(t, "a request beyond the share to queue or go", func() bool {
					queued = s.Stats().Queued == 1
					return queued || len(done) == 1
				})
				if queued {
					break
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if st := s.Stats(); !st.Distributed || st.DistributedUp {
				t.Fatalf("stats say distributed=%v up=%v while the backend fails, want true false", st.Distributed, st.DistributedUp)
			}
			clock.Advance(time.Second / 2) // less than the probe interval: still down
			if n := len(srv.requests()); n < tc.sentBefore+allowed || n > tc.sentBefore+allowed+block {
				t.Fatalf("%d requests sent, want %d before and %d on the fallback share (+ at most a block of %d)", n, tc.sentBefore, allowed, block)
			}
			fs.set("", 0, nil)
			for i := 0; i < 40 && len(done) == 0; i++ {
				clock.Advance(time.Second / 4)
				time.Sleep(time.Millisecond)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if st := s.Stats(); !st.DistributedUp {
				t.Error("stats say down after the backend answered again")
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(states, tc.wantStates) {
				t.Errorf("SharedState calls %v, want %v", states, tc.wantStates)
			}
		})
	}
}

// Without a shared budget nothing changes: no credit, no goroutines.
func TestNoSharedBudgetIsInProcess(t *testing.T) {
	_, src := fakeApps("a")
	s, _, _ := newTest(t, Config{}, src)
	if s.sh != nil {
		t.Fatal("shared state set up without Config.Shared")
	}
	if st := s.Stats(); st.Distributed {
		t.Error("stats say distributed without a shared budget")
	}
	s.Close() // a no-op, safe to call
}

// RateLimit headers count every agent's requests with the app. Without the
// shared budget's count those of the other agents look like the other apps'
// traffic in one bucket (the control); with it, they are the app's own and
// the apps keep their separate budgets.
func TestSharedBudgetOtherAgentsAreNotASharedBucket(t *testing.T) {
	for _, tc := range []struct {
		name       string
		knowOthers bool
		wantShared bool
	}{{"with the shared count", true, false}, {"without it (control)", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			sent := map[string]int64{} // by app, this agent's
			const agents = 3           // the other two send as much as we do
			fs := newFakeShared()
			if tc.knowOthers {
				fs.used = func(key string) int64 {
					mu.Lock()
					defer mu.Unlock()
					if app, ok := strings.CutPrefix(key, "app:"); ok {
						return agents * sent[app]
					}
					return 0
				}
			}
			_, src := fakeApps("a", "b")
			s, clock, srv := newTest(t, Config{Shared: fs}, src)
			t.Cleanup(s.Close)
			srv.handle = func(r *http.Request, app string, _ int) (*http.Response, error) {
				mu.Lock()
				sent[app]++
				used := agents * sent[app]
				mu.Unlock()
				return respond(r, http.StatusOK, nil, "RateLimit-Limit", "1250",
					"RateLimit-Remaining", strconv.FormatInt(1250-used, 10), "RateLimit-Reset", "30"), nil
			}
			for range 100 {
				mustGet(t, s, graph+"/sites/x")
				clock.Advance(100 * time.Millisecond)
			}
			if got := s.Stats().SharedBudget; got != tc.wantShared {
				t.Errorf("apps scheduled as one shared bucket: %v, want %v", got, tc.wantShared)
			}
		})
	}
}
