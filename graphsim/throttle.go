package graphsim

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// window is a sliding window of RU charges kept in fixed slots: usage is the
// sum of the slots that still overlap the last n*slot of simulated time.
type window struct {
	slot  time.Duration
	slots []int64
	cur   int64 // absolute index of the newest slot
	sum   int64
}

func newWindow(span time.Duration, n int) *window {
	return &window{slot: span / time.Duration(n), slots: make([]int64, n)}
}

func (w *window) index(now time.Time) int64 { return now.UnixNano() / int64(w.slot) }

func (w *window) advance(now time.Time) {
	abs := w.index(now)
	if abs <= w.cur {
		return
	}
	n := int64(len(w.slots))
	from := max(w.cur+1, abs-n+1)
	if abs-w.cur >= n {
		clear(w.slots)
		w.sum = 0
	} else {
		for i := from; i <= abs; i++ {
			w.sum -= w.slots[i%n]
			w.slots[i%n] = 0
		}
	}
	w.cur = abs
}

func (w *window) add(now time.Time, ru int64) {
	w.advance(now)
	w.slots[w.cur%int64(len(w.slots))] += ru
	w.sum += ru
}

func (w *window) used(now time.Time) int64 {
	w.advance(now)
	return w.sum
}

// untilAtMost returns how long until usage drops to target or below if
// nothing more is charged.
func (w *window) untilAtMost(now time.Time, target int64) time.Duration {
	w.advance(now)
	if w.sum <= target {
		return 0
	}
	n := int64(len(w.slots))
	sum := w.sum
	for i := w.cur - n + 1; i <= w.cur; i++ {
		sum -= w.slots[i%n]
		if sum <= target {
			// Slot i leaves the window when slot i+n begins.
			return time.Duration((i+n)*int64(w.slot)) - time.Duration(now.UnixNano())
		}
	}
	return time.Duration((w.cur+n)*int64(w.slot)) - time.Duration(now.UnixNano())
}

type budget struct {
	minute, day *window
}

func newBudget() *budget {
	return &budget{minute: newWindow(time.Minute, 60), day: newWindow(24*time.Hour, 1440)}
}

// appThrottle is the throttling state of one app in the tenant.
type appThrottle struct {
	budget       *budget
	retryUntil   time.Time     // end of the current Retry-After window
	throttledAt  time.Time     // when the current window was handed out
	lastRetry    time.Duration // length of the current window, grows on violations
	violations   int           // consecutive violations
	blockedUntil time.Time
}

// verdict is the throttler's answer for one request.
type verdict struct {
	status     int           // 0 allowed, else 429 or 503
	retryAfter time.Duration // simulated
	rateLimit  bool          // add RateLimit-* headers
	limit      int64
	remaining  int64
	reset      time.Duration // simulated
	violation  bool
}

// throttler implements SharePoint's resource-unit throttling for one tenant.
type throttler struct {
	mu         sync.Mutex
	clock      Clock // simulated (scaled) time
	limits     Limits
	regime     Regime
	noThrottle bool
	p503       float64
	grace      time.Duration // simulated
	blockAfter int
	blockFor   time.Duration
	rng        *rand.Rand

	apps   map[string]*appThrottle
	shared *budget
	tenant *window

	prodRate      float64 // RU per simulated minute
	prodLast      time.Time
	prodCarry     float64
	prodThrottled int64
}

func newThrottler(o Options, sim Clock) *throttler {
	lim := LimitsForLicenses(o.Licenses)
	if o.Limits != nil {
		lim = *o.Limits
	}
	return &throttler{
		clock: sim, limits: lim, regime: o.Regime, noThrottle: o.NoThrottle,
		p503: o.Throttle503Rate, grace: time.Duration(float64(o.ViolationGrace) * o.TimeScale),
		blockAfter: o.BlockAfterViolations, blockFor: o.BlockDuration,
		rng:      rand.New(rand.NewPCG(o.Seed, 0x7468726f74746c65)),
		apps:     map[string]*appThrottle{},
		shared:   newBudget(),
		tenant:   newWindow(5*time.Minute, 60),
		prodRate: o.ProductionLoad, prodLast: sim.Now(),
	}
}

func (t *throttler) app(clientID string) *appThrottle {
	a := t.apps[clientID]
	if a == nil {
		a = &appThrottle{budget: t.shared}
		if t.regime == RegimePerApp {
			a.budget = newBudget()
		}
		t.apps[clientID] = a
	}
	return a
}

