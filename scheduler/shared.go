package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"time"

	"go.uber.org/zap"
)

// SharedBudget is the state several agents backing up the same tenant
// share, so that together they stay within the tenant's budgets and honour
// each other's throttles (Config.Shared). The scheduler never calls it
// under its lock: a replenisher goroutine takes RU from it in small blocks
// and turns them into local credit that the grant path spends, and a
// watcher goroutine applies the cooldowns other agents publish.
type SharedBudget interface {
	// Take asks each window for up to Want RU, all in one round trip, and
	// returns per window the RU granted (0 when it is full) and the RU all
	// agents have taken within it, this take included.
	Take(ctx context.Context, reqs []Take) ([]Taken, error)
	// Publish tells the other agents of a cooldown.
	Publish(ctx context.Context, c Cooldown) error
	// Watch calls f with the cooldowns in force and then with each one
	// published, until ctx ends. It retries on its own when the backend is
	// unreachable.
	Watch(ctx context.Context, f func(Cooldown))
}

// Take is a request for RU from one shared sliding window: Limit RU per
// Slots × Slot of real time.
type Take struct {
	Key   string // "tenant", "combined" or "app:<client id>"
	Limit int64
	Slot  time.Duration
	Slots int
	Want  int64
}

// Taken answers a Take.
type Taken struct {
	Granted int64
	Used    int64
}

// Cooldown is a throttle one agent received, for all of them to honour.
type Cooldown struct {
	Origin string        // the publishing scheduler, so that it ignores its own
	Scope  string        // "app" (App's Retry-After), "tenant" (pause all) or "shared" (the apps' one bucket)
	App    string        // client id for scope "app"
	For    time.Duration // remaining, real time (agents' clocks are not comparable)
}

// Cooldown scopes.
const (
	ScopeApp    = "app"
	ScopeTenant = "tenant"
	ScopeShared = "shared"
)

const (
	// sharedTimeout bounds one call to the shared budget: past it the
	// agent works on its fallback share rather than wait.
	sharedTimeout = 250 * time.Millisecond
	// sharedProbe is how often (real time) a down backend is tried again,
	// on demand.
	sharedProbe = time.Second
	// sharedBlock is the credit taken at once, in time at the window's full
	// rate: a quarter second keeps the round trips to a few per second per
	// window while an agent sending only its part of the rate still spends
	// a block before it expires (one slot: 1 s, the tenant's 5 s). A block
	// of a whole tenant slot mostly expired unspent, and expired credit
	// still counts in the shared window: with three agents the tenant
	// window filled with it and throttled them all.
	sharedBlock = time.Second / 4
	// minSharedBlock covers any single request (a permission call costs 5).
	minSharedBlock = 5
)

// credit is RU taken from a shared window and not spent yet. It expires
// one window slot after it was taken: the shared window counted it in the
// slot it was taken in, and the extra slot of our windows (see window)
// covers spending it within the next one. Kept longer, it could be spent
// after the shared window stopped counting it.
type credit struct {
	key    string
	ru     int64
	until  time.Time
	want   bool  // a request waited for it: take more
	block  int64 // what a take fills it up to
	used   int64 // RU all agents took in the window, last we heard
	usedAt time.Time
	own    *budget // this agent's own count of the same limit
}

func (c *credit) avail(now time.Time) int64 {
	if !now.Before(c.until) {
		c.ru = 0
	}
	return c.ru
}

// sharedState is the scheduler's side of a SharedBudget.
type sharedState struct {
	sb       SharedBudget
	origin   string
	share    float64 // of each limit while the backend is down
	kick     chan struct{}
	pub      chan Cooldown
	cancel   context.CancelFunc
	done     chan struct{}
	tenant   *credit
	combined *credit
	up       bool
	received int64 // cooldowns applied from other agents
}

func newOrigin() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Scheduler) startShared() {
	sh := &sharedState{
		sb: s.cfg.Shared, origin: newOrigin(), share: s.cfg.FallbackShare,
		kick: make(chan struct{}, 1), pub: make(chan Cooldown, 64), done: make(chan struct{}),
		tenant: &credit{key: "tenant", own: s.tenant}, combined: &credit{key: "combined", own: s.combined}, up: true,
	}
	s.sh = sh
	ctx, cancel := context.WithCancel(context.Background())
	sh.cancel = cancel
	go func() {
		defer close(sh.done)
		done := make(chan struct{}, 2)
		go func() { s.publishLoop(ctx); done <- struct{}{} }()
		go func() { sh.sb.Watch(ctx, s.applyRemote); done <- struct{}{} }()
		s.replenishLoop(ctx)
		<-done
		<-done
	}()
}

// Close stops the goroutines that talk to the shared budget, if any.
func (s *Scheduler) Close() {
	if s.sh == nil {
		return
	}
	s.sh.cancel()
	<-s.sh.done
}

