// Package backup is the backup engine: it resolves a job's source to drives,
// crawls each drive with delta (full the first time, incremental after),
// downloads changed files with bounded parallelism while hashing and
// chunking them as they stream, records deletions, and commits the restore
// point with the drives' new deltaLinks only when every item is durable.
package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/repo"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// Clients gives the engine a tenant's Graph client (whose requests go
// through the tenant's scheduler) and what the scheduler counted for a job.
type Clients interface {
	Client(ctx context.Context, tenantID string) (*graph.Client, error)
	JobStats(tenantID, jobID string) scheduler.JobStats
	ForgetJob(tenantID, jobID string)
}

// Config configures an Engine.
type Config struct {
	// Downloads is how many files one job downloads at once; default 8.
	Downloads int
	// MaxDownloadAttempts bounds how often one file's download is resumed or
	// restarted before the item is reported as failed; default 5.
	MaxDownloadAttempts int
	// FolderCache is how many folder paths a crawl keeps in memory; others
	// are read back from the restore point being staged. Default 4096.
	FolderCache int
}

// Engine runs backup jobs; it implements jobs.Runner.
type Engine struct {
	log     *zap.Logger
	cfg     Config
	repo    *repo.Repository
	clients Clients
}

// New returns an engine writing into r.
func New(log *zap.Logger, cfg Config, r *repo.Repository, clients Clients) *Engine {
	if cfg.Downloads <= 0 {
		cfg.Downloads = 8
	}
	if cfg.MaxDownloadAttempts <= 0 {
		cfg.MaxDownloadAttempts = 5
	}
	if cfg.FolderCache <= 0 {
		cfg.FolderCache = 4096
	}
	return &Engine{log: log.Named("backup"), cfg: cfg, repo: r, clients: clients}
}

// SourceKey is the repository's key for a job source. Restore points of a
// source are grouped by it, so a source should always be submitted in the
// same form (UPN or object id; site URL or site id).
func SourceKey(s jobs.Source) string {
	return string(s.Kind) + ":" + strings.ToLower(s.Ref)
}

// listDrivePrefix marks the pseudo-drive of a SharePoint list in the repository.
const listDrivePrefix = "list:"

// Run backs up one job's source into a new restore point.
func (e *Engine) Run(ctx context.Context, spec jobs.Spec, t *jobs.Tracker) (jobs.Result, error) {
	log := e.log.With(zap.String("job_id", spec.ID), zap.String("tenant_id", spec.TenantID), zap.Stringer("source", spec.Source))
	client, err := e.clients.Client(ctx, spec.TenantID)
	if err != nil {
		return jobs.Result{}, err
	}
	// The scheduler shares the tenant fairly between jobs and counts each
	// job's throttled requests, which the job reports as it goes.
	ctx = scheduler.WithJob(ctx, spec.ID)
	stopThrottled := e.reportThrottled(spec, t)
	defer func() {
		stopThrottled()
		e.clients.ForgetJob(spec.TenantID, spec.ID)
	}()
	source := SourceKey(spec.Source)
	for try := 1; ; try++ {
		res, err := e.leased(ctx, log, spec, t, client, source)
		if !errors.Is(err, errLeaseLost) || ctx.Err() != nil || try == maxLeaseTries {
			return res, err
		}
		// Redis restarted (losing the lease) or this agent stalled past
		// it: nothing was committed. Take the lease again (after whoever
		// has it now) and start over from the newest restore point; the
		// chunks stored so far are reused.
		log.Warn("lost the source's lease; taking it again and starting over", zap.Int("try", try))
	}
}

// errLeaseLost ends a job attempt whose source lease was lost.
var errLeaseLost = fmt.Errorf("source lease lost: %w", repo.ErrBusy)

// maxLeaseTries bounds how often a job starts over after losing its lease.
const maxLeaseTries = 3

