// Package scheduler sends every Microsoft Graph request of a tenant: it picks
// the application (round-robin over the tenant's usable apps), waits until
// the app's, the tenant's and, when the apps turn out to share one bucket,
// the combined budget allow the request, attaches the app's token, and
// reads Microsoft's throttling signals to adapt. A *Scheduler is an
// http.RoundTripper, so msgraph-sdk-go and plain downloads use it alike.
//
// Budgets are sliding windows that mirror SharePoint's (the guarantee)
// paced by rate.Limiters (the smoothing), in resource units per request
// class (Cost). Signals: 429/503 with Retry-After cool the app down for
// max(Retry-After, RateLimit-Reset); one without RateLimit headers pauses
// the tenant; RateLimit headers that count more than an app sent reveal a
// shared bucket (then all apps are held to one budget) or, with 10 % or
// less remaining, usage we do not see (then the app sends at most what
// remains until the reset). Throttling halves the budget's rate, which
// grows back over 100 s. Waiting requests are served round-robin across
// jobs (WithJob), metadata before downloads.
//
// Several agents on one tenant share their budgets through a SharedBudget
// (Config.Shared): requests then also spend credit that a background
// goroutine takes from it in small blocks, and cooldowns are published to
// and received from the other agents. The grant path stays local.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/internal/version"
)

// App is one Entra application the scheduler can send requests with.
type App interface {
	// ID is the application (client) id.
	ID() string
	// Token returns a bearer token for Microsoft Graph.
	Token(ctx context.Context) (string, error)
	// Usable reports whether the app may be put in rotation (certificate
	// valid, token requests not failing).
	Usable() bool
}

// AppSource lists a tenant's applications. It is read again by Refresh and
// every Config.AppRefresh, so apps added to or removed from the pool join
// or leave the rotation.
type AppSource interface {
	Apps() []App
}

// AppSourceFunc adapts a function to AppSource.
type AppSourceFunc func() []App

// Apps calls f.
func (f AppSourceFunc) Apps() []App { return f() }

// Limits are the SharePoint/OneDrive resource-unit budgets of a tenant.
type Limits struct {
	AppPerMinute  int // RU per app per minute
	AppPer24h     int // RU per app per 24 hours
	TenantPer5Min int // RU per 5 minutes, all apps and users together
}

// LimitsForLicenses returns Microsoft's published limits for a tenant with
// the given number of licences (microsoft-365-facts.md section 1).
func LimitsForLicenses(licenses int) Limits {
	switch {
	case licenses <= 1000:
		return Limits{1250, 1_200_000, 18_750}
	case licenses <= 5000:
		return Limits{2500, 2_400_000, 37_500}
	case licenses <= 15000:
		return Limits{3750, 3_600_000, 56_250}
	case licenses <= 50000:
		return Limits{5000, 4_800_000, 75_000}
	default:
		return Limits{6250, 6_000_000, 93_750}
	}
}

// Config configures a tenant's scheduler. Zero fields take the defaults
// given.
type Config struct {
	// Company names the vendor in User-Agent: ISV|<Company>|backup-proxy/<version>.
	// Default "backup-proxy".
	Company string
	// Limits are the budgets Microsoft grants; zero fields take the
	// smallest tier, LimitsForLicenses(0).
	Limits Limits
	// TenantShare is the share of the tenant's 5-minute bucket the backup
	// may use; the rest is the production reserve. Default 0.5, at most 1.
	TenantShare float64
	// Clock is the time source. Default RealClock.
	Clock Clock
	// HeaderSecond is the Clock duration that one second of Retry-After or
	// RateLimit-Reset stands for. Default time.Second. A server that runs its
	// throttling windows TimeScale times faster than real time but states
	// Retry-After in real seconds (graphsim today), measured with a
	// Scaled(RealClock{}, TimeScale) clock, needs TimeScale seconds.
	HeaderSecond time.Duration
	// MaxAttempts bounds the attempts of one request, retries included.
	// Default 10.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the jittered exponential backoff
	// after transient errors. Defaults 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// GraphPathPrefixes mark Graph API calls by URL path: they get the
	// app's bearer token. Other URLs (pre-authenticated download URLs) get
	// no Authorization. Default "/v1.0/" and "/beta/".
	GraphPathPrefixes []string
	// NoAppWait is how long a request waits for an app to become usable
	// when none is, before it fails with ErrNoApp. Default 1 minute.
	NoAppWait time.Duration
	// SharedRevertAfter: after this long without evidence that the apps
	// share one bucket, they are treated as separate budgets again.
	// Default 10 minutes.
	SharedRevertAfter time.Duration
	// AppRefresh is how often the app list is read again. Default 30 s.
	AppRefresh time.Duration
	// Shared, if set, is the budget this agent shares with others backing
	// up the same tenant: requests also need credit taken from it, and
	// cooldowns are published to and received from the others. Nil: this
	// agent alone, everything in process. Close stops its goroutines.
	Shared SharedBudget
	// FallbackShare is the share of each limit the agent uses while Shared
	// is unreachable (about one over the number of agents). Default 1/3.
	FallbackShare float64
	// SharedState, if set, is called when Shared stops or starts answering
	// (false: the fallback share is in force). Not called under the lock.
	SharedState func(up bool)
}

