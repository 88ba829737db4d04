package auth

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimitedError refuses a call beyond the caller's rate.
type RateLimitedError struct {
	// RetryAfter is when the caller's next call would be admitted.
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many calls from this client; retry after %v", e.RetryAfter)
}

// Limiter is a token bucket per caller. The number of buckets is bounded:
// buckets that have refilled are dropped (a full bucket is a new one), and
// when every slot is busy, callers beyond the bound share one bucket, so a
// flood of new peers costs neither memory nor the known callers' budgets.
type Limiter struct {
	rate   rate.Limit
	burst  int
	max    int
	refill time.Duration // an idle bucket is full again after this

	mu        sync.Mutex
	buckets   map[string]*bucket
	overflow  *rate.Limiter
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// NewLimiter allows each caller perSecond calls a second on average and
// burst at once, tracking at most maxCallers callers one by one.
func NewLimiter(perSecond float64, burst, maxCallers int) *Limiter {
	return &Limiter{
		rate:     rate.Limit(perSecond),
		burst:    burst,
		max:      maxCallers,
		refill:   time.Duration(float64(burst) / perSecond * float64(time.Second)),
		buckets:  make(map[string]*bucket),
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// Allow takes one call from key's bucket at now, or says how long to wait.
func (l *Limiter) Allow(key string, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.bucketOf(key, now)
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return &RateLimitedError{RetryAfter: l.refill}
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now) // refused calls do not consume the future
		return &RateLimitedError{RetryAfter: d}
	}
	return nil
}

func (l *Limiter) bucketOf(key string, now time.Time) *rate.Limiter {
	if b, ok := l.buckets[key]; ok {
		b.last = now
		return b.lim
	}
	if len(l.buckets) >= l.max && now.Sub(l.lastSweep) >= time.Second {
		// At most once a second, so a flood does not make every call scan.
		l.lastSweep = now
		for k, b := range l.buckets {
			if now.Sub(b.last) >= l.refill {
				delete(l.buckets, k)
			}
		}
	}
	if len(l.buckets) >= l.max {
		return l.overflow
	}
	b := &bucket{lim: rate.NewLimiter(l.rate, l.burst), last: now}
	l.buckets[key] = b
	return b.lim
}

// Callers is the number of callers tracked one by one.
func (l *Limiter) Callers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
