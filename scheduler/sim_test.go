package scheduler

import (
	"context"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"
)

// model is SharePoint's throttling as graphsim/throttle.go implements it,
// for runs in virtual time: per-app (or, in the shared regime, one) minute
// window of 60 one-second slots, a tenant window of 60 five-second slots,
// RateLimit headers from 80 % of the app budget, 429 with Retry-After
// (whole seconds, rounded up) and RateLimit headers when the app budget is
// exceeded, 429 without them when the tenant bucket is; throttled requests
// are charged too. A request inside an app's Retry-After window, later than
// the grace after the 429, is a violation.
type model struct {
	shared      bool
	appLimit    int64         // RU per minute
	tenantLimit int64         // RU per 5 minutes
	latency     time.Duration // real time
	offset      time.Duration // the server's slots are not aligned with the scheduler's
	// clock is the server's (simulated) time; headerScale > 1 states
	// Retry-After and RateLimit-Reset in real seconds of a clock running
	// headerScale times faster, as graphsim does with TimeScale.
	clock       Clock
	headerScale float64
	grace       time.Duration // simulated
	production  float64       // production users' RU per simulated minute on the tenant bucket

	mu        sync.Mutex
	start     time.Time
	apps      map[string]*modelApp
	sharedWin *window
	tenant    *window

	requests, throttled, violations int64
	prodLast                        time.Time
	prodCarry                       float64
	prodThrottled                   int64           // production RU that found the tenant bucket full
	perSecond                       map[int64]int64 // RU by second since start
	maxTenant                       int64           // highest tenant window usage seen
}

type modelApp struct {
	win         *window
	retryUntil  time.Time
	throttledAt time.Time
}

func newModel(shared bool, appLimit, tenantLimit int64) *model {
	return newScaledModel(shared, appLimit, tenantLimit, RealClock{}, 1)
}

func newScaledModel(shared bool, appLimit, tenantLimit int64, clock Clock, scale float64) *model {
	return &model{shared: shared, appLimit: appLimit, tenantLimit: tenantLimit, offset: 370 * time.Millisecond,
		clock: clock, headerScale: scale, grace: time.Duration(float64(500*time.Millisecond) * scale),
		start: clock.Now(), prodLast: clock.Now(), apps: map[string]*modelApp{}, sharedWin: newWindow(time.Second, 60),
		tenant: newWindow(5*time.Second, 60), perSecond: map[int64]int64{}}
}

// seconds is a header value for d of simulated time: whole seconds,
// rounded up, at least 1 (real seconds if headerScale > 1).
func (m *model) seconds(d time.Duration) int64 {
	return max(int64(math.Ceil(d.Seconds()/m.headerScale)), 1)
}

func (m *model) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	if m.latency > 0 {
		time.Sleep(m.latency) // virtual time: the run is inside a synctest bubble
	}
	app, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer tok-")
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	ns := int64(now.Sub(m.start) + m.offset)
	a := m.apps[app]
	if a == nil {
		a = &modelApp{win: m.sharedWin}
		if !m.shared {
			a.win = newWindow(time.Second, 60)
		}
		m.apps[app] = a
	}
	m.accrueProduction(now)
	const ru = 1
	a.win.add(ns, ru)
	m.tenant.add(ns, ru)
	m.requests++
	m.perSecond[int64(now.Sub(m.start)/time.Second)] += ru
	m.maxTenant = max(m.maxTenant, m.tenant.used(ns))

	h := http.Header{}
	used := a.win.used(ns)
	if used*5 >= m.appLimit*4 {
		h.Set("RateLimit-Limit", strconv.FormatInt(m.appLimit, 10))
		h.Set("RateLimit-Remaining", strconv.FormatInt(max(m.appLimit-used, 0), 10))
		h.Set("RateLimit-Reset", strconv.FormatInt(m.seconds(a.win.untilAtMost(ns, m.appLimit*4/5-1)), 10))
	}
	throttle := func(ra time.Duration, appLimit bool) (*http.Response, error) {
		secs := m.seconds(ra)
		a.retryUntil, a.throttledAt = now.Add(ra), now
		m.throttled++
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
		if appLimit {
			h.Set("RateLimit-Remaining", "0")
			h.Set("RateLimit-Reset", strconv.FormatInt(secs, 10))
		} else {
			h.Del("RateLimit-Limit")
			h.Del("RateLimit-Remaining")
			h.Del("RateLimit-Reset")
		}
		return &http.Response{StatusCode: 429, Status: "429 Too Many Requests", Header: h, Body: http.NoBody, Request: r}, nil
	}
	if now.Before(a.retryUntil) {
		if now.Sub(a.throttledAt) >= m.grace {
			m.violations++
		}
		return throttle(a.retryUntil.Sub(now), true)
	}
	switch {
	case used > m.appLimit:
		return throttle(a.win.untilAtMost(ns, m.appLimit-ru), true)
	case m.tenant.used(ns) > m.tenantLimit:
		return throttle(m.tenant.untilAtMost(ns, m.tenantLimit-ru), false)
	}
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, Body: http.NoBody, Request: r}, nil
}