// leased runs the job under the source's lease: one writer per source,
// across every agent sharing the repository. Taking the lease also brings
// the catalogue up to date with what the others wrote.
func (e *Engine) leased(ctx context.Context, log *zap.Logger, spec jobs.Spec, t *jobs.Tracker, client *graph.Client, source string) (jobs.Result, error) {
	lease, err := e.repo.AcquireSource(ctx, spec.TenantID, source)
	if err != nil {
		return jobs.Result{}, err
	}
	defer lease.Release()
	lctx, stopLease := context.WithCancelCause(ctx)
	defer stopLease(nil)
	go func() {
		select {
		case <-lease.Lost():
			log.Error("lost the source's lease; the attempt stops without committing")
			stopLease(errLeaseLost)
		case <-lctx.Done():
		}
	}()
	res, err := e.run(lctx, log, spec, t, client, lease, source)
	if err != nil && !errors.Is(err, errLeaseLost) && (errors.Is(context.Cause(lctx), errLeaseLost) || errors.Is(err, repo.ErrLeaseLost)) {
		return res, fmt.Errorf("%w (%v)", errLeaseLost, err)
	}
	return res, err
}

// run resolves the source's drives and makes its restore point.
func (e *Engine) run(ctx context.Context, log *zap.Logger, spec jobs.Spec, t *jobs.Tracker, client *graph.Client,
	lease *repo.SourceLease, source string) (jobs.Result, error) {
	var (
		drives []graph.Drive
		site   graph.Site
		err    error
	)
	switch spec.Source.Kind {
	case jobs.OneDrive:
		d, err := client.UserDrive(ctx, spec.Source.Ref)
		switch {
		case errors.Is(err, graph.ErrNoOneDrive):
			// Not an error of the job: there is nothing to back up.
			log.Info("OneDrive not provisioned; the restore point is empty")
		case err != nil:
			return jobs.Result{}, err
		default:
			drives = []graph.Drive{d}
		}
	case jobs.SharePointSite:
		if site, err = client.ResolveSite(ctx, spec.Source.Ref); err != nil {
			return jobs.Result{}, err
		}
		if drives, err = client.SiteDrives(ctx, site.ID); err != nil {
			return jobs.Result{}, err
		}
	default:
		return jobs.Result{}, fmt.Errorf("unknown source kind %q", spec.Source.Kind)
	}

	var base repo.RestorePoint
	if spec.Mode != jobs.Full {
		base, err = e.repo.LatestRestorePoint(ctx, spec.TenantID, source)
		if err != nil && !errors.Is(err, repo.ErrNotFound) {
			return jobs.Result{}, err
		}
	}
	forceFull := map[string]bool{}
	for attempt := 1; ; attempt++ {
		res, err := e.attempt(ctx, log, spec, t, client, lease, source, base, site, drives, forceFull)
		var resync *resyncAfterChangesError
		if !errors.As(err, &resync) || attempt == maxAttempts {
			return res, err
		}
		// Rare: Graph wanted a resync mid-enumeration. Nothing is committed;
		// the next attempt reuses every stored chunk.
		log.Warn("restarting the job attempt to crawl a drive in full", zap.String("drive_id", resync.driveID), zap.Int("attempt", attempt))
		forceFull[resync.driveID] = true
	}
}

// maxAttempts bounds the restarts of a job after mid-crawl resyncs.
const maxAttempts = 3

