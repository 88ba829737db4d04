package scheduler

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Clock is the scheduler's time source. Every wait, rate and window is
// computed from it, so tests run on a FakeClock without sleeping and
// time-scaled benchmarks run on a Scaled clock.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed on this clock. stop prevents the
	// call if it has not happened yet and reports whether it did so.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// scaler is implemented by clocks that run faster than real time. The
// scheduler needs the factor to compare a context deadline (real time) with
// its own waits (clock time).
type scaler interface {
	Scale() float64
}

func scaleOf(c Clock) float64 {
	if s, ok := c.(scaler); ok {
		return s.Scale()
	}
	return 1
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// AfterFunc is time.AfterFunc.
func (RealClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// ScaledClock runs factor times faster than its base clock, starting at the
// base clock's time when it was created. graphsim measures throttling
// windows and Retry-After in such a time when TimeScale > 1, so a scheduler
// benchmarked against it must count in the same time.
type ScaledClock struct {
	base   Clock
	origin time.Time
	factor float64
}

// Scaled returns a clock that runs factor (> 0) times faster than base.
func Scaled(base Clock, factor float64) *ScaledClock {
	if factor <= 0 {
		panic("scheduler: Scaled needs a positive factor")
	}
	return &ScaledClock{base: base, origin: base.Now(), factor: factor}
}

// Now returns the scaled time.
func (c *ScaledClock) Now() time.Time {
	return c.origin.Add(time.Duration(float64(c.base.Now().Sub(c.origin)) * c.factor))
}

// AfterFunc waits d of scaled time, i.e. d/factor on the base clock.
func (c *ScaledClock) AfterFunc(d time.Duration, f func()) func() bool {
	return c.base.AfterFunc(time.Duration(float64(d)/c.factor), f)
}

// Scale reports how many seconds of this clock pass per real second.
func (c *ScaledClock) Scale() float64 { return c.factor * scaleOf(c.base) }

// FakeClock only moves when told to. Timers fire synchronously inside
// Advance, in deadline order, with Now reading each timer's deadline while
// its function runs. It is safe for concurrent use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  fakeTimers
	seq     uint64
	changed chan struct{} // closed and replaced when the timers change
}

// NewFakeClock returns a FakeClock reading t.
func NewFakeClock(t time.Time) *FakeClock {
	return &FakeClock{now: t, changed: make(chan struct{})}
}

func (c *FakeClock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc registers f to run when the clock reaches Now()+d. A timer with
// d <= 0 runs at the next Advance (even Advance(0)), never inside
// AfterFunc: callers may hold locks that f takes.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{at: c.now.Add(max(d, 0)), seq: c.seq, f: f, index: -1}
	heap.Push(&c.timers, t)
	c.notifyLocked()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.index < 0 {
			return false
		}
		heap.Remove(&c.timers, t.index)
		c.notifyLocked()
		return true
	}
}

// Advance moves the clock forward by d, running every timer that falls due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for len(c.timers) > 0 && !c.timers[0].at.After(target) {
		t := heap.Pop(&c.timers).(*fakeTimer)
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.notifyLocked()
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	if target.After(c.now) {
		c.now = target
	}
	c.mu.Unlock()
}

// Pending returns how many timers are waiting.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Next returns the deadline of the earliest pending timer.
func (c *FakeClock) Next() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return time.Time{}, false
	}
	return c.timers[0].at, true
}

// BlockUntil waits until at least n timers are pending: a test's way of
// knowing that a goroutine has started to wait on this clock.
func (c *FakeClock) BlockUntil(n int) { _ = c.BlockUntilContext(context.Background(), n) }

// BlockUntilContext is BlockUntil that gives up when ctx ends.
func (c *FakeClock) BlockUntilContext(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		pending, changed := len(c.timers), c.changed
		c.mu.Unlock()
		if pending >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type fakeTimer struct {
	at    time.Time
	seq   uint64
	f     func()
	index int
}

type fakeTimers []*fakeTimer

func (h fakeTimers) Len() int { return len(h) }
func (h fakeTimers) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h fakeTimers) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *fakeTimers) Push(x any) {
	t := x.(*fakeTimer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *fakeTimers) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}