// accrueProduction charges the production traffic since the last request
// to the tenant bucket, second by second, like graphsim.
func (m *model) accrueProduction(now time.Time) {
	for m.production > 0 && now.Sub(m.prodLast) >= time.Second {
		m.prodLast = m.prodLast.Add(time.Second)
		ru := m.production/60 + m.prodCarry
		m.prodCarry = ru - math.Floor(ru)
		ns := int64(m.prodLast.Sub(m.start) + m.offset)
		if m.tenant.used(ns)+int64(ru) > m.tenantLimit {
			m.prodThrottled += int64(ru)
		}
		m.tenant.add(ns, int64(ru))
	}
}

// rate returns the RU per minute the server charged in [from, to).
func (m *model) rate(from, to time.Duration) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var sum int64
	for s := int64(from / time.Second); s < int64(to/time.Second); s++ {
		sum += m.perSecond[s]
	}
	return float64(sum) / (to - from).Minutes()
}

// run drives workers that send item GETs through s until d has passed.
func run(t *testing.T, s *Scheduler, workers int, d time.Duration, job string) {
	ctx, cancel := context.WithCancel(WithJob(context.Background(), job))
	time.AfterFunc(d, cancel)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, graph+"/drives/d/items/i", nil)
				resp, err := s.RoundTrip(req)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("request failed: %v", err)
					}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}

func simScheduler(t *testing.T, lim Limits, src AppSource, m *model) *Scheduler {
	s := New(zaptest.NewLogger(t), Config{Company: "Contoso", Limits: lim, Clock: RealClock{}}, src, m)
	t.Cleanup(func() { checkNoViolations(t, s) })
	return s
}

// TestSharedRegimeConverges: four apps that share ONE minute bucket. The
// scheduler starts out treating them as four budgets, must notice from the
// RateLimit headers that they share one before the bucket overflows, and
// then stay at the bucket's rate without oscillating.
func TestSharedRegimeConverges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 600
		m := newModel(true, limit, 1_000_000)
		m.latency = 50 * time.Millisecond
		_, src := fakeApps("a", "b", "c", "d")
		s := simScheduler(t, Limits{AppPerMinute: limit, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000}, src, m)
		run(t, s, 16, 10*time.Minute, "")

		st := s.Stats()
		if !st.SharedBudget || st.SharedLimit != limit {
			t.Fatalf("shared budget %v at %d RU/min, want detected at %d", st.SharedBudget, st.SharedLimit, limit)
		}
		if s.sharedSwitches != 1 {
			t.Fatalf("the mode changed %d times, want once", s.sharedSwitches)
		}
		share := float64(m.throttled) / float64(m.requests)
		steady := m.rate(2*time.Minute, 10*time.Minute)
		t.Logf("requests %d, 429s %d (%.2f%%), steady rate %.0f RU/min of %d, violations %d",
			m.requests, m.throttled, 100*share, steady, limit, m.violations)
		if share > 0.01 {
			t.Errorf("429 share %.2f%%, want ≤ 1%%", 100*share)
		}
		if steady < 0.9*limit || steady > limit {
			t.Errorf("steady-state rate %.0f RU/min, want within [%.0f, %d]", steady, 0.9*limit, limit)
		}
		// Not oscillating: every minute of the steady state at the budget.
		for min := 2; min < 10; min++ {
			if r := m.rate(time.Duration(min)*time.Minute, time.Duration(min+1)*time.Minute); r < 0.85*limit || r > limit {
				t.Errorf("minute %d: %.0f RU/min", min, r)
			}
		}
		if m.violations != 0 || st.Violations != 0 {
			t.Errorf("Retry-After violations: server %d, scheduler %d", m.violations, st.Violations)
		}
	})
}

