package jobs

import (
	"sync"
	"time"
)

// Tracker holds a job's live state. Runners report progress through it;
// watchers wait on its change signal.
type Tracker struct {
	mu      sync.Mutex
	job     Job
	changed chan struct{} // closed and replaced on every change
	totals  *totals       // the manager's; nil in tests that make trackers alone
}

func newTracker(j *Job, tot *totals) *Tracker {
	return &Tracker{job: *j, changed: make(chan struct{}), totals: tot}
}

// Add adds to the job's progress counters.
func (t *Tracker) Add(d Progress) {
	t.mu.Lock()
	t.job.Progress.add(d)
	t.signalLocked()
	tenant := t.job.TenantID
	t.mu.Unlock()
	t.totals.add(tenant, d)
}

// Fail records an item that could not be backed up and counts it.
func (t *Tracker) Fail(item FailedItem) {
	t.mu.Lock()
	t.job.Progress.ItemsFailed++
	if len(t.job.FailedItems) < MaxFailedItemsListed {
		t.job.FailedItems = append(t.job.FailedItems, item)
	}
	t.signalLocked()
	tenant := t.job.TenantID
	t.mu.Unlock()
	t.totals.add(tenant, Progress{ItemsFailed: 1})
}

// totals sum the progress of every job run since the manager opened, per
// tenant, for monitoring: the work of this process, which only grows
// (a job's own progress resumes from its last saved value after a restart).
type totals struct {
	mu sync.Mutex
	m  map[string]Progress
}

func (t *totals) add(tenant string, d Progress) {
	if t == nil {
		return
	}
	t.mu.Lock()
	p := t.m[tenant]
	p.add(d)
	t.m[tenant] = p
	t.mu.Unlock()
}

func (t *totals) snapshot() map[string]Progress {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Progress, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

func (t *Tracker) signalLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *Tracker) snapshot() Job {
	j, _ := t.snapshotAndSignal()
	return j
}

// snapshotAndSignal returns the job and the channel closed at its next change.
func (t *Tracker) snapshotAndSignal() (Job, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j := t.job
	j.FailedItems = append([]FailedItem(nil), t.job.FailedItems...)
	return j, t.changed
}

func (t *Tracker) start(now time.Time) {
	t.mu.Lock()
	t.job.State = Running
	t.job.Started = now
	t.job.Attempts++
	t.signalLocked()
	t.mu.Unlock()
}

func (t *Tracker) finish(state State, errMsg, restorePoint string, now time.Time) {
	t.mu.Lock()
	t.job.State = state
	t.job.Error = errMsg
	t.job.RestorePointID = restorePoint
	t.job.Ended = now
	t.signalLocked()
	t.mu.Unlock()
}
