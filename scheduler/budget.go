package scheduler

import (
	"math"
	"time"

	"golang.org/x/time/rate"
)

// AIMD tuning. A throttle halves the budget's rate (not more often than
// every decreaseHoldoff, so the burst of 429s that requests already in
// flight collect counts once); the rate then grows back by recoveryStep of
// the configured rate every recoveryInterval: from half to full in 100 s.
const (
	decreaseFactor   = 0.5
	minRateFactor    = 0.1
	recoveryStep     = 0.05
	recoveryInterval = 10 * time.Second
	decreaseHoldoff  = 5 * time.Second
	minBurst         = 10
)

// budget is one limit the scheduler keeps: an app's minute and 24 h budget,
// the combined budget of all apps when they share one bucket, or the
// tenant's share of the 5-minute tenant bucket.
//
// Two mechanisms work together. The sliding windows mirror the server's and
// are the guarantee: a request is sent only if it fits. The rate.Limiter
// paces at the window's rate so that the budget is spread over the window
// instead of being spent in a burst and then waited for.
type budget struct {
	win    *window // the minute (tenant: 5-minute) window
	day    *window // 24 h window, nil for the tenant
	capWin int64   // configured RU per window
	capDay int64
	lim    *rate.Limiter
	base   float64 // configured pacing rate, RU/s

	factor       float64 // AIMD multiplier of capWin and base, in [minRateFactor, 1]
	lastDecrease time.Time
	lastRecovery time.Time

	// ext is usage the server reported beyond our own count (another
	// consumer, a cost we under-estimate); it counts against capWin until
	// extUntil, the server's RateLimit-Reset.
	ext      int64
	extUntil time.Time
}

func newBudget(win, day *window, capWin, capDay int64, now time.Time) *budget {
	b := &budget{win: win, day: day, factor: 1, lastRecovery: now}
	b.capWin, b.capDay = capWin, capDay
	b.base = float64(capWin) / win.span().Seconds()
	// Created with its rate and burst so that it starts full.
	b.lim = rate.NewLimiter(rate.Limit(b.base), burstFor(b.base))
	b.lim.SetLimitAt(now, rate.Limit(b.base))
	return b
}

// burstFor is one second's worth at r RU/s: enough for any single request,
// small enough that burst + window rate stays within the window cap most
// of the time.
func burstFor(r float64) int { return max(int(math.Ceil(r)), minBurst) }

// setCap sets the configured limits and the pacing rate that spreads capWin
// over the window.
func (b *budget) setCap(now time.Time, capWin, capDay int64) {
	b.capWin, b.capDay = capWin, capDay
	b.base = float64(capWin) / b.win.span().Seconds()
	b.apply(now)
}

func (b *budget) apply(now time.Time) {
	r := b.base * b.factor
	b.lim.SetLimitAt(now, rate.Limit(r))
	b.lim.SetBurstAt(now, burstFor(r))
}

func (b *budget) effectiveCap() int64 { return int64(float64(b.capWin) * b.factor) }

// ratePerMinute is the current pacing rate.
func (b *budget) ratePerMinute() float64 { return float64(b.lim.Limit()) * 60 }

// recover applies the additive increase due since the last one.
func (b *budget) recover(now time.Time) {
	if b.factor >= 1 {
		return
	}
	elapsed := now.Sub(b.lastRecovery)
	if elapsed < recoveryInterval {
		return
	}
	steps := int64(elapsed / recoveryInterval)
	b.lastRecovery = b.lastRecovery.Add(time.Duration(steps) * recoveryInterval)
	b.factor = min(1, b.factor+float64(steps)*recoveryStep)
	b.apply(now)
}

// decrease is the multiplicative decrease on throttling. It reports whether
// the rate changed.
func (b *budget) decrease(now time.Time) bool {
	if !b.lastDecrease.IsZero() && now.Sub(b.lastDecrease) < decreaseHoldoff {
		return false
	}
	b.lastDecrease, b.lastRecovery = now, now
	b.factor = max(minRateFactor, b.factor*decreaseFactor)
	b.apply(now)
	return true
}

// need is what a request of cost RU takes from the limiter: the limiter
// cannot hand out more than its burst at once, and the windows count the
// full cost anyway.
func (b *budget) need(cost int) int { return min(cost, b.lim.Burst()) }

// delay returns how long until a request of cost RU fits this budget (0:
// now).
func (b *budget) delay(now time.Time, ns int64, cost int) time.Duration {
	b.recover(now)
	var d time.Duration
	if n := b.need(cost); n > 0 {
		if tokens := b.lim.TokensAt(now); tokens < float64(n) {
			d = time.Duration((float64(n) - tokens) / float64(b.lim.Limit()) * float64(time.Second))
		}
	}
	c := min(int64(cost), b.effectiveCap())
	ext := int64(0)
	if now.Before(b.extUntil) {
		ext = b.ext
	}
	if b.win.used(ns)+ext+c > b.effectiveCap() {
		w := b.win.untilAtMost(ns, b.effectiveCap()-ext-c)
		if ext > 0 {
			w = min(w, b.extUntil.Sub(now))
		}
		d = max(d, w)
	}
	if b.day != nil {
		c := min(int64(cost), b.capDay)
		if b.day.used(ns)+c > b.capDay {
			d = max(d, b.day.untilAtMost(ns, b.capDay-c))
		}
	}
	return d
}

// charge records a request of cost RU sent at now.
func (b *budget) charge(now time.Time, ns int64, cost int) {
	if n := b.need(cost); n > 0 {
		b.lim.AllowN(now, n)
	}
	b.win.add(ns, int64(cost))
	if b.day != nil {
		b.day.add(ns, int64(cost))
	}
}

// restamp moves ru charged at ns to now.
func (b *budget) restamp(now, ns int64, ru int) {
	b.win.refund(now, ns, int64(ru))
	b.win.add(now, int64(ru))
	if b.day != nil {
		b.day.refund(now, ns, int64(ru))
		b.day.add(now, int64(ru))
	}
}

// refund takes back RU charged at ns that were never sent. The limiter's
// tokens are not returned (rate.Limiter has no way to without keeping the
// reservation); pacing loses at most a burst, the windows stay exact.
func (b *budget) refund(nowNS, ns int64, ru int) {
	b.win.refund(nowNS, ns, int64(ru))
	if b.day != nil {
		b.day.refund(nowNS, ns, int64(ru))
	}
}