func (c Config) withDefaults() Config {
	if c.Company == "" {
		c.Company = "backup-proxy"
	}
	def := LimitsForLicenses(0)
	if c.Limits.AppPerMinute <= 0 {
		c.Limits.AppPerMinute = def.AppPerMinute
	}
	if c.Limits.AppPer24h <= 0 {
		c.Limits.AppPer24h = def.AppPer24h
	}
	if c.Limits.TenantPer5Min <= 0 {
		c.Limits.TenantPer5Min = def.TenantPer5Min
	}
	if c.TenantShare <= 0 {
		c.TenantShare = 0.5
	}
	c.TenantShare = min(c.TenantShare, 1)
	if c.Clock == nil {
		c.Clock = RealClock{}
	}
	if c.HeaderSecond <= 0 {
		c.HeaderSecond = time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if len(c.GraphPathPrefixes) == 0 {
		c.GraphPathPrefixes = []string{"/v1.0/", "/beta/"}
	}
	if c.NoAppWait <= 0 {
		c.NoAppWait = time.Minute
	}
	if c.SharedRevertAfter <= 0 {
		c.SharedRevertAfter = 10 * time.Minute
	}
	if c.AppRefresh <= 0 {
		c.AppRefresh = 30 * time.Second
	}
	if c.FallbackShare <= 0 {
		c.FallbackShare = 1.0 / 3
	}
	c.FallbackShare = min(c.FallbackShare, 1)
	return c
}

// Window geometry: SharePoint's windows (60 one-second slots per minute,
// 60 five-second slots per 5 minutes, 1440 one-minute slots per 24 h) plus
// one slot of margin (see window).
const (
	minuteSlots = 61
	tenantSlot  = 5 * time.Second
	tenantSlots = 61
	daySlots    = 1441

	// usableRecheck is how long an answer of App.Usable is trusted.
	usableRecheck = time.Second
	// tokenRetry is how long an app whose token request failed stays out.
	tokenRetry = 10 * time.Second
	// sharedVotes is how many consistent observations switch the pool to
	// one combined budget: one could be a cost we misjudged.
	sharedVotes = 2
)

// Errors.
var (
	// ErrNoApp: the tenant has no application that can send requests.
	ErrNoApp = errors.New("scheduler: no usable application")
	// ErrDeadline: the earliest slot for a request is after its context's
	// deadline. Errors that match it also match context.DeadlineExceeded.
	ErrDeadline = errors.New("scheduler: no slot before the request's deadline")
	// ErrGaveUp: every attempt the scheduler may make failed.
	ErrGaveUp = errors.New("scheduler: gave up")
)

// appState is the scheduler's view of one app.
type appState struct {
	app App
	id  string
	b   *budget

	cooldownUntil time.Time // Retry-After / RateLimit-Reset
	cooldownSetAt time.Time
	outUntil      time.Time // taken out after a failed token request
	outReason     string
	usable        bool
	usableCheck   time.Time
	streak        int // throttles in a row, for a Retry-After-less 429

	requests, t429, t503 int64
	inflight             int64 // RU sent and not answered yet

	credit *credit // from the shared budget; nil without one
}

func (a *appState) cool(now, until time.Time) {
	if until.After(a.cooldownUntil) {
		a.cooldownUntil, a.cooldownSetAt = until, now
	}
}

type jobCounters struct {
	requests, attempts, throttled, failed int64
}

// grant is a slot: the app a request is sent with, charged cost RU at ns.
type grant struct {
	app    *appState
	client App // app.app when granted: a refresh may replace it meanwhile
	job    string
	at     time.Time
	ns     int64
	ru     int
	// inflight is the part of ru counted in flight: charged, not answered.
	// The grant belongs to one goroutine; the counters it adjusts are
	// under the scheduler's lock.
	inflight int
}

// Scheduler schedules one tenant's Graph traffic. It is safe for concurrent
// use.
type Scheduler struct {
	log   *zap.Logger
	cfg   Config
	clock Clock
	scale float64
	src   AppSource
	base  http.RoundTripper
	ua    string
	epoch time.Time

	mu        sync.Mutex
	apps      []*appState
	byID      map[string]*appState
	next      int // round-robin cursor
	refreshAt time.Time

	tenant   *budget
	combined *budget // all apps together; enforced only while shared

	pauseUntil, pauseSetAt             time.Time // tenant-wide pause
	shared                             bool
	sharedLimit                        int64
	sharedEvidence                     time.Time
	sharedVotes                        int
	sharedPauseUntil, sharedPauseSetAt time.Time
	sharedSwitches                     int // mode changes, to tell convergence from oscillation

	queues     [numClasses]classQueue
	metaStreak int
	grants     uint64 // slots granted to waiters, numbering them in order

	timerStop func() bool
	timerAt   time.Time
	timerGen  uint64

	sh *sharedState // nil without Config.Shared

	jobs                                                 map[string]*jobCounters
	inflight                                             int64 // RU sent and not answered yet, all apps
	requests, attempts, retries, failed, throttled, viol int64
}

// New returns the scheduler of one tenant. base sends the requests
// (http.DefaultTransport if nil); it must not follow redirects or retry.
func New(log *zap.Logger, cfg Config, apps AppSource, base http.RoundTripper) *Scheduler {
	if log == nil {
		log = zap.NewNop()
	}
	if base == nil {
		base = http.DefaultTransport
	}
	cfg = cfg.withDefaults()
	now := cfg.Clock.Now()
	lim := cfg.Limits
	s := &Scheduler{
		log: log.Named("scheduler"), cfg: cfg, clock: cfg.Clock, scale: scaleOf(cfg.Clock),
		src: apps, base: base, epoch: now,
		ua:   "ISV|" + cfg.Company + "|backup-proxy/" + version.Version,
		byID: map[string]*appState{}, jobs: map[string]*jobCounters{},
	}
	tenantCap := int64(cfg.TenantShare * float64(lim.TenantPer5Min))
	s.tenant = newBudget(newWindow(tenantSlot, tenantSlots), nil, tenantCap, 0, now)
	s.combined = newBudget(newWindow(time.Second, minuteSlots), newWindow(time.Minute, daySlots),
		int64(lim.AppPerMinute), int64(lim.AppPer24h), now)
	if cfg.Shared != nil {
		s.startShared()
	}
	s.mu.Lock()
	s.refreshLocked(now)
	s.mu.Unlock()
	return s
}

func (s *Scheduler) ns(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

func (s *Scheduler) newAppState(app App, now time.Time) *appState {
	lim := s.cfg.Limits
	a := &appState{app: app, id: app.ID(),
		b: newBudget(newWindow(time.Second, minuteSlots), newWindow(time.Minute, daySlots),
			int64(lim.AppPerMinute), int64(lim.AppPer24h), now)}
	if s.sh != nil {
		a.credit = &credit{key: "app:" + a.id, own: a.b}
	}
	return a
}

// Refresh reads the app list again now, e.g. after the pool changed.
func (s *Scheduler) Refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	s.refreshLocked(now)
	s.dispatchLocked(now)
}

func (s *Scheduler) refreshLocked(now time.Time) {
	s.refreshAt = now.Add(s.cfg.AppRefresh)
	if s.src == nil {
		return
	}
	apps := s.src.Apps()
	byID := make(map[string]*appState, len(apps))
	list := make([]*appState, 0, len(apps))
	for _, app := range apps {
		id := app.ID()
		if byID[id] != nil {
			continue
		}
		a := s.byID[id]
		if a == nil {
			a = s.newAppState(app, now)
		}
		a.app = app
		a.usableCheck = time.Time{} // ask again: it may be a new certificate
		byID[id] = a
		list = append(list, a)
	}
	s.apps, s.byID = list, byID
	if s.next >= len(list) {
		s.next = 0
	}
}

func (s *Scheduler) jobLocked(job string) *jobCounters {
	j := s.jobs[job]
	if j == nil {
		j = &jobCounters{}
		s.jobs[job] = j
	}
	return j
}

// readyAtLocked returns when app a can take a request of cost RU (ignoring
// the tenant-wide limits), or false if it is out of rotation. If a's
// cooldown alone makes it no earlier than bound, that is returned without
// looking at its budget: the caller has a better candidate anyway.
func (s *Scheduler) readyAtLocked(a *appState, now time.Time, ns int64, cost int, bound time.Time) (time.Time, bool) {
	if a.outUntil.After(now) {
		return time.Time{}, false
	}
	if !now.Before(a.usableCheck) {
		a.usable = a.app.Usable()
		a.usableCheck = now.Add(usableRecheck)
	}
	if !a.usable {
		return time.Time{}, false
	}
	at := now
	if a.cooldownUntil.After(at) {
		at = a.cooldownUntil
		if !bound.IsZero() && !at.Before(bound) {
			return at, true
		}
	}
	if d := a.b.delay(now, ns, cost); d > 0 {
		at = laterOf(at, now.Add(d))
	}
	if s.sh != nil && !at.After(now) {
		at = s.sharedAvailLocked(a.credit, now, cost, a.b.base*a.b.factor)
	}
	return at, true
}

// globalReadyLocked returns when the tenant-wide limits allow a request of
// cost RU.
func (s *Scheduler) globalReadyLocked(now time.Time, ns int64, cost int) time.Time {
	at := laterOf(now, s.pauseUntil)
	if d := s.tenant.delay(now, ns, cost); d > 0 {
		at = laterOf(at, now.Add(d))
	}
	if s.shared {
		if now.Sub(s.sharedEvidence) > s.cfg.SharedRevertAfter {
			s.shared, s.sharedVotes = false, 0
			s.sharedSwitches++
			s.log.Info("no sign of a shared bucket any more: the apps' budgets are separate again",
				zap.Duration("without_evidence", now.Sub(s.sharedEvidence)))
		} else {
			at = laterOf(at, s.sharedPauseUntil)
			if d := s.combined.delay(now, ns, cost); d > 0 {
				at = laterOf(at, now.Add(d))
			}
			if s.sh != nil && !at.After(now) {
				at = s.sharedAvailLocked(s.sh.combined, now, cost, s.combined.base*s.combined.factor)
			}
		}
	}
	if s.sh != nil && !at.After(now) {
		at = s.sharedAvailLocked(s.sh.tenant, now, cost, s.tenant.base*s.tenant.factor)
	}
	return at
}

// errNoneUsable: apps exist, but none is in rotation now.
var errNoneUsable = errors.New("no app in rotation")

// pickLocked chooses the app for a request of cost RU: the first app in
// round-robin order that is ready now, else none, with the time the
// earliest one will be. An app with a limiter delay is never waited on
// while another one is ready. avoid (the app a transient failure came from)
// is taken only if no other app is ready.
func (s *Scheduler) pickLocked(now time.Time, ns int64, cost int, avoid *appState) (*appState, time.Time, error) {
	n := len(s.apps)
	if n == 0 {
		return nil, time.Time{}, ErrNoApp
	}
	global := s.globalReadyLocked(now, ns, cost)
	open := !global.After(now)
	var best, fallback *appState
	var bestAt time.Time
	fallbackIdx := 0
	for i := range n {
		idx := s.next + i
		if idx >= n {
			idx -= n
		}
		a := s.apps[idx]
		at, ok := s.readyAtLocked(a, now, ns, cost, bestAt)
		if !ok {
			continue
		}
		if open && !at.After(now) {
			if a == avoid && n > 1 {
				if fallback == nil {
					fallback, fallbackIdx = a, idx
				}
				continue
			}
			s.next = (idx + 1) % n
			return a, now, nil
		}
		if best == nil || at.Before(bestAt) {
			best, bestAt = a, at
		}
	}
	if fallback != nil {
		s.next = (fallbackIdx + 1) % n
		return fallback, now, nil
	}
	if best == nil && fallback == nil {
		return nil, now.Add(usableRecheck), errNoneUsable
	}
	return nil, laterOf(global, bestAt), nil
}

func (s *Scheduler) chargeLocked(now time.Time, ns int64, a *appState, cost int, job string) grant {
	a.b.charge(now, ns, cost)
	s.tenant.charge(now, ns, cost)
	s.combined.charge(now, ns, cost)
	a.inflight += int64(cost)
	s.inflight += int64(cost)
	if s.sh != nil {
		s.spendLocked(a, cost)
	}
	return grant{app: a, client: a.app, job: job, at: now, ns: ns, ru: cost, inflight: cost}
}

// refund takes back ru of g's charge: RU reserved for a request that was
// not sent (token failure, a redirect that did not happen).
//
// It is also how in-flight accounting ends on paths without a response.
func (s *Scheduler) refund(g *grant, ru int) {
	if ru <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ns(s.clock.Now())
	g.app.b.refund(now, g.ns, ru)
	s.tenant.refund(now, g.ns, ru)
	s.combined.refund(now, g.ns, ru)
	if s.sh != nil {
		s.unspendLocked(g.app, ru, s.clock.Now())
	}
	s.settleLocked(g, ru)
	g.ru -= ru
	s.dispatchLocked(s.clock.Now())
}

// settleLocked ends up to ru of g's in-flight accounting.
func (s *Scheduler) settleLocked(g *grant, ru int) {
	r := min(ru, g.inflight)
	g.app.inflight -= int64(r)
	s.inflight -= int64(r)
	g.inflight -= r
}

// settle ends g's in-flight accounting: the attempt is over.
func (s *Scheduler) settle(g *grant) {
	if g.inflight == 0 {
		return
	}
	s.mu.Lock()
	s.settleLocked(g, g.inflight)
	s.mu.Unlock()
}

// acquire waits for a slot for a request of cost RU. retry puts the request
// at the head of its job's queue: it has waited its turn already.
func (s *Scheduler) acquire(ctx context.Context, job string, class Class, cost int, avoid *appState, retry bool) (grant, error) {
	s.mu.Lock()
	now := s.clock.Now()
	if !now.Before(s.refreshAt) {
		s.refreshLocked(now)
	}
	if s.queues[ClassMetadata].n == 0 && s.queues[ClassDownload].n == 0 {
		ns := s.ns(now)
		a, _, err := s.pickLocked(now, ns, cost, avoid)
		if a != nil {
			g := s.chargeLocked(now, ns, a, cost, job)
			s.mu.Unlock()
			return g, nil
		}
		if errors.Is(err, ErrNoApp) {
			s.mu.Unlock()
			return grant{}, err
		}
	}
	w := &waiter{job: job, class: class, cost: cost, avoid: avoid, since: now, done: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		w.deadline = now.Add(time.Duration(float64(time.Until(dl)) * s.scale))
	}
	s.queues[class].push(w, retry)
	s.dispatchLocked(now)
	s.mu.Unlock()

	select {
	case <-w.done:
		return w.g, w.err
	case <-ctx.Done():
	}
	s.mu.Lock()
	if !w.finished {
		w.finished = true
		s.queues[class].remove(w)
		s.dispatchLocked(s.clock.Now())
		s.mu.Unlock()
		return grant{}, ctx.Err()
	}
	s.mu.Unlock()
	if w.err == nil {
		s.refund(&w.g, w.g.ru) // granted while the context ended
	}
	return grant{}, ctx.Err()
}

func (s *Scheduler) finishLocked(w *waiter, g grant, err error) {
	s.grants++
	w.finished, w.g, w.err, w.order = true, g, err, s.grants
	close(w.done)
}

// nextWaiterLocked picks the queue served next: metadata first, but a
// download gets a turn after every metadataWeight metadata grants so that a
// steady stream of metadata cannot stall the downloads either.
const metadataWeight = 4

func (s *Scheduler) nextWaiterLocked() (*waiter, *classQueue) {
	m, d := &s.queues[ClassMetadata], &s.queues[ClassDownload]
	switch {
	case m.n == 0 && d.n == 0:
		return nil, nil
	case d.n == 0 || m.n > 0 && s.metaStreak < metadataWeight:
		return m.peek(), m
	default:
		return d.peek(), d
	}
}

// dispatchLocked grants slots to waiting requests in fair order until the
// next one has to wait, then arms the timer for when it can go.
func (s *Scheduler) dispatchLocked(now time.Time) {
	ns := s.ns(now)
	for {
		w, q := s.nextWaiterLocked()
		if w == nil {
			s.stopTimerLocked()
			return
		}
		a, wake, err := s.pickLocked(now, ns, w.cost, w.avoid)
		if a != nil {
			q.pop()
			if w.class == ClassMetadata && s.queues[ClassDownload].n > 0 {
				s.metaStreak++
			} else {
				s.metaStreak = 0
			}
			s.finishLocked(w, s.chargeLocked(now, ns, a, w.cost, w.job), nil)
			continue
		}
		switch {
		case errors.Is(err, ErrNoApp):
			q.pop()
			s.finishLocked(w, grant{}, err)
			continue
		case err != nil: // no app in rotation now
			if give := w.since.Add(s.cfg.NoAppWait); !now.Before(give) {
				q.pop()
				s.finishLocked(w, grant{}, fmt.Errorf("%w: %s", ErrNoApp, s.outReasonsLocked()))
				continue
			} else if give.Before(wake) {
				wake = give
			}
		}
		if !w.deadline.IsZero() && wake.After(w.deadline) {
			q.pop()
			s.finishLocked(w, grant{}, &DeadlineError{Wait: wake.Sub(now), Left: w.deadline.Sub(now)})
			continue
		}
		s.armLocked(now, wake)
		return
	}
}

func (s *Scheduler) outReasonsLocked() string {
	var b strings.Builder
	for i, a := range s.apps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(a.id)
		b.WriteString(": ")
		switch {
		case a.outReason != "":
			b.WriteString(a.outReason)
		default:
			b.WriteString("not usable (certificate invalid or token requests failing)")
		}
	}
	return b.String()
}

