package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/repo"
)

// drive backs up one drive: delta crawl from the last committed deltaLink
// (or from scratch), downloads of changed files in parallel, deletions.
func (r *jobRun) drive(ctx context.Context, d graph.Drive) error {
	log := r.log.With(zap.String("drive_id", d.ID))
	link := ""
	if r.base.ID != "" {
		var err error
		link, _, err = r.e.repo.DeltaLink(ctx, r.spec.TenantID, r.source, d.ID)
		if err != nil && !errors.Is(err, repo.ErrNotFound) {
			return err
		}
	}
	full := link == "" || r.forceFull[d.ID]
	c := &crawl{run: r, drive: d, paths: newPathIndex(r, d.ID), flight: &inflight{seq: map[string]uint64{}}}
	if full {
		link = r.client.DeltaStart(d.ID)
		r.forceFull[d.ID] = false
		if err := r.sess.ResetDrive(d.ID); err != nil {
			return err
		}
		c.paths.resetDrive()
	}
	log.Info("crawling drive", zap.String("drive", d.Name), zap.Bool("full", full))

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.e.cfg.Downloads + 1) // +1: the crawl itself
	c.group, c.gctx = g, gctx
	var deltaLink string
	g.Go(func() error {
		var err error
		deltaLink, err = c.pages(gctx, link)
		return err
	})
	if err := g.Wait(); err != nil {
		return err
	}
	return r.sess.SetDeltaLink(d.ID, deltaLink)
}

// crawl is one drive's crawl.
type crawl struct {
	run    *jobRun
	drive  graph.Drive
	paths  *pathIndex
	flight *inflight
	group  *errgroup.Group
	gctx   context.Context
	// recorded: items of this enumeration were recorded, so a resync can
	// no longer reset the drive in this session.
	recorded bool
}

// resyncAfterChangesError: Graph asked for a resync in the middle of an
// enumeration whose items were already recorded; the job attempt restarts
// with the drive crawled in full from the start.
type resyncAfterChangesError struct{ driveID string }

func (e *resyncAfterChangesError) Error() string {
	return "delta resync needed for drive " + e.driveID + " after part of it was recorded"
}

// pages follows delta pages to the deltaLink and returns it.
func (c *crawl) pages(ctx context.Context, link string) (string, error) {
	for {
		page, err := c.run.client.Delta(ctx, link)
		var resync *graph.ResyncError
		if errors.As(err, &resync) {
			if c.recorded {
				return "", &resyncAfterChangesError{driveID: c.drive.ID}
			}
			// The token is dead: enumerate the drive again. Content already
			// stored deduplicates, so this costs metadata, not downloads.
			c.run.log.Warn("delta token expired; crawling the drive in full", zap.String("drive_id", c.drive.ID), zap.String("code", resync.Code))
			if err := c.run.sess.ResetDrive(c.drive.ID); err != nil {
				return "", err
			}
			c.paths.resetDrive()
			c.flight.supersedeAll() // downloads of the old enumeration must not land in the new one
			link = resync.Location
			if link == "" {
				link = c.run.client.DeltaStart(c.drive.ID)
			}
			continue
		}
		if err != nil {
			return "", err
		}
		for _, it := range page.Items {
			c.recorded = true
			if err := c.item(ctx, it); err != nil {
				return "", err
			}
		}
		if page.DeltaLink != "" {
			return page.DeltaLink, nil
		}
		link = page.NextLink
	}
}