// TestPerAppRegimeUsesEveryBudget: with per-app buckets the four apps give
// four budgets, and the scheduler must use them without mistaking them for
// a shared one.
func TestPerAppRegimeUsesEveryBudget(t *testing.T) {
	for _, n := range []int{1, 4} {
		t.Run(strconv.Itoa(n)+" apps", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const limit = 600
				m := newModel(false, limit, 1_000_000)
				m.latency = 50 * time.Millisecond
				ids := []string{"a", "b", "c", "d"}[:n]
				_, src := fakeApps(ids...)
				s := simScheduler(t, Limits{AppPerMinute: limit, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000}, src, m)
				run(t, s, 8*n, 5*time.Minute, "")
				steady := m.rate(time.Minute, 5*time.Minute)
				want := float64(n * limit)
				t.Logf("requests %d, 429s %d, steady rate %.0f RU/min of %.0f", m.requests, m.throttled, steady, want)
				if s.Stats().SharedBudget || s.sharedSwitches != 0 {
					t.Error("separate buckets taken for a shared one")
				}
				if m.throttled != 0 || m.violations != 0 {
					t.Errorf("%d 429s, %d violations; want none", m.throttled, m.violations)
				}
				if steady < 0.95*want {
					t.Errorf("steady rate %.0f RU/min, want ≥ 95%% of %.0f", steady, want)
				}
			})
		})
	}
}

// TestTenantShareCapsRate: the apps could do far more, but the tenant
// limiter keeps the backup to its share of the tenant's 5-minute bucket.
func TestTenantShareCapsRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const tenant5 = 6000 // share 0.5: 3000 RU per 5 minutes, 600 per minute
		m := newModel(false, 100_000, tenant5)
		_, src := fakeApps("a", "b", "c", "d")
		s := simScheduler(t, Limits{AppPerMinute: 100_000, AppPer24h: 10_000_000, TenantPer5Min: tenant5}, src, m)
		run(t, s, 8, 15*time.Minute, "")
		steady := m.rate(5*time.Minute, 15*time.Minute)
		t.Logf("steady rate %.0f RU/min, highest tenant window %d", steady, m.maxTenant)
		if m.maxTenant > tenant5/2 {
			t.Errorf("the tenant window held %d RU, more than the share %d", m.maxTenant, tenant5/2)
		}
		if steady < 0.95*600 || steady > 600 {
			t.Errorf("steady rate %.0f RU/min, want 95-100%% of 600", steady)
		}
		if m.throttled != 0 {
			t.Errorf("%d 429s", m.throttled)
		}
	})
}

// TestProactiveSlowDown: the server says 10 % or less of the app's budget
// remains although the app itself sent little (someone else uses the
// bucket): the app sends at most what remains until RateLimit-Reset.
func TestProactiveSlowDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var sent []time.Duration
		start := time.Now()
		srv := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			sent = append(sent, time.Since(start))
			h := http.Header{}
			if len(sent) == 1 {
				h.Set("RateLimit-Limit", "1000")
				h.Set("RateLimit-Remaining", "50")
				h.Set("RateLimit-Reset", "20")
			}
			return &http.Response{StatusCode: 200, Header: h, Body: http.NoBody, Request: r}, nil
		})
		_, src := fakeApps("a")
		s := New(zaptest.NewLogger(t), Config{Clock: RealClock{}}, src, srv)
		// The warning comes with a first request sent alone: requests sent
		// together with it could all be answered (the server answers at
		// once in this bubble) before the scheduler reads it.
		req, _ := http.NewRequest(http.MethodGet, graph+"/drives/d/items/i", nil)
		resp, err := s.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		const workers = 4
		run(t, s, workers, 30*time.Second, "")
		var before, after int
		for _, at := range sent[1:] {
			if at < 20*time.Second {
				before++
			} else {
				after++
			}
		}
		t.Logf("after the warning: %d requests before the reset, %d in the 10 s after", before, after)
		if before > 50 {
			t.Errorf("%d requests before the reset, want at most the 50 that remained", before)
		}
		if before < 40 {
			t.Errorf("only %d requests before the reset: the remaining budget should be used", before)
		}
		if after < 100 {
			t.Errorf("%d requests in the 10 s after the reset: the app should be back at full rate", after)
		}
	})
}