// attempt makes one restore point: all drives and lists in one session.
func (e *Engine) attempt(ctx context.Context, log *zap.Logger, spec jobs.Spec, t *jobs.Tracker, client *graph.Client,
	lease *repo.SourceLease, source string, base repo.RestorePoint, site graph.Site, drives []graph.Drive, forceFull map[string]bool) (jobs.Result, error) {
	sess, err := e.repo.NewSession(ctx, repo.SessionOptions{Tenant: spec.TenantID, Source: source, Base: base.ID, Label: spec.ID, Lease: lease})
	if err != nil {
		return jobs.Result{}, err
	}
	committed := false
	defer func() {
		if !committed {
			if err := sess.Abort(); err != nil {
				log.Warn("abort session", zap.Error(err))
			}
		}
	}()

	run := &jobRun{e: e, log: log, client: client, sess: sess, tracker: t, spec: spec, source: source, base: base, forceFull: forceFull}
	current := map[string]bool{}
	for _, d := range drives {
		current[d.ID] = true
		if err := run.drive(ctx, d); err != nil {
			return jobs.Result{}, fmt.Errorf("drive %s (%s): %w", d.Name, d.ID, err)
		}
	}
	if spec.Source.Kind == jobs.SharePointSite {
		lists, err := client.Lists(ctx, site.ID)
		if err != nil {
			return jobs.Result{}, err
		}
		for _, l := range lists {
			current[listDrivePrefix+l.ID] = true
			if err := run.list(ctx, site.ID, l); err != nil {
				return jobs.Result{}, fmt.Errorf("list %s: %w", l.DisplayName, err)
			}
		}
	}
	// Libraries and lists that no longer exist leave the restore point.
	for _, d := range base.Drives {
		if !current[d.ID] {
			if err := sess.RemoveDrive(d.ID); err != nil {
				return jobs.Result{}, err
			}
		}
	}
	rp, err := sess.Commit(ctx)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("commit restore point: %w", err)
	}
	committed = true
	log.Info("restore point committed", zap.String("restore_point_id", string(rp.ID)),
		zap.Int64("items", rp.Items), zap.Int64("bytes", rp.Bytes), zap.Int64("items_written", rp.ItemsWritten))
	return jobs.Result{RestorePointID: string(rp.ID)}, nil
}

// reportThrottled copies the scheduler's throttled count for the job into
// its progress every second, and once more when stopped.
func (e *Engine) reportThrottled(spec jobs.Spec, t *jobs.Tracker) (stop func()) {
	var reported int64
	sync := func() {
		n := e.clients.JobStats(spec.TenantID, spec.ID).Throttled
		if n > reported {
			t.Add(jobs.Progress{ThrottledRequests: n - reported})
			reported = n
		}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				sync()
			case <-done:
				sync()
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}

// jobRun is the state of one job's run.
type jobRun struct {
	e       *Engine
	log     *zap.Logger
	client  *graph.Client
	sess    *repo.Session
	tracker *jobs.Tracker
	spec    jobs.Spec
	source  string
	base    repo.RestorePoint
	// forceFull names drives to crawl in full whatever their deltaLink.
	forceFull map[string]bool
}

// list stores every item of a SharePoint list as its JSON, in a pseudo-drive
// of its own. Lists have no delta: each run reads them whole.
func (r *jobRun) list(ctx context.Context, siteID string, l graph.List) error {
	driveID := listDrivePrefix + l.ID
	if err := r.sess.ResetDrive(driveID); err != nil {
		return err
	}
	return r.client.ListItems(ctx, siteID, l.ID, func(it graph.ListItem) error {
		r.tracker.Add(jobs.Progress{ItemsDiscovered: 1})
		item := repo.Item{
			DriveID: driveID, ItemID: it.ID, Name: it.ID + ".json",
			Path: "/lists/" + l.Name + "/" + it.ID + ".json", ModTime: it.Modified, ETag: it.ETag,
		}
		stored, err := r.sess.Store(ctx, bytes.NewReader(it.JSON))
		if err != nil {
			return err
		}
		item.Size, item.SHA256, item.Chunks = stored.Size, stored.SHA256, stored.Chunks
		r.tracker.Add(jobs.Progress{ItemsBackedUp: 1, BytesDownloaded: int64(len(it.JSON)), BytesStored: stored.NewBytes})
		return r.sess.PutItem(ctx, item)
	})
}

// inflight tracks files being downloaded so that an item repeated later in
// the crawl (delta may repeat items; the last one wins) is not overwritten
// by its older version finishing late.
type inflight struct {
	mu  sync.Mutex
	seq map[string]uint64
	n   uint64
}

// start registers a download of itemID and returns its sequence number.
func (f *inflight) start(itemID string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.seq[itemID] = f.n
	return f.n
}

// supersede marks itemID's running download (if any) as outdated: it will
// find no entry when it finishes.
func (f *inflight) supersede(itemID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.seq, itemID)
}

// supersedeAll marks every running download as outdated.
func (f *inflight) supersedeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.seq)
}

// finish runs record if seq is still the item's latest, and ends the download.
func (f *inflight) finish(itemID string, seq uint64, record func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur, ok := f.seq[itemID]; !ok || cur != seq {
		return nil
	}
	delete(f.seq, itemID)
	return record()
}