func (s *Scheduler) armLocked(now, at time.Time) {
	if s.timerStop != nil {
		if !s.timerAt.After(at) {
			return // an earlier wake-up is due anyway
		}
		s.timerStop()
	}
	s.timerGen++
	gen := s.timerGen
	s.timerAt = at
	s.timerStop = s.clock.AfterFunc(max(at.Sub(now), time.Microsecond), func() { s.onTimer(gen) })
}

func (s *Scheduler) stopTimerLocked() {
	if s.timerStop != nil {
		s.timerStop()
		s.timerStop, s.timerAt = nil, time.Time{}
	}
}

func (s *Scheduler) onTimer(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen == s.timerGen {
		s.timerStop, s.timerAt = nil, time.Time{}
	}
	s.dispatchLocked(s.clock.Now())
}

// beginSend is the last check before a request leaves: if the app or the
// tenant entered a cooldown since the slot was granted (another request's
// 429), the request is not sent. A cooldown that was already known when
// the slot was granted would be a bug in pickLocked; it is counted as a
// violation and still not sent.
//
// attempt is the request's attempt number, 0 for the download a /content
// redirect leads to (part of the same attempt).
func (s *Scheduler) beginSend(g *grant, attempt int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	a := g.app
	blocked := false
	for _, c := range [...]struct{ until, set time.Time }{
		{a.cooldownUntil, a.cooldownSetAt}, {s.pauseUntil, s.pauseSetAt}, {s.sharedPauseUntil, s.sharedPauseSetAt},
	} {
		if c.until.After(now) {
			if !c.set.After(g.at) && c.until.After(g.at) {
				s.viol++
				s.log.Error("bug: slot granted inside a known cooldown; request held back", zap.String("client_id", a.id))
			}
			blocked = true
		}
	}
	if blocked {
		return false
	}
	a.requests++
	if attempt == 0 && g.ru > g.inflight {
		// The download after a redirect: its RU is in flight again.
		g.inflight++
		a.inflight++
		s.inflight++
	}
	if attempt > 0 {
		s.attempts++
		s.jobLocked(g.job).attempts++
	}
	if attempt > 1 {
		s.retries++
	}
	return true
}

// DeadlineError says that a request's earliest slot is after its deadline.
type DeadlineError struct {
	Wait time.Duration // until the earliest slot (scheduler clock)
	Left time.Duration // until the deadline (scheduler clock)
}

func (e *DeadlineError) Error() string {
	return fmt.Sprintf("scheduler: the earliest slot is in %s, after the request's deadline in %s",
		e.Wait.Round(time.Millisecond), e.Left.Round(time.Millisecond))
}

// Unwrap makes errors.Is match ErrDeadline and context.DeadlineExceeded.
func (e *DeadlineError) Unwrap() []error { return []error{ErrDeadline, context.DeadlineExceeded} }

func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

type ctxKey int

const jobKey ctxKey = 0

// WithJob tags the requests made with ctx as job's: waiting requests are
// served round-robin across jobs, and JobStats counts per job.
func WithJob(ctx context.Context, job string) context.Context {
	return context.WithValue(ctx, jobKey, job)
}

func jobOf(ctx context.Context) string {
	j, _ := ctx.Value(jobKey).(string)
	return j
}