// TestFairnessEndToEnd: a small job's requests do not queue behind a huge
// job's.
func TestFairnessEndToEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newModel(false, 60, 1_000_000)
		_, src := fakeApps("a")
		s := simScheduler(t, Limits{AppPerMinute: 60, AppPer24h: 1_000_000, TenantPer5Min: 1_000_000}, src, m)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { run(t, s, 20, 3*time.Minute, "huge") })
		var took time.Duration
		wg.Go(func() {
			time.Sleep(20 * time.Second) // the huge job's queue is long by now
			start := time.Now()
			for range 10 {
				req, _ := http.NewRequestWithContext(WithJob(ctx, "small"), http.MethodGet, graph+"/drives/d/items/i", nil)
				resp, err := s.RoundTrip(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
			}
			took = time.Since(start)
		})
		wg.Wait()
		cancel()
		// 1 RU/s: alternating with the huge job, 10 requests take about 20 s;
		// behind its 20 queued requests each would take about 20 s.
		t.Logf("small job: 10 requests in %v", took)
		if took > 25*time.Second {
			t.Errorf("small job took %v, want ≤ 25 s", took)
		}
		if js := s.JobStats("small"); js.Requests != 10 || js.Throttled != 0 {
			t.Errorf("small job stats %+v", js)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestTimeScaled runs the way the throttling benchmark does against
// graphsim: the server's windows run 60 times faster than real time but it
// states Retry-After and RateLimit-Reset in real seconds; the scheduler
// runs on its own scaled clock (another origin) with HeaderSecond = 60 s.
func TestTimeScaled(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "per-app", true: "shared"}[shared], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const scale, limit = 60, 600
				m := newScaledModel(shared, limit, 1_000_000, Scaled(RealClock{}, scale), scale)
				m.latency = time.Millisecond       // one simulated minute is a real second
				time.Sleep(137 * time.Millisecond) // the scheduler's clock starts later
				_, src := fakeApps("a", "b", "c", "d")
				s := New(zaptest.NewLogger(t), Config{Limits: Limits{AppPerMinute: limit, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000},
					Clock: Scaled(RealClock{}, scale), HeaderSecond: scale * time.Second}, src, m)
				t.Cleanup(func() { checkNoViolations(t, s) })
				run(t, s, 16, 10*time.Minute/scale, "")
				want := float64(limit)
				if !shared {
					want *= 4
				}
				steady := m.rate(2*time.Minute, 10*time.Minute)
				share := float64(m.throttled) / float64(m.requests)
				t.Logf("requests %d, 429s %d (%.2f%%), steady %.0f RU/min of %.0f, violations %d, shared %v",
					m.requests, m.throttled, 100*share, steady, want, m.violations, s.Stats().SharedBudget)
				if s.Stats().SharedBudget != shared {
					t.Errorf("shared budget %v, want %v", s.Stats().SharedBudget, shared)
				}
				if share > 0.01 || m.violations != 0 {
					t.Errorf("429 share %.2f%%, %d violations", 100*share, m.violations)
				}
				if steady < 0.9*want || steady > want {
					t.Errorf("steady rate %.0f RU/min, want 90-100%% of %.0f", steady, want)
				}
			})
		})
	}
}

// TestProductionAboveReserve: production takes 70 % of the tenant bucket,
// more than the 50 % reserve. The tenant bucket overflows; the scheduler
// must pause on the tenant-level 429s, slow its tenant rate down and settle
// without violating Retry-After.
func TestProductionAboveReserve(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const tenant5 = 6000
		m := newModel(false, 100_000, tenant5)
		m.production = 0.7 * tenant5 / 5
		_, src := fakeApps("a", "b")
		s := simScheduler(t, Limits{AppPerMinute: 100_000, AppPer24h: 10_000_000, TenantPer5Min: tenant5}, src, m)
		run(t, s, 8, 30*time.Minute, "")
		late := m.rate(15*time.Minute, 30*time.Minute)
		share := float64(m.throttled) / float64(m.requests)
		t.Logf("requests %d, 429s %d (%.2f%%), rate after 15 min %.0f RU/min (room left by production: %.0f), production RU throttled %d",
			m.requests, m.throttled, 100*share, late, 0.3*tenant5/5, m.prodThrottled)
		if m.violations != 0 {
			t.Errorf("%d violations", m.violations)
		}
		if share > 0.01 {
			t.Errorf("429 share %.2f%%", 100*share)
		}
		if late > 0.3*tenant5/5 {
			t.Errorf("rate %.0f RU/min exceeds what production leaves", late)
		}
	})
}
