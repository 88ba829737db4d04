package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Runner makes one backup. It reports progress through t and returns the
// committed restore point. A run interrupted by a shutdown is started again
// after a restart and must resume from its last committed state.
type Runner interface {
	Run(ctx context.Context, spec Spec, t *Tracker) (Result, error)
}

// Result is the outcome of a run that committed a restore point.
type Result struct {
	RestorePointID string
}

// Config configures a Manager.
type Config struct {
	// Path is the job database file.
	Path string
	// MaxRunning jobs run at once; MaxQueued more may wait.
	MaxRunning int
	MaxQueued  int
	// Runner makes the backups.
	Runner Runner
	// CheckTenant refuses jobs for tenants that cannot run now (e.g. no
	// usable application); nil accepts every tenant.
	CheckTenant func(tenantID string) error
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// PersistEvery is how often a running job's progress is saved; default 5 s.
	PersistEvery time.Duration
}

// Manager queues, runs, tracks and persists jobs.
type Manager struct {
	log   *zap.Logger
	cfg   Config
	store *store

	mu      sync.Mutex
	active  map[string]*entry // queued and running jobs
	queue   []string          // ids of queued jobs, oldest first
	running int
	byState map[State]int // every job in the database, by its current state
	totals  *totals
	closed  bool
	wake    chan struct{} // signals the dispatcher
	wg      sync.WaitGroup
}

// entry is an active job with its tracker and watchers' signal.
type entry struct {
	tracker *Tracker
	cancel  context.CancelCauseFunc // set while running
}

// errShutdown interrupts running jobs on Close; they stay Running on disk
// and resume after a restart.
var errShutdown = errors.New("agent shutting down")

// Open loads the job database and starts the dispatcher. Jobs that were
// queued or running when the agent stopped are queued again, running ones
// first.
func Open(log *zap.Logger, cfg Config) (*Manager, error) {
	if cfg.MaxRunning < 1 {
		return nil, fmt.Errorf("jobs: MaxRunning must be at least 1")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PersistEvery == 0 {
		cfg.PersistEvery = 5 * time.Second
	}
	st, err := openStore(cfg.Path)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		log: log.Named("jobs"), cfg: cfg, store: st,
		active: map[string]*entry{}, wake: make(chan struct{}, 1),
		byState: map[State]int{}, totals: &totals{m: map[string]Progress{}},
	}
	all, err := st.all()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("jobs: load: %w", err)
	}
	var resumed, queued []*Job
	for _, j := range all {
		switch j.State {
		case Running:
			resumed = append(resumed, j)
		case Queued:
			queued = append(queued, j)
		default:
			m.byState[j.State]++
		}
	}
	m.byState[Queued] = len(resumed) + len(queued)
	for _, list := range [][]*Job{resumed, queued} {
		sortByCreated(list)
		for _, j := range list {
			j.State = Queued
			m.active[j.ID] = &entry{tracker: newTracker(j, m.totals)}
			m.queue = append(m.queue, j.ID)
		}
	}
	if len(resumed)+len(queued) > 0 {
		m.log.Info("unfinished jobs queued again", zap.Int("interrupted", len(resumed)), zap.Int("queued", len(queued)))
	}
	m.wg.Add(1)
	go m.dispatch()
	m.kick()
	return m, nil
}

func sortByCreated(list []*Job) {
	for i := 1; i < len(list); i++ {
		for k := i; k > 0 && list[k].Created.Before(list[k-1].Created); k-- {
			list[k], list[k-1] = list[k-1], list[k]
		}
	}
}

