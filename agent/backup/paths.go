package backup

import (
	"context"
	"errors"
	"strings"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/repo"
)

// pathIndex resolves parent ids to paths. Delta gives items by id with a
// parent id and no path. A folder met in the crawl is in the restore point
// being staged, which the index asks; recent folders are also kept in memory
// (Config.FolderCache of them, about 200 bytes each), so that memory does
// not grow with the drive. A parent not met (yet) in this crawl is asked of
// Graph: the base restore point's path could be stale, since a renamed
// ancestor may come later in the crawl.
type pathIndex struct {
	run      *jobRun
	driveID  string
	root     string
	folders  map[string]string // recently met folders: id → path ("" for the root)
	cacheMax int
	// renames maps folder paths of the base restore point to their new
	// paths, for folders renamed or moved in this run: delta reports the
	// folder but not its unchanged descendants, whose base paths must be
	// translated.
	renames map[string]string
	reset   bool // the drive was reset in this run: the base does not apply
	// seen holds the items this incremental run already recorded (or
	// deleted), which a folder's move must not overwrite with their base
	// versions. Incremental runs only: their size is that of the changes.
	seen map[string]bool
}

func newPathIndex(r *jobRun, driveID string) *pathIndex {
	return &pathIndex{run: r, driveID: driveID, folders: map[string]string{}, cacheMax: r.e.cfg.FolderCache,
		renames: map[string]string{}, seen: map[string]bool{}}
}

// resetDrive forgets everything: the drive is being enumerated from scratch,
// so the base restore point's paths no longer apply.
func (p *pathIndex) resetDrive() {
	p.root = ""
	clear(p.folders)
	clear(p.renames)
	clear(p.seen)
	p.reset = true
}

// saw records that the run recorded or deleted item id.
func (p *pathIndex) saw(id string) {
	if p.run.base.ID != "" && !p.reset {
		p.seen[id] = true
	}
}

// translate maps a base path through the renames of this run, by the
// longest renamed ancestor (so nested renames compose).
func (p *pathIndex) translate(path string) string {
	best := ""
	for old := range p.renames {
		if len(old) > len(best) && (path == old || strings.HasPrefix(path, old+"/")) {
			best = old
		}
	}
	if best == "" {
		return path
	}
	return p.renames[best] + path[len(best):]
}

// basePath returns the path of item id in the base restore point, or "" if
// it was not there (or the drive was reset).
func (p *pathIndex) basePath(ctx context.Context, id string) (string, error) {
	if p.run.base.ID == "" || p.reset {
		return "", nil
	}
	it, err := p.run.e.repo.ItemInDrive(ctx, p.run.base.ID, p.driveID, id)
	if errors.Is(err, repo.ErrNotFound) {
		return "", nil
	}
	return it.Path, err
}

// moved records that folder id is now at path and, if its base path was
// another, re-records its unchanged descendants at their new paths (by
// reference: no content moves).
func (p *pathIndex) moved(ctx context.Context, id, path string) error {
	old, err := p.basePath(ctx, id)
	if err != nil || old == "" || old == "/" || p.translate(old) == path {
		return err
	}
	p.renames[old] = path
	r := p.run
	token := ""
	for {
		items, next, err := r.e.repo.ListItems(ctx, repo.ListItemsRequest{RestorePoint: r.base.ID, PathPrefix: old + "/", PageSize: 1000, PageToken: token})
		if err != nil {
			return err
		}
		for _, it := range items {
			if it.DriveID != p.driveID || p.seen[it.ItemID] {
				continue
			}
			it.Path = p.translate(it.Path)
			if err := r.sess.PutItem(ctx, it); err != nil {
				return err
			}
		}
		if token = next; token == "" {
			return nil
		}
	}
}

func (p *pathIndex) setRoot(id string) {
	p.root = id
	p.setFolder(id, "")
}

// setFolder caches the path of a folder met in the crawl, evicting an
// arbitrary other one when the cache is full.
func (p *pathIndex) setFolder(id, path string) {
	if _, ok := p.folders[id]; !ok && len(p.folders) >= p.cacheMax {
		for k := range p.folders {
			delete(p.folders, k)
			break
		}
	}
	p.folders[id] = path
}

func (p *pathIndex) forget(id string) { delete(p.folders, id) }

// path returns the path of folder id ("" for the root).
func (p *pathIndex) path(ctx context.Context, id string) (string, error) {
	if id == "" || id == p.root {
		return "", nil
	}
	if path, ok := p.folders[id]; ok {
		return path, nil
	}
	// Met in this crawl (in a full crawl, whatever the restore point holds
	// was): the restore point being staged has its current path.
	if p.run.base.ID == "" || p.reset || p.seen[id] {
		path, ok, err := p.run.sess.ItemPath(ctx, p.driveID, id)
		if err != nil {
			return "", err
		}
		if ok {
			p.setFolder(id, path)
			return path, nil
		}
	}
	// Delta gives no order guarantee: a child may come before its parent
	// (a changed ancestor moves to the end of the change log). Ask Graph
	// for the parent's path: one request per such folder.
	path, err := p.run.client.ItemPath(ctx, p.driveID, id)
	switch {
	case err == nil:
	case errors.Is(err, graph.ErrNotFound):
		// The parent was deleted meanwhile; its delete comes later in the
		// crawl. Keep the item findable rather than fail the job.
		p.run.log.Warn("parent folder gone; item kept under /_orphaned", zap.String("drive_id", p.driveID), zap.String("parent_id", id))
		path = "/_orphaned/" + id
	default:
		return "", err
	}
	p.setFolder(id, path)
	return path, nil
}
