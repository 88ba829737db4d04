package redisbudget

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/internal/redisserver"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

func newBudget(t *testing.T, srv *redisserver.Server) *Budget {
	t.Helper()
	c, err := Client(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return New(zaptest.NewLogger(t), c, "test:")
}

// Two agents taking from one window together get no more than its limit,
// and each learns what all took.
func TestTakeSharesOneWindow(t *testing.T) {
	srv := redisserver.ForTest(t)
	a, b := newBudget(t, srv).Tenant("t1"), newBudget(t, srv).Tenant("t1")
	ctx := context.Background()
	take := scheduler.Take{Key: "app:x", Limit: 100, Slot: time.Minute, Slots: 2, Want: 30}
	var total int64
	var last scheduler.Taken
	for i := range 5 {
		ag := a
		if i%2 == 1 {
			ag = b
		}
		got, err := ag.Take(ctx, []scheduler.Take{take, {Key: "tenant", Limit: 1000, Slot: time.Minute, Slots: 2, Want: 30}})
		if err != nil {
			t.Fatal(err)
		}
		total += got[0].Granted
		last = got[0]
		if got[1].Granted != 30 {
			t.Errorf("take %d: tenant window granted %d of 30 with room for 1000", i, got[1].Granted)
		}
	}
	if total != 100 || last.Used != 100 || last.Granted != 0 {
		t.Errorf("took %d in all, last %+v; want 100, last {0 100}", total, last)
	}
	// Another tenant's window is its own.
	got, err := a.b.Tenant("t2").Take(ctx, []scheduler.Take{take})
	if err != nil || got[0].Granted != 30 {
		t.Errorf("other tenant: %+v, %v; want 30 granted", got, err)
	}
}

// A published cooldown reaches a running agent at once and one starting
// later through its key, with what remains of it.
func TestCooldownsReachOtherAgents(t *testing.T) {
	srv := redisserver.ForTest(t)
	pub, sub := newBudget(t, srv).Tenant("t1"), newBudget(t, srv).Tenant("t1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan scheduler.Cooldown, 4)
	go sub.Watch(ctx, func(c scheduler.Cooldown) { got <- c })
	c := scheduler.Cooldown{Origin: "agent-1", Scope: scheduler.ScopeApp, App: "app-1", For: 20 * time.Second}
	// The subscriber may not be subscribed yet: publish until it hears.
	var first scheduler.Cooldown
	for first.Scope == "" {
		if err := pub.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
		select {
		case first = <-got:
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Read from the key (origin cleared: stored ones count even for their
	// publisher) or received as a message.
	if first.App != "app-1" || first.Origin != "" && first.Origin != "agent-1" || first.For <= 0 || first.For > 20*time.Second {
		t.Errorf("received %+v", first)
	}
	// A shorter one does not shorten the stored cooldown.
	if err := pub.Publish(ctx, scheduler.Cooldown{Origin: "agent-2", Scope: scheduler.ScopeApp, App: "app-1", For: time.Second}); err != nil {
		t.Fatal(err)
	}
	late := newBudget(t, srv).Tenant("t1")
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	lgot := make(chan scheduler.Cooldown, 4)
	go late.Watch(lctx, func(c scheduler.Cooldown) { lgot <- c })
	select {
	case c := <-lgot:
		if c.Scope != scheduler.ScopeApp || c.App != "app-1" || c.For < 15*time.Second || c.For > 20*time.Second {
			t.Errorf("late agent read %+v, want app-1 with 15-20 s left", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a late agent did not read the cooldown in force")
	}
}

// simTenant is a throttled graphsim tenant with one app, seen through pool.
func simTenant(t *testing.T, limits graphsim.Limits, scale float64) (*graphsim.Server, *pool.Pool, string, string) {
	t.Helper()
	sim, err := graphsim.New(graphsim.Options{Seed: 1, Users: 1, Sites: -1, FilesPerDrive: 1, Apps: 1,
		Limits: &limits, TimeScale: scale, Throttle503Rate: -1, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	ten := sim.Tenant()
	p, err := pool.Open(zap.NewNop(), pool.Config{Dir: t.TempDir(), LoginURL: sim.LoginURL(), HTTPClient: sim.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	app := ten.Apps[0]
	if _, err := p.Add(context.Background(), pool.AddRequest{TenantID: ten.ID, ClientID: app.ClientID, Organization: app.OrganizationApp,
		Certificate: append(append([]byte{}, app.Credentials[0].CertPEM...), app.Credentials[0].KeyPEM...)}); err != nil {
		t.Fatal(err)
	}
	return sim, p, ten.ID, sim.GraphURL() + "/v1.0/drives/" + ten.Users[0].DriveID + "/root"
}

// hammer sends GETs through s from a few goroutines until ctx ends.
func hammer(ctx context.Context, t *testing.T, s *scheduler.Scheduler, url string, wg *sync.WaitGroup) {
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				resp, err := s.RoundTrip(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
}

// Three agents on one app of one tenant: with the shared budget they stay
// within the app's limit together (at most 1 % throttled); each on its own
// (the control) tries three times the limit and is throttled.
func TestSchedulersStayWithinOneAppLimit(t *testing.T) {
	srv := redisserver.ForTest(t)
	// A slot of the windows is a second of simulated time: 100 ms here, a
	// margin a busy machine's scheduling hiccups stay within.
	scale, run := 10.0, 9*time.Second // 1.5 simulated minutes
	if raceEnabled {
		scale, run = 30, 3*time.Second // 1.5 simulated minutes: races, not rates (see below)
	}
	limits := graphsim.Limits{AppPerMinute: 600, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000}
	for _, tc := range []struct {
		name   string
		shared bool
	}{{"redis", true}, {"alone", false}} {
		t.Run(tc.name, func(t *testing.T) {
			sim, p, tenant, url := simTenant(t, limits, scale)
			ctx, cancel := context.WithTimeout(context.Background(), run)
			defer cancel()
			var wg sync.WaitGroup
			var scheds []*scheduler.Scheduler
			for range 3 {
				cfg := scheduler.Config{
					Limits:       scheduler.Limits{AppPerMinute: limits.AppPerMinute, AppPer24h: limits.AppPer24h, TenantPer5Min: limits.TenantPer5Min},
					TenantShare:  1,
					Clock:        scheduler.Scaled(scheduler.RealClock{}, scale),
					HeaderSecond: time.Duration(scale * float64(time.Second)),
				}
				if tc.shared {
					cfg.Shared = newBudget(t, srv).Tenant(tenant)
				}
				s := scheduler.New(zaptest.NewLogger(t), cfg, scheduler.PoolApps(p, tenant), sim.Transport())
				scheds = append(scheds, s)
				hammer(ctx, t, s, url, &wg)
			}
			wg.Wait()
			for _, s := range scheds {
				s.Close()
			}
			st := sim.Stats().Tenant
			minutes := run.Seconds() * scale / 60
			t.Logf("%d requests, %d RU in %.1f simulated minutes (limit %d/min), %d 429, %d violations",
				st.Requests, st.RU, minutes, limits.AppPerMinute, st.Throttled429, st.RetryAfterViolations)
			if !tc.shared {
				// Alone, an agent does not know of the Retry-After another
				// one received: violations are possible, and not checked.
				if st.Throttled429 == 0 {
					t.Error("three agents each alone were never throttled: the control shows nothing")
				}
				return
			}
			if st.RetryAfterViolations != 0 {
				t.Errorf("%d Retry-After violations", st.RetryAfterViolations)
			}
			if raceEnabled {
				// The race detector stretches the time between taking credit
				// and sending by more than a slot now and then: this run
				// looks for data races; the 1 % bound is the plain run's.
				return
			}
			if st.Throttled429+st.Throttled503 > st.Requests/100 {
				t.Errorf("%d throttled of %d requests with the shared budget, want at most 1 %%", st.Throttled429+st.Throttled503, st.Requests)
			}
			if float64(st.RU) < 0.8*minutes*float64(limits.AppPerMinute) {
				t.Errorf("%d RU sent in %.1f minutes: under 80 %% of the limit", st.RU, minutes)
			}
		})
	}
}

// Redis stops while agents send: they carry on on their fallback share,
// report it, and share again once Redis is back.
func TestRedisStopsAndComesBack(t *testing.T) {
	srv := redisserver.ForTest(t)
	const scale = 30
	limits := graphsim.Limits{AppPerMinute: 600, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000}
	sim, p, tenant, url := simTenant(t, limits, scale)
	var mu sync.Mutex
	var states []bool
	s := scheduler.New(zaptest.NewLogger(t), scheduler.Config{
		Limits:       scheduler.Limits{AppPerMinute: limits.AppPerMinute, AppPer24h: limits.AppPer24h, TenantPer5Min: limits.TenantPer5Min},
		TenantShare:  1,
		Clock:        scheduler.Scaled(scheduler.RealClock{}, scale),
		HeaderSecond: scale * time.Second,
		Shared:       newBudget(t, srv).Tenant(tenant),
		SharedState:  func(up bool) { mu.Lock(); states = append(states, up); mu.Unlock() },
	}, scheduler.PoolApps(p, tenant), sim.Transport())
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	hammer(ctx, t, s, url, &wg)
	phase := func(name string, d time.Duration, wantUp bool) int64 {
		before := sim.Stats().Tenant.Requests
		time.Sleep(d) // real traffic against a real server: nothing to fake
		st := s.Stats()
		sent := sim.Stats().Tenant.Requests - before
		if st.DistributedUp != wantUp {
			t.Errorf("%s: stats say up=%v, want %v", name, st.DistributedUp, wantUp)
		}
		if sent == 0 {
			t.Errorf("%s: no request sent", name)
		}
		return sent
	}
	phase("before", time.Second, true)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	down := phase("redis down", 2*time.Second, false)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The agent tries Redis again within a second of real time.
	time.Sleep(1500 * time.Millisecond)
	up := phase("redis back", 2*time.Second, true)
	cancel()
	wg.Wait()
	t.Logf("requests in 2 s: %d on the fallback share, %d shared", down, up)
	mu.Lock()
	defer mu.Unlock()
	if len(states) != 2 || states[0] || !states[1] {
		t.Errorf("SharedState calls %v, want [false true]", states)
	}
	// The fallback share (1/3) is well below the whole limit.
	if down*2 > up {
		t.Errorf("%d requests on the fallback share vs %d shared: the fallback is not conservative", down, up)
	}
	if v := sim.Stats().Tenant.RetryAfterViolations; v != 0 {
		t.Errorf("%d Retry-After violations", v)
	}
}