// accrueProduction charges the simulated production traffic since the last
// call to the tenant bucket, slot by slot, counting what it lost to
// throttling. Production requests cost 1 RU each.
func (t *throttler) accrueProduction(now time.Time) {
	if t.prodRate <= 0 {
		return
	}
	elapsed := now.Sub(t.prodLast)
	if elapsed <= 0 {
		return
	}
	// At most one window's worth matters: older traffic has left the bucket.
	start := t.prodLast
	if elapsed > 5*time.Minute {
		start = now.Add(-5 * time.Minute)
	}
	t.prodLast = now
	step := t.tenant.slot
	for at := start; at.Before(now); at = at.Add(step) {
		d := min(step, now.Sub(at))
		ru := t.prodRate*d.Minutes() + t.prodCarry
		whole := math.Floor(ru)
		t.prodCarry = ru - whole
		if whole == 0 {
			continue
		}
		slotEnd := at.Add(d)
		if t.tenant.used(slotEnd)+int64(whole) > int64(t.limits.TenantPer5Min) && !t.noThrottle {
			t.prodThrottled += int64(whole)
		}
		t.tenant.add(slotEnd, int64(whole))
	}
}

// charge meters one request of cost RU for the app and decides whether it
// is served. Throttled requests are charged too, as Microsoft does.
func (t *throttler) charge(clientID string, cost int) verdict {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.accrueProduction(now)
	a := t.app(clientID)
	ru := int64(cost)
	a.budget.minute.add(now, ru)
	a.budget.day.add(now, ru)
	t.tenant.add(now, ru)

	limit := int64(t.limits.AppPerMinute)
	minuteUsed := a.budget.minute.used(now)
	v := verdict{limit: limit, remaining: max(limit-minuteUsed, 0)}
	if t.noThrottle {
		// No limit is enforced, so none is announced: RateLimit headers
		// would make a client slow down to a budget that does not exist.
		return v
	}
	// RateLimit headers describe only the app minute budget, from 80 % on.
	if minuteUsed*5 >= limit*4 {
		v.rateLimit = true
		v.reset = max(a.budget.minute.untilAtMost(now, limit*4/5-1), time.Second)
	}

	if now.Before(a.blockedUntil) {
		// Calling while blocked is still a violation; the block stands.
		v.violation = now.Sub(a.throttledAt) >= t.grace
		v.status = 503
		v.retryAfter = a.blockedUntil.Sub(now)
		return v
	}
	if now.Before(a.retryUntil) {
		if now.Sub(a.throttledAt) < t.grace {
			// Already in flight when the window was handed out.
			v.status = 429
			v.retryAfter = a.retryUntil.Sub(now)
			return v
		}
		v.violation = true
		a.violations++
		if a.violations >= t.blockAfter {
			a.blockedUntil = now.Add(t.blockFor)
			a.retryUntil = a.blockedUntil
			a.throttledAt = now
			v.status = 503
			v.retryAfter = t.blockFor
			return v
		}
		// Escalate: every violation doubles the wait, up to ten minutes.
		ra := min(max(a.lastRetry, a.retryUntil.Sub(now))*2, 10*time.Minute)
		t.throttle(a, now, ra, &v)
		return v
	}
	if !a.retryUntil.IsZero() && now.Sub(a.retryUntil) >= 0 {
		a.violations = 0 // the app waited as asked
	}

	switch {
	case minuteUsed > limit:
		ra := a.budget.minute.untilAtMost(now, limit-ru)
		t.throttle(a, now, ra, &v)
		v.rateLimit, v.remaining, v.reset = true, 0, max(ra, time.Second)
	case a.budget.day.used(now) > int64(t.limits.AppPer24h):
		ra := a.budget.day.untilAtMost(now, int64(t.limits.AppPer24h)-ru)
		t.throttle(a, now, ra, &v)
	case t.tenant.used(now) > int64(t.limits.TenantPer5Min):
		ra := t.tenant.untilAtMost(now, int64(t.limits.TenantPer5Min)-ru)
		t.throttle(a, now, ra, &v)
		v.rateLimit = false // another limit than the app's minute budget fired
	}
	return v
}

func (t *throttler) throttle(a *appThrottle, now time.Time, ra time.Duration, v *verdict) {
	ra = max(ra, time.Second)
	a.retryUntil = now.Add(ra)
	a.throttledAt = now
	a.lastRetry = ra
	v.retryAfter = ra
	v.status = 429
	if t.p503 > 0 && t.rng.Float64() < t.p503 {
		v.status = 503
	}
}

func (t *throttler) productionThrottled() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.accrueProduction(t.clock.Now())
	return t.prodThrottled
}

func (t *throttler) resetProduction() {
	t.mu.Lock()
	t.prodThrottled = 0
	t.mu.Unlock()
}

// setProduction changes the production traffic from now on.
func (t *throttler) setProduction(ruPerMinute float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	t.accrueProduction(now) // what ran at the old rate until now
	t.prodRate, t.prodLast = ruPerMinute, now
}
