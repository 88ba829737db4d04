package jobs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

const tenant = "11111111-1111-1111-1111-111111111111"

func spec(id string) Spec {
	return Spec{ID: id, TenantID: tenant, Source: Source{Kind: OneDrive, Ref: "alice@contoso.com"}}
}

// fakeRunner runs jobs under the test's control: each run reports what
// script[jobID] says, then waits for release[jobID] (if any) or its context.
type fakeRunner struct {
	mu      sync.Mutex
	started map[string]int
	release map[string]chan struct{}
	results map[string]error
	failed  map[string]int
	startCh chan string
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{started: map[string]int{}, release: map[string]chan struct{}{},
		results: map[string]error{}, failed: map[string]int{}, startCh: make(chan string, 100)}
}

func (r *fakeRunner) hold(id string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	r.release[id] = ch
	return ch
}

func (r *fakeRunner) Run(ctx context.Context, s Spec, t *Tracker) (Result, error) {
	r.mu.Lock()
	r.started[s.ID]++
	ch, err, failed := r.release[s.ID], r.results[s.ID], r.failed[s.ID]
	r.mu.Unlock()
	r.startCh <- s.ID
	t.Add(Progress{ItemsDiscovered: 10, ItemsBackedUp: 10 - int64(failed), BytesDownloaded: 1000})
	for i := range failed {
		t.Fail(FailedItem{ItemID: fmt.Sprint(i), Path: "/bad", Reason: "flagged as malware"})
	}
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	if err != nil {
		return Result{}, err
	}
	return Result{RestorePointID: "rp-" + s.ID}, nil
}

func openManager(t *testing.T, path string, r Runner, maxRunning, maxQueued int) *Manager {
	t.Helper()
	m, err := Open(zap.NewNop(), Config{Path: path, MaxRunning: maxRunning, MaxQueued: maxQueued, Runner: r})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func closeManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitEnded watches a job to its end and returns the final snapshot.
func waitEnded(t *testing.T, m *Manager, id string) Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var last Job
	if err := m.Watch(ctx, id, 0, func(j Job) error { last = j; return nil }); err != nil {
		t.Fatalf("watch %s: %v", id, err)
	}
	return last
}