func (m *Manager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Submit queues a job. The same id with an equal spec returns the existing
// job; with another spec it fails with ErrConflict.
func (m *Manager) Submit(spec Spec) (Job, error) {
	spec, err := normalize(spec)
	if err != nil {
		return Job{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Job{}, ErrClosed
	}
	existing, err := m.getLocked(spec.ID)
	switch {
	case err == nil && existing.Spec == spec:
		return existing, nil
	case err == nil:
		return Job{}, fmt.Errorf("job %s: %w", spec.ID, ErrConflict)
	case !errors.Is(err, ErrNotFound):
		return Job{}, err
	}
	if m.cfg.CheckTenant != nil {
		if err := m.cfg.CheckTenant(spec.TenantID); err != nil {
			return Job{}, err
		}
	}
	// Free run slots take jobs at once; only the rest wait in the queue.
	if len(m.queue) >= m.cfg.MaxQueued+m.cfg.MaxRunning-m.running {
		return Job{}, &QueueFullError{Queued: len(m.queue), RetryAfter: 30 * time.Second}
	}
	j := &Job{Spec: spec, State: Queued, Created: m.cfg.Now()}
	if err := m.store.put(j); err != nil {
		return Job{}, fmt.Errorf("jobs: persist %s: %w", spec.ID, err)
	}
	m.active[j.ID] = &entry{tracker: newTracker(j, m.totals)}
	m.queue = append(m.queue, j.ID)
	m.byState[Queued]++
	m.kick()
	m.log.Info("job queued", zap.String("job_id", j.ID), zap.String("tenant_id", j.TenantID),
		zap.Stringer("source", j.Source), zap.String("mode", string(j.Mode)))
	return *j, nil
}

// Get returns a job.
func (m *Manager) Get(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.getLocked(id)
}

func (m *Manager) getLocked(id string) (Job, error) {
	if e, ok := m.active[id]; ok {
		return e.tracker.snapshot(), nil
	}
	j, err := m.store.get(id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		return Job{}, err
	}
	return *j, nil
}

// Filter selects jobs in List; zero fields match everything.
type Filter struct {
	TenantID string
	State    State
}

// List returns a page of jobs, newest first, and the next page's token.
func (m *Manager) List(f Filter, pageSize int, pageToken string) ([]Job, string, error) {
	switch {
	case pageSize <= 0:
		pageSize = 100
	case pageSize > 1000:
		pageSize = 1000
	}
	jobs, next, err := m.store.list(pageToken, pageSize, func(j *Job) bool {
		return f.TenantID == "" || j.TenantID == f.TenantID
	})
	if err != nil {
		return nil, "", err
	}
	// Active jobs are fresher in memory than on disk; the state filter
	// applies to the fresh state.
	out := make([]Job, 0, len(jobs))
	m.mu.Lock()
	for _, j := range jobs {
		cur := *j
		if e, ok := m.active[j.ID]; ok {
			cur = e.tracker.snapshot()
		}
		if f.State == "" || cur.State == f.State {
			out = append(out, cur)
		}
	}
	m.mu.Unlock()
	return out, next, nil
}

// Watch calls send with a snapshot of the job now and after each change,
// at most every minInterval, until the job ends (after its final snapshot),
// ctx is done, or send fails.
func (m *Manager) Watch(ctx context.Context, id string, minInterval time.Duration, send func(Job) error) error {
	m.mu.Lock()
	e, active := m.active[id]
	m.mu.Unlock()
	if !active {
		j, err := m.Get(id)
		if err != nil {
			return err
		}
		return send(j) // already ended: one final snapshot
	}
	for {
		j, changed := e.tracker.snapshotAndSignal()
		if err := send(j); err != nil {
			return err
		}
		if j.State.Ended() {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
		if minInterval > 0 {
			t := time.NewTimer(minInterval) // coalesce bursts of progress into one snapshot
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
}

// Cancel cancels a queued or running job and waits, until ctx is done, for
// a running one to stop. An ended job is returned unchanged.
func (m *Manager) Cancel(ctx context.Context, id string) (Job, error) {
	m.mu.Lock()
	e, ok := m.active[id]
	if !ok {
		m.mu.Unlock()
		return m.Get(id)
	}
	j := e.tracker.snapshot()
	if j.State == Queued {
		for i, q := range m.queue {
			if q == id {
				m.queue = append(m.queue[:i], m.queue[i+1:]...)
				break
			}
		}
		delete(m.active, id)
		m.byState[Queued]--
		m.byState[Cancelled]++
		e.tracker.finish(Cancelled, "cancelled before it started", "", m.cfg.Now())
		final := e.tracker.snapshot()
		m.mu.Unlock()
		if err := m.store.put(&final); err != nil {
			return Job{}, err
		}
		m.log.Info("job cancelled", zap.String("job_id", id))
		return final, nil
	}
	e.cancel(context.Canceled)
	m.mu.Unlock()
	for {
		j, changed := e.tracker.snapshotAndSignal()
		if j.State.Ended() {
			return j, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return j, nil // still stopping; the caller sees it running
		}
	}
}

// JobCounts returns the jobs running and waiting.
func (m *Manager) JobCounts() (running, queued int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running, len(m.queue)
}

// States lists every job state, in lifecycle order.
var States = []State{Queued, Running, Succeeded, PartiallySucceeded, Failed, Cancelled}

// StateCounts returns how many jobs of the database are in each state. A
// job interrupted by a shutdown counts as queued again from the next start.
func (m *Manager) StateCounts() map[State]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[State]int, len(States))
	for _, s := range States {
		out[s] = m.byState[s]
	}
	return out
}

// Totals returns the progress of every job run since the manager opened,
// summed per tenant. Unlike a job's progress they only grow.
func (m *Manager) Totals() map[string]Progress {
	return m.totals.snapshot()
}

// RunningJobs returns how many jobs of a tenant are running.
func (m *Manager) RunningJobs(tenantID string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.active {
		if j := e.tracker.snapshot(); j.State == Running && j.TenantID == tenantID {
			n++
		}
	}
	return n
}

// Close stops dispatching, interrupts running jobs (they resume after a
// restart) and waits for them to stop, or for ctx.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	for _, e := range m.active {
		if e.cancel != nil {
			e.cancel(errShutdown)
		}
	}
	m.mu.Unlock()
	m.kick()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("jobs: runners did not stop: %w", ctx.Err())
	}
	return m.store.close()
}