// item handles one delta entry.
func (c *crawl) item(ctx context.Context, it graph.Item) error {
	r := c.run
	c.paths.saw(it.ID)
	switch {
	case it.Root:
		// The root is recorded as the folder "/" so that incremental runs,
		// whose pages may not repeat it, find it as a parent.
		c.paths.setRoot(it.ID)
		return r.sess.PutItem(ctx, repo.Item{DriveID: c.drive.ID, ItemID: it.ID, Path: "/", ModTime: it.Modified, ETag: it.ETag, Folder: true})
	case it.Deleted:
		c.flight.supersede(it.ID)
		c.paths.forget(it.ID)
		r.tracker.Add(jobs.Progress{ItemsDeleted: 1})
		return r.sess.DeleteItem(ctx, c.drive.ID, it.ID)
	}
	parent, err := c.paths.path(ctx, it.ParentID)
	if err != nil {
		return err
	}
	p := path.Join(parent, it.Name)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	item := repo.Item{
		DriveID: c.drive.ID, ItemID: it.ID, Path: p, Name: it.Name, Size: it.Size,
		ModTime: it.Modified, ETag: it.ETag, CTag: it.CTag, QuickXorHash: it.QuickXorHash,
	}
	r.tracker.Add(jobs.Progress{ItemsDiscovered: 1})
	if it.Folder || it.Package || !it.File {
		c.flight.supersede(it.ID)
		if err := c.paths.moved(ctx, it.ID, p); err != nil {
			return err
		}
		c.paths.setFolder(it.ID, p)
		item.Folder = true
		item.Size = 0
		r.tracker.Add(jobs.Progress{ItemsBackedUp: 1})
		return r.sess.PutItem(ctx, item)
	}
	if it.Malware {
		r.tracker.Fail(jobs.FailedItem{ItemID: it.ID, Path: p, Reason: "flagged as malware by Microsoft; content cannot be downloaded"})
		return nil
	}
	// Unchanged content (same cTag or quickXorHash as a stored version) is
	// recorded without downloading: renames and moves cost no data.
	if prev, ok, err := r.sess.LookupVersion(ctx, c.drive.ID, it.ID, it.CTag, it.QuickXorHash); err != nil {
		return err
	} else if ok {
		c.flight.supersede(it.ID)
		item.Size, item.SHA256, item.Chunks = prev.Size, prev.SHA256, prev.Chunks
		r.tracker.Add(jobs.Progress{ItemsBackedUp: 1})
		return r.sess.PutItem(ctx, item)
	}
	seq := c.flight.start(it.ID)
	c.group.Go(func() error { return c.download(c.gctx, item, seq) })
	return nil
}

// download fetches one file, verifies it and records it. Failures of the
// item alone are reported on the job and the crawl goes on; failures of the
// repository or a cancelled job stop the drive.
func (c *crawl) download(ctx context.Context, item repo.Item, seq uint64) error {
	r := c.run
	var lastErr error
	for attempt := 1; attempt <= r.e.cfg.MaxDownloadAttempts; attempt++ {
		rd := newResumingReader(ctx, r.client, item.DriveID, item.ItemID, item.Size, r.e.cfg.MaxDownloadAttempts)
		stored, err := r.sess.Store(ctx, rd)
		rd.Close()
		r.tracker.Add(jobs.Progress{BytesDownloaded: rd.read, BytesStored: stored.NewBytes})
		if err == nil {
			err = rd.verify(item.QuickXorHash)
		}
		switch {
		case err == nil:
			item.Size, item.SHA256, item.Chunks = stored.Size, stored.SHA256, stored.Chunks
			return c.flight.finish(item.ItemID, seq, func() error {
				r.tracker.Add(jobs.Progress{ItemsBackedUp: 1})
				return r.sess.PutItem(ctx, item)
			})
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, graph.ErrNotFound):
			return c.flight.finish(item.ItemID, seq, func() error {
				r.tracker.Fail(jobs.FailedItem{ItemID: item.ItemID, Path: item.Path, Reason: "deleted during the backup"})
				return nil
			})
		case errors.Is(err, errSourceRead), errors.Is(err, errContentMismatch):
			lastErr = err
			r.log.Warn("download failed; retrying", zap.String("item_id", item.ItemID), zap.Int("attempt", attempt), zap.Error(err))
			continue
		default:
			return fmt.Errorf("store %s: %w", item.Path, err) // the repository failed
		}
	}
	return c.flight.finish(item.ItemID, seq, func() error {
		r.tracker.Fail(jobs.FailedItem{ItemID: item.ItemID, Path: item.Path, Reason: lastErr.Error()})
		return nil
	})
}

var (
	// errSourceRead wraps failures reading from Microsoft 365 (after resumes).
	errSourceRead = errors.New("reading from Microsoft 365 failed")
	// errContentMismatch: the bytes received do not match Graph's size or hash.
	errContentMismatch = errors.New("downloaded content does not match")
)