// waitStateCounts waits until the manager counts want (states absent from
// want count 0): a job's final state is counted just after watchers see it.
func waitStateCounts(t *testing.T, m *Manager, want map[State]int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := m.StateCounts()
		same := len(got) == len(States)
		for _, s := range States {
			same = same && got[s] == want[s]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state counts = %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSubmitValidation(t *testing.T) {
	m := openManager(t, filepath.Join(t.TempDir(), "jobs.db"), newFakeRunner(), 1, 10)
	defer closeManager(t, m)
	tests := []struct {
		name  string
		spec  Spec
		field string
	}{
		{"empty id", Spec{TenantID: tenant, Source: Source{OneDrive, "a@b.c"}}, "job_id"},
		{"id with slash", Spec{ID: "a/b", TenantID: tenant, Source: Source{OneDrive, "a@b.c"}}, "job_id"},
		{"tenant not a guid", Spec{ID: "j", TenantID: "contoso", Source: Source{OneDrive, "a@b.c"}}, "tenant_id"},
		{"no source", Spec{ID: "j", TenantID: tenant}, "source"},
		{"bad user", Spec{ID: "j", TenantID: tenant, Source: Source{OneDrive, "alice"}}, "onedrive.user"},
		{"bad site", Spec{ID: "j", TenantID: tenant, Source: Source{SharePointSite, "http://x/sites/a"}}, "sharepoint_site.site"},
		{"bad mode", Spec{ID: "j", TenantID: tenant, Source: Source{OneDrive, "a@b.c"}, Mode: "differential"}, "mode"},
	}
	for _, tt := range tests {
		_, err := m.Submit(tt.spec)
		var ise *InvalidSpecError
		if !errors.As(err, &ise) || ise.Field != tt.field {
			t.Errorf("%s: err = %v, want invalid %s", tt.name, err, tt.field)
		}
	}
	for _, ok := range []Source{
		{SharePointSite, "https://contoso.sharepoint.com/sites/finance"},
		{SharePointSite, "contoso.sharepoint.com,7e7b1c2a-0000-4000-8000-000000000001,0a1b2c3d-0000-4000-8000-000000000002"},
		{OneDrive, "7e7b1c2a-0000-4000-8000-000000000001"},
	} {
		s := Spec{ID: "ok-" + string(ok.Kind) + fmt.Sprint(len(ok.Ref)), TenantID: tenant, Source: ok}
		if _, err := m.Submit(s); err != nil {
			t.Errorf("valid source %v refused: %v", ok, err)
		}
	}
}

func TestSubmitIdempotentAndRuns(t *testing.T) {
	r := newFakeRunner()
	m := openManager(t, filepath.Join(t.TempDir(), "jobs.db"), r, 2, 10)
	defer closeManager(t, m)

	first, err := m.Submit(spec("j1"))
	if err != nil {
		t.Fatal(err)
	}
	if first.Mode != Incremental {
		t.Errorf("default mode = %q", first.Mode)
	}
	again, err := m.Submit(spec("j1"))
	if err != nil || !again.Created.Equal(first.Created) {
		t.Fatalf("resubmit: %v, %v", again, err)
	}
	other := spec("j1")
	other.Mode = Full
	if _, err := m.Submit(other); !errors.Is(err, ErrConflict) {
		t.Fatalf("same id, other spec: %v", err)
	}
	final := waitEnded(t, m, "j1")
	if final.State != Succeeded || final.RestorePointID != "rp-j1" || final.Progress.ItemsBackedUp != 10 || final.Ended.IsZero() {
		t.Errorf("final = %+v", final)
	}
	if r.started["j1"] != 1 {
		t.Errorf("ran %d times", r.started["j1"])
	}
}

func TestOutcomes(t *testing.T) {
	r := newFakeRunner()
	r.failed["partial"] = 2
	r.results["broken"] = errors.New("site not found")
	m := openManager(t, filepath.Join(t.TempDir(), "jobs.db"), r, 3, 10)
	defer closeManager(t, m)
	tests := []struct {
		id    string
		state State
		check func(Job) bool
	}{
		{"partial", PartiallySucceeded, func(j Job) bool {
			return len(j.FailedItems) == 2 && j.Progress.ItemsFailed == 2 && j.RestorePointID != ""
		}},
		{"broken", Failed, func(j Job) bool { return j.Error == "site not found" && j.RestorePointID == "" }},
		{"fine", Succeeded, func(j Job) bool { return j.Error == "" }},
	}
	for _, tt := range tests {
		if _, err := m.Submit(spec(tt.id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		j := waitEnded(t, m, tt.id)
		if j.State != tt.state || !tt.check(j) {
			t.Errorf("%s: %+v", tt.id, j)
		}
	}
	waitStateCounts(t, m, map[State]int{Succeeded: 1, PartiallySucceeded: 1, Failed: 1})
	// Every run's progress counts, the failed job's included.
	want := Progress{ItemsDiscovered: 30, ItemsBackedUp: 28, ItemsFailed: 2, BytesDownloaded: 3000}
	if got := m.Totals(); len(got) != 1 || got[tenant] != want {
		t.Errorf("totals = %+v, want %+v for %s", got, want, tenant)
	}
}

func TestQueueLimitAndCancel(t *testing.T) {
	r := newFakeRunner()
	r.hold("running")
	m := openManager(t, filepath.Join(t.TempDir(), "jobs.db"), r, 1, 1)
	defer closeManager(t, m)

	if _, err := m.Submit(spec("running")); err != nil {
		t.Fatal(err)
	}
	<-r.startCh
	if _, err := m.Submit(spec("waiting")); err != nil {
		t.Fatal(err)
	}
	_, err := m.Submit(spec("refused"))
	var qf *QueueFullError
	if !errors.As(err, &qf) || qf.RetryAfter <= 0 {
		t.Fatalf("third job: %v, want QueueFullError with RetryAfter", err)
	}
	if running, queued := m.JobCounts(); running != 1 || queued != 1 {
		t.Errorf("counts = %d running, %d queued", running, queued)
	}
	waitStateCounts(t, m, map[State]int{Running: 1, Queued: 1})
	if n := m.RunningJobs(tenant); n != 1 {
		t.Errorf("RunningJobs = %d", n)
	}

	j, err := m.Cancel(context.Background(), "waiting")
	if err != nil || j.State != Cancelled {
		t.Fatalf("cancel queued: %+v, %v", j, err)
	}
	j, err = m.Cancel(context.Background(), "running")
	if err != nil || j.State != Cancelled || j.Ended.IsZero() {
		t.Fatalf("cancel running: %+v, %v", j, err)
	}
	if r.started["waiting"] != 0 {
		t.Error("a cancelled queued job ran")
	}
	again, err := m.Cancel(context.Background(), "running")
	if err != nil || again.State != Cancelled {
		t.Errorf("cancel ended job: %+v, %v", again, err)
	}
	if _, err := m.Cancel(context.Background(), "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("cancel unknown: %v", err)
	}
	waitStateCounts(t, m, map[State]int{Cancelled: 2})
}

func TestListPagingAndFilters(t *testing.T) {
	r := newFakeRunner()
	r.results["j03"] = errors.New("boom")
	clock := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); clock = clock.Add(time.Second); return clock }
	m, err := Open(zap.NewNop(), Config{Path: filepath.Join(t.TempDir(), "jobs.db"), MaxRunning: 2, MaxQueued: 100, Runner: r, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	defer closeManager(t, m)
	other := "22222222-2222-2222-2222-222222222222"
	for i := range 7 {
		s := spec(fmt.Sprintf("j%02d", i))
		if i == 5 {
			s.TenantID = other
		}
		if _, err := m.Submit(s); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 7 {
		waitEnded(t, m, fmt.Sprintf("j%02d", i))
	}

	var ids []string
	token := ""
	for pages := 0; ; pages++ {
		page, next, err := m.List(Filter{TenantID: tenant}, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page {
			ids = append(ids, j.ID)
		}
		if next == "" {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		token = next
	}
	want := "[j06 j04 j03 j02 j01 j00]"
	if fmt.Sprint(ids) != want {
		t.Errorf("tenant pages = %v, want %s", ids, want)
	}
	failed, _, err := m.List(Filter{State: Failed}, 10, "")
	if err != nil || len(failed) != 1 || failed[0].ID != "j03" {
		t.Errorf("failed filter = %v, %v", failed, err)
	}
	if _, _, err := m.List(Filter{}, 10, "garbage!"); !errors.Is(err, ErrBadPageToken) {
		t.Errorf("bad token: %v", err)
	}
}

func TestWatchStreamsProgressToTheEnd(t *testing.T) {
	r := newFakeRunner()
	release := r.hold("w")
	m := openManager(t, filepath.Join(t.TempDir(), "jobs.db"), r, 1, 10)
	defer closeManager(t, m)
	if _, err := m.Submit(spec("w")); err != nil {
		t.Fatal(err)
	}
	var snaps []Job
	done := make(chan error, 1)
	go func() {
		done <- m.Watch(context.Background(), "w", 0, func(j Job) error {
			snaps = append(snaps, j)
			if j.Progress.ItemsBackedUp == 10 && j.State == Running {
				close(release)
			}
			return nil
		})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	last := snaps[len(snaps)-1]
	if last.State != Succeeded || len(snaps) < 2 {
		t.Errorf("%d snapshots, last %+v", len(snaps), last)
	}
	// Watching an ended job gives its final snapshot at once.
	var once []Job
	if err := m.Watch(context.Background(), "w", 0, func(j Job) error { once = append(once, j); return nil }); err != nil || len(once) != 1 || once[0].State != Succeeded {
		t.Errorf("watch ended job: %v, %v", once, err)
	}
}

// TestRestartResumesInterruptedJobs: a shutdown interrupts a running job;
// after reopening, it runs again and finishes; ended jobs are still listed.
func TestRestartResumesInterruptedJobs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	r := newFakeRunner()
	m := openManager(t, path, r, 1, 10)
	if _, err := m.Submit(spec("done")); err != nil {
		t.Fatal(err)
	}
	waitEnded(t, m, "done")
	r.hold("long")
	if _, err := m.Submit(spec("long")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(spec("later")); err != nil {
		t.Fatal(err)
	}
	for id := range r.startCh {
		if id == "long" {
			break
		}
	}
	closeManager(t, m)

	r2 := newFakeRunner()
	m2 := openManager(t, path, r2, 1, 10)
	defer closeManager(t, m2)
	long := waitEnded(t, m2, "long")
	if long.State != Succeeded || long.Attempts != 2 {
		t.Errorf("resumed job = %+v, want succeeded on attempt 2", long)
	}
	if later := waitEnded(t, m2, "later"); later.State != Succeeded {
		t.Errorf("queued job after restart = %+v", later)
	}
	if done, err := m2.Get("done"); err != nil || done.State != Succeeded {
		t.Errorf("finished job after restart: %+v, %v", done, err)
	}
	// Counts cover the whole database; totals only this process's work.
	waitStateCounts(t, m2, map[State]int{Succeeded: 3})
	if got := m2.Totals()[tenant].ItemsBackedUp; got != 20 {
		t.Errorf("items backed up since the restart = %d, want 20", got)
	}
}