// dispatch starts queued jobs while slots are free.
func (m *Manager) dispatch() {
	defer m.wg.Done()
	for range m.wake {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return
		}
		for m.running < m.cfg.MaxRunning && len(m.queue) > 0 {
			id := m.queue[0]
			m.queue = m.queue[1:]
			e := m.active[id]
			ctx, cancel := context.WithCancelCause(context.Background())
			e.cancel = cancel
			m.running++
			m.byState[Queued]--
			m.byState[Running]++
			e.tracker.start(m.cfg.Now())
			m.wg.Add(1)
			go m.run(ctx, e)
		}
		m.mu.Unlock()
	}
}

func (m *Manager) run(ctx context.Context, e *entry) {
	defer m.wg.Done()
	t := e.tracker
	j := t.snapshot()
	log := m.log.With(zap.String("job_id", j.ID))
	if err := m.store.put(&j); err != nil {
		log.Error("cannot persist job start", zap.Error(err))
	}
	log.Info("job started", zap.Int("attempt", j.Attempts))

	stopPersist := m.persistWhileRunning(t, log)
	res, err := m.cfg.Runner.Run(ctx, j.Spec, t)
	stopPersist()

	now := m.cfg.Now()
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errShutdown):
		// Leave it Running on disk: it resumes after the restart.
		snap := t.snapshot()
		if err := m.store.put(&snap); err != nil {
			log.Error("cannot persist interrupted job", zap.Error(err))
		}
		log.Info("job interrupted by shutdown; it resumes after a restart")
	case errors.Is(cause, context.Canceled):
		t.finish(Cancelled, "cancelled", "", now)
	case err != nil:
		t.finish(Failed, err.Error(), "", now)
	case t.snapshot().Progress.ItemsFailed > 0:
		t.finish(PartiallySucceeded, "", res.RestorePointID, now)
	default:
		t.finish(Succeeded, "", res.RestorePointID, now)
	}

	final := t.snapshot()
	if final.State.Ended() {
		// Persisted before it leaves the active set, so a reader never
		// finds the stale running record on disk.
		if err := m.store.put(&final); err != nil {
			log.Error("cannot persist finished job", zap.Error(err))
		}
		log.Info("job ended", zap.String("state", string(final.State)), zap.String("error", final.Error),
			zap.String("restore_point_id", final.RestorePointID), zap.Any("progress", final.Progress))
	}
	m.mu.Lock()
	m.running--
	if final.State.Ended() {
		delete(m.active, final.ID)
		m.byState[Running]--
		m.byState[final.State]++
	}
	m.mu.Unlock()
	m.kick()
}

// persistWhileRunning saves the job's progress periodically so that a crash
// loses at most PersistEvery of progress counters (never backup data: that
// is the repository's business).
func (m *Manager) persistWhileRunning(t *Tracker, log *zap.Logger) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(m.cfg.PersistEvery)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				snap := t.snapshot()
				if err := m.store.put(&snap); err != nil {
					log.Warn("cannot persist progress", zap.Error(err))
				}
			case <-done:
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}