// sharedAvailLocked returns when c holds cost RU: now, or an estimate of
// when the replenisher will have taken more (it dispatches as soon as it
// has). A shortfall marks the credit wanted and wakes the replenisher.
func (s *Scheduler) sharedAvailLocked(c *credit, now time.Time, cost int, ratePerSec float64) time.Time {
	if c.avail(now) >= int64(cost) {
		return now
	}
	if !c.want {
		c.want = true
		s.kickLocked()
	}
	wait := time.Duration(float64(int64(cost)-c.ru) / max(ratePerSec, 1) * float64(time.Second))
	return now.Add(max(wait, time.Millisecond))
}

func (s *Scheduler) kickLocked() {
	select {
	case s.sh.kick <- struct{}{}:
	default:
	}
}

func (s *Scheduler) spendLocked(a *appState, cost int) {
	a.credit.ru -= int64(cost)
	s.sh.tenant.ru -= int64(cost)
	if s.shared {
		s.sh.combined.ru -= int64(cost)
	}
	// Top up before the credit runs out, so that requests rarely wait for
	// a round trip.
	for _, c := range [...]*credit{a.credit, s.sh.tenant, s.sh.combined} {
		if c.ru < max(c.block, minSharedBlock)/2 && (c != s.sh.combined || s.shared) {
			c.want = true
			s.kickLocked()
		}
	}
}

func (s *Scheduler) unspendLocked(a *appState, ru int, now time.Time) {
	for _, c := range [...]*credit{a.credit, s.sh.tenant, s.sh.combined} {
		if now.Before(c.until) {
			c.ru += int64(ru)
		}
	}
}

// plan is one round of the replenisher: the windows to take from.
type plan struct {
	credits []*credit
	takes   []Take
}

func block(limit int64, span time.Duration) int64 {
	b := int64(math.Ceil(float64(limit) * float64(sharedBlock) / float64(span)))
	return max(b, minSharedBlock)
}

func (s *Scheduler) planLocked(now time.Time) plan {
	var p plan
	add := func(c *credit, limit int64, slot time.Duration, slots int) {
		if !c.want {
			return
		}
		span := slot * time.Duration(slots)
		c.block = block(limit, span)
		want := c.block - c.avail(now)
		if want <= 0 {
			c.want = false
			return
		}
		p.credits = append(p.credits, c)
		p.takes = append(p.takes, Take{
			Key: c.key, Limit: limit, Slots: slots, Want: want,
			Slot: time.Duration(float64(slot) / s.scale), // the backend counts real time
		})
	}
	// The shared windows have the scheduler's own geometry, so that what
	// the agents take together fits what one agent may send.
	add(s.sh.tenant, s.tenant.effectiveCap(), tenantSlot, tenantSlots)
	if s.shared {
		add(s.sh.combined, s.combined.effectiveCap(), time.Second, minuteSlots)
	}
	for _, a := range s.apps {
		if a.cooldownUntil.After(now) || a.outUntil.After(now) {
			continue // it will not send before the credit expires anyway
		}
		add(a.credit, a.b.effectiveCap(), time.Second, minuteSlots)
	}
	return p
}

