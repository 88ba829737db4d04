package graphsim

import (
	"sync"
	"time"
)

// Clock tells the simulator what time it is. Every expiry (tokens, download
// URLs, client assertions) and every throttling window is computed from it,
// so tests can pass a *ManualClock and advance time instead of sleeping.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// ManualClock is a Clock that only moves when told to. It is safe for
// concurrent use.
type ManualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewManualClock returns a ManualClock reading t.
func NewManualClock(t time.Time) *ManualClock { return &ManualClock{now: t} }

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// scaledClock runs scale times faster than base, starting at base's time
// when it was created. Throttling windows are measured on it so that a
// simulated minute can pass in a real second.
type scaledClock struct {
	base   Clock
	origin time.Time
	scale  float64
}

func newScaledClock(base Clock, scale float64) Clock {
	if scale == 1 {
		return base
	}
	return &scaledClock{base: base, origin: base.Now(), scale: scale}
}

func (c *scaledClock) Now() time.Time {
	elapsed := c.base.Now().Sub(c.origin)
	return c.origin.Add(time.Duration(float64(elapsed) * c.scale))
}