// replenishLoop takes credit from the shared budget whenever the grant
// path wants some, and the fallback share while the backend is down.
func (s *Scheduler) replenishLoop(ctx context.Context) {
	sh := s.sh
	var downSince, lastProbe time.Time
	for {
		s.mu.Lock()
		now := s.clock.Now()
		p := s.planLocked(now)
		s.mu.Unlock()
		if len(p.takes) > 0 {
			var res []Taken
			var err error
			if sh.up || now.Sub(lastProbe) >= time.Duration(float64(sharedProbe)*s.scale) {
				lastProbe = now
				tctx, cancel := context.WithTimeout(ctx, sharedTimeout)
				res, err = sh.sb.Take(tctx, p.takes)
				cancel()
				if ctx.Err() != nil {
					return
				}
				if err == nil && len(res) != len(p.takes) {
					err = errShortAnswer
				}
				s.setUp(err, &downSince)
			}
			s.mu.Lock()
			now = s.clock.Now()
			if !sh.up {
				res = s.fallbackTakeLocked(now, p)
			}
			for i, c := range p.credits {
				c.want = false
				if res[i].Granted > 0 {
					if now.Before(c.until) {
						// The remainder (under half a block) lives on
						// with the new block: at most a slot late, which
						// the windows' extra slot absorbs.
						c.ru += res[i].Granted
					} else {
						c.ru = res[i].Granted
					}
					c.until = now.Add(s.slotOf(c))
				}
				c.used, c.usedAt = res[i].Used, now
			}
			s.dispatchLocked(now)
			short := false
			for i, c := range p.credits {
				if res[i].Granted < p.takes[i].Want && c.ru < max(c.block, minSharedBlock)/2 {
					short = true // the window is full: try again in a while
				}
			}
			s.mu.Unlock()
			if short {
				if !s.waitClock(ctx, time.Second/4) {
					return
				}
				s.mu.Lock()
				for _, c := range p.credits {
					c.want = true
				}
				s.mu.Unlock()
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sh.kick:
		}
	}
}

var errShortAnswer = errors.New("shared budget: answer does not match the request")

func (s *Scheduler) slotOf(c *credit) time.Duration {
	if c == s.sh.tenant {
		return tenantSlot
	}
	return time.Second
}

// waitClock waits d on the scheduler's clock.
func (s *Scheduler) waitClock(ctx context.Context, d time.Duration) bool {
	ch := make(chan struct{})
	stop := s.clock.AfterFunc(d, func() { close(ch) })
	defer stop()
	select {
	case <-ctx.Done():
		return false
	case <-ch:
		return true
	case <-s.sh.kick:
		return true
	}
}

// setUp records whether the backend answered, logging each transition once.
func (s *Scheduler) setUp(err error, downSince *time.Time) {
	sh := s.sh
	s.mu.Lock()
	was := sh.up
	sh.up = err == nil
	s.mu.Unlock()
	switch {
	case was && err != nil:
		*downSince = time.Now()
		s.log.Warn("shared budget unreachable: working on the fallback share of the limits until it answers again",
			zap.Error(err), zap.Float64("fallback_share", sh.share))
	case !was && err == nil:
		s.log.Warn("shared budget reachable again: the agents share the limits again",
			zap.Duration("down_for", time.Since(*downSince).Round(time.Millisecond)))
	}
	if was != sh.up && s.cfg.SharedState != nil {
		s.cfg.SharedState(sh.up)
	}
}

// fallbackTakeLocked grants p while the backend is down: up to the
// fallback share of each limit, less what this agent sent within the
// window (its own windows count that, from before the outage too). Without
// the backend it cannot know what the others send, so it assumes they each
// keep to the same share.
func (s *Scheduler) fallbackTakeLocked(now time.Time, p plan) []Taken {
	ns := s.ns(now)
	res := make([]Taken, len(p.takes))
	for i, c := range p.credits {
		limit := int64(float64(p.takes[i].Limit) * s.sh.share)
		used := c.own.win.used(ns) + c.avail(now)
		res[i] = Taken{Granted: min(p.takes[i].Want, max(limit-used, 0)), Used: used}
	}
	return res
}

// publishLocked queues a cooldown for the other agents; the lock is never
// held across the network.
func (s *Scheduler) publishLocked(now time.Time, scope, app string, until time.Time) {
	if s.sh == nil || !until.After(now) {
		return
	}
	c := Cooldown{Origin: s.sh.origin, Scope: scope, App: app, For: time.Duration(float64(until.Sub(now)) / s.scale)}
	select {
	case s.sh.pub <- c:
	default: // a burst of 429s: the others get their own, as without sharing
	}
}

func (s *Scheduler) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-s.sh.pub:
			tctx, cancel := context.WithTimeout(ctx, sharedTimeout)
			err := s.sh.sb.Publish(tctx, c)
			cancel()
			if err != nil && ctx.Err() == nil {
				// The others will get their own 429: no worse than one agent alone.
				s.log.Debug("cooldown not published", zap.String("scope", c.Scope), zap.Error(err))
			}
		}
	}
}

// applyRemote honours a cooldown another agent received.
func (s *Scheduler) applyRemote(c Cooldown) {
	if c.Origin == s.sh.origin || c.For <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	until := now.Add(time.Duration(float64(c.For) * s.scale))
	switch c.Scope {
	case ScopeApp:
		a := s.byID[c.App]
		if a == nil {
			return // not an app of ours (yet): nothing to hold back
		}
		a.cool(now, until)
	case ScopeTenant:
		if until.After(s.pauseUntil) {
			s.pauseUntil, s.pauseSetAt = until, now
		}
	case ScopeShared:
		// The apps share one bucket and it is empty: whether or not this
		// agent has seen the evidence yet, none of its apps may send.
		for _, a := range s.apps {
			a.cool(now, until)
		}
		if until.After(s.sharedPauseUntil) {
			s.sharedPauseUntil, s.sharedPauseSetAt = until, now
		}
	default:
		return
	}
	s.sh.received++
	s.dispatchLocked(now)
}

// sharedUsedFor is how long the count of a shared window stays good enough
// to read RateLimit headers with: it slides over a minute, so a few seconds
// change it little, while a stricter bound (a slot) dropped it whenever a
// take came late on a loaded, time-scaled machine, and the other agents'
// traffic then passed for a shared bucket.
const sharedUsedFor = 10 * time.Second

// sharedUsedLocked is what all agents sent through c's window, as far as
// the last take told: its count less our credit not spent yet.
func (s *Scheduler) sharedUsedLocked(c *credit, now time.Time) int64 {
	if c.usedAt.IsZero() || now.Sub(c.usedAt) > sharedUsedFor {
		return 0
	}
	return max(c.used-c.avail(now), 0)
}
