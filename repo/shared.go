package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/lease"
	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// A repository may be shared by several agents (an S3 store, each agent
// with its own local catalogue). What keeps them apart:
//
//   - Packs and index files are immutable and named by content or at
//     random; agents write them side by side. Each agent reads the index
//     files the others wrote (refreshIndex) before it starts a session.
//   - Restore points of one source are written by the holder of the
//     source's lease only (AcquireSource), and published as manifests; the
//     others import them (Sync).
//   - Prune runs under the "prune" lease and only while no other agent
//     holds a source lease; an agent starting a session waits for a
//     running prune. Both take their lease first and look for the other's
//     second, so at least one of them sees the other.
//
// The leases come from Options.Leases: in-process by default, Redis for
// agents that share a store.

const (
	sourceLeasePrefix = "source/"
	pruneLease        = "prune"
	defaultLeaseTTL   = time.Minute
)

var (
	// ErrBusy: another agent holds what the operation needs (a prune while
	// others write, or a source another agent is backing up).
	ErrBusy = errors.New("busy: another agent holds the lease")
	// ErrLeaseLost: a session's source lease was lost before it committed.
	ErrLeaseLost = lease.ErrLost
)

func sourceLeaseName(tenant, source string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + source))
	return sourceLeasePrefix + hex.EncodeToString(sum[:16])
}

// SourceLease is the right to write restore points of one source.
type SourceLease struct {
	r              *Repository
	tenant, source string
	l              *lease.Lease
}

// Lost is closed when the lease is lost; the session then cannot commit.
func (sl *SourceLease) Lost() <-chan struct{} { return sl.l.Lost() }

func (sl *SourceLease) check(tenant, source string) error {
	if sl.tenant != tenant || sl.source != source {
		return fmt.Errorf("lease of %s/%s used for %s/%s: %w", sl.tenant, sl.source, tenant, source, ErrInvalidArgument)
	}
	return sl.l.Check()
}

// Release gives the lease back.
func (sl *SourceLease) Release() { sl.r.release(sl.l) }

// acquire takes a lease without waiting and records it in r.held, which
// tells this process's leases from other agents'.
func (r *Repository) acquire(ctx context.Context, name string) (*lease.Lease, error) {
	l, err := r.opts.Leases.Acquire(ctx, name, r.opts.LeaseTTL)
	if err != nil {
		return nil, err
	}
	r.noteHeld(name)
	return l, nil
}

func (r *Repository) noteHeld(name string) {
	r.mu.Lock()
	r.held[name]++
	r.mu.Unlock()
}

// release gives back a lease taken by acquire.
func (r *Repository) release(l *lease.Lease) {
	r.mu.Lock()
	if r.held[l.Name()]--; r.held[l.Name()] <= 0 {
		delete(r.held, l.Name())
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Release(ctx); err != nil {
		// It expires by itself; whoever wants it next waits for that.
		r.log.Warn("release lease", zap.String("lease", l.Name()), zap.Error(err))
	}
}

// AcquireSource takes the lease of (tenant, source), waiting while another
// job or agent holds it and while another agent prunes, and then brings
// the local catalogue and index up to date with the store, so that the
// newest restore point and deltaLinks the caller reads next are the
// repository's. The caller passes the lease to NewSession and releases it
// when the job ends.
func (r *Repository) AcquireSource(ctx context.Context, tenant, source string) (*SourceLease, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if tenant == "" || source == "" {
		return nil, fmt.Errorf("lease needs tenant and source: %w", ErrInvalidArgument)
	}
	name := sourceLeaseName(tenant, source)
	l, err := r.opts.Leases.Acquire(ctx, name, r.opts.LeaseTTL)
	if errors.Is(err, lease.ErrHeld) {
		r.log.Info("waiting for the source's lease", zap.String("tenant", tenant), zap.String("source", source), zap.Error(err))
		l, err = lease.AcquireWait(ctx, r.opts.Leases, name, r.opts.LeaseTTL, r.leasePoll())
	}
	if err != nil {
		return nil, fmt.Errorf("lease of %s/%s: %w", tenant, source, err)
	}
	r.noteHeld(name)
	sl := &SourceLease{r: r, tenant: tenant, source: source, l: l}
	if err := r.waitForPrune(ctx); err != nil {
		sl.Release()
		return nil, err
	}
	if _, err := r.Sync(ctx); err != nil {
		sl.Release()
		return nil, err
	}
	return sl, nil
}

func (r *Repository) leasePoll() time.Duration { return max(r.opts.LeaseTTL/20, 50*time.Millisecond) }

// waitForPrune waits while another agent holds the prune lease. Called with
// a source lease held, so a prune starting now sees us and stands down.
func (r *Repository) waitForPrune(ctx context.Context) error {
	logged := false
	for {
		held, err := r.opts.Leases.Held(ctx, pruneLease)
		if err != nil {
			return fmt.Errorf("look for a running prune: %w", err)
		}
		foreign := false
		r.mu.Lock()
		for _, h := range held {
			if h.Name == pruneLease && r.held[pruneLease] == 0 {
				foreign = true
			}
		}
		r.mu.Unlock()
		if !foreign {
			return nil
		}
		if !logged {
			r.log.Info("waiting for another agent's prune to finish")
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.leasePoll()):
		}
	}
}

// acquirePrune takes the prune lease and checks that no other agent holds
// a source lease; ErrBusy otherwise. Sources this process holds are fine:
// their sessions are protected in memory.
func (r *Repository) acquirePrune(ctx context.Context) (*lease.Lease, error) {
	l, err := r.acquire(ctx, pruneLease)
	if errors.Is(err, lease.ErrHeld) {
		return nil, fmt.Errorf("prune: %v: %w", err, ErrBusy)
	}
	if err != nil {
		return nil, fmt.Errorf("prune lease: %w", err)
	}
	held, err := r.opts.Leases.Held(ctx, sourceLeasePrefix)
	if err != nil {
		r.release(l)
		return nil, fmt.Errorf("prune: list source leases: %w", err)
	}
	r.mu.Lock()
	var others []string
	for _, h := range held {
		if r.held[h.Name] == 0 {
			others = append(others, h.Owner)
		}
	}
	r.mu.Unlock()
	if len(others) > 0 {
		r.release(l)
		return nil, fmt.Errorf("prune: %d source(s) being written by %v: %w", len(others), others, ErrBusy)
	}
	return l, nil
}

// SyncReport says what Sync changed in the local catalogue.
type SyncReport struct {
	Imported int // restore points other agents published
	Dropped  int // restore points other agents forgot
	Skipped  int // manifests that could not be imported (logged)
}

// Forgotten restore points keep their manifest while a restore point that
// is kept descends from them (its manifest holds only what changed since
// its base); a marker object says they are forgotten, and Prune removes
// manifest and marker once nothing kept needs them.
const forgottenPrefix = "forgotten/"

func forgottenKey(name RestorePointID) string { return forgottenPrefix + string(name) }

// Sync brings the local index and catalogue up to date with the store:
// index files other agents wrote are loaded, restore points they
// published are imported (bases first) and those they forgot are dropped.
func (r *Repository) Sync(ctx context.Context) (SyncReport, error) {
	var rep SyncReport
	if err := r.check(); err != nil {
		return rep, err
	}
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if err := r.refreshIndex(ctx); err != nil {
		return rep, err
	}
	if r.opts.ReadOnly {
		return rep, nil
	}
	// The local list first: a restore point committed after it is in the
	// store before Sync could think it forgotten.
	local, err := r.cat.ListRestorePoints(ctx, "", "")
	if err != nil {
		return rep, err
	}
	manifests, forgotten, err := r.listManifests(ctx)
	if err != nil {
		return rep, err
	}
	have := map[RestorePointID]bool{}
	for _, rp := range local {
		have[rp.ID] = true
	}
	var todo []RestorePointID
	for name := range manifests {
		if !have[name] && !forgotten[name] {
			todo = append(todo, name)
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i] < todo[j] }) // names start with their time
	// A manifest whose base is not imported yet waits for a later pass; a
	// forgotten base is imported for it and dropped at the end.
	var bases []RestorePointID
	for len(todo) > 0 {
		var wait []RestorePointID
		for _, name := range todo {
			if _, err := r.cat.RestorePoint(ctx, name); err == nil {
				continue // committed here after the local list was taken
			}
			rp, err := r.importManifest(ctx, name)
			if err == nil {
				if !slices.Contains(bases, name) {
					rep.Imported++
				}
				have[name] = true
				r.log.Info("imported restore point", zap.String("restore_point", string(name)),
					zap.String("tenant", rp.Tenant), zap.String("source", rp.Source), zap.Int64("items", rp.Items))
				continue
			}
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			if errors.Is(err, fs.ErrNotExist) {
				continue // pruned by another agent since the listing
			}
			if !errors.Is(err, ErrNotFound) {
				rep.Skipped++
				r.log.Error("restore point manifest not imported", zap.String("restore_point", string(name)), zap.Error(err))
				continue
			}
			h, herr := r.readManifestHeader(ctx, name)
			if herr == nil && h.Base != "" && !have[h.Base] && manifests[h.Base] && forgotten[h.Base] && !slices.Contains(bases, h.Base) {
				bases = append(bases, h.Base)
				wait = append(wait, h.Base)
			}
			wait = append(wait, name)
		}
		if len(wait) == len(todo) {
			for _, name := range wait {
				rep.Skipped++
				r.log.Error("restore point manifest not imported: its base is in neither the store nor the catalogue",
					zap.String("restore_point", string(name)))
			}
			break
		}
		todo = wait
	}
	r.mu.Lock()
	publishing := make(map[RestorePointID]bool, len(r.publishing))
	for name := range r.publishing {
		publishing[name] = true
	}
	r.mu.Unlock()
	drop := bases
	for _, rp := range local {
		if (forgotten[rp.ID] || !manifests[rp.ID]) && !publishing[rp.ID] && catalog.ValidName(rp.ID) {
			drop = append(drop, rp.ID)
		}
	}
	for _, name := range drop {
		if err := r.cat.ForgetRestorePoint(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
			r.log.Warn("drop restore point forgotten by another agent", zap.String("restore_point", string(name)), zap.Error(err))
			continue
		}
		if !slices.Contains(bases, name) {
			rep.Dropped++
		}
	}
	return rep, nil
}

// listManifests lists the restore point manifests in the store and the
// markers of those forgotten.
func (r *Repository) listManifests(ctx context.Context) (manifests, forgotten map[RestorePointID]bool, err error) {
	manifests, forgotten = map[RestorePointID]bool{}, map[RestorePointID]bool{}
	err = r.store.List(ctx, manifestPrefix, func(o ObjectInfo) error {
		if name, ok := isManifestKey(o.Key); ok {
			manifests[name] = true
		}
		return nil
	})
	if err == nil {
		err = r.store.List(ctx, forgottenPrefix, func(o ObjectInfo) error {
			name := RestorePointID(strings.TrimPrefix(o.Key, forgottenPrefix))
			if catalog.ValidName(name) {
				forgotten[name] = true
			}
			return nil
		})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list restore points: %w", err)
	}
	return manifests, forgotten, nil
}

// markForgotten records in the store that restore points were forgotten.
func (r *Repository) markForgotten(ctx context.Context, rps []RestorePoint) error {
	for _, rp := range rps {
		if !catalog.ValidName(rp.ID) {
			continue // from before manifests: only in this catalogue
		}
		if err := writeObject(ctx, r.store, forgottenKey(rp.ID), nil); err != nil {
			return fmt.Errorf("mark %s forgotten: %w", rp.ID, err)
		}
	}
	return nil
}

// pruneManifests removes the manifests and markers of forgotten restore
// points that no kept restore point descends from. Called under the prune
// lease.
func (r *Repository) pruneManifests(ctx context.Context) (int, error) {
	manifests, forgotten, err := r.listManifests(ctx)
	if err != nil {
		return 0, err
	}
	needed := map[RestorePointID]bool{}
	for name := range manifests {
		if forgotten[name] {
			continue
		}
		// Walk the chain of a kept restore point down to its full one.
		for cur := name; cur != "" && !needed[cur]; {
			needed[cur] = true
			h, err := r.readManifestHeader(ctx, cur)
			if err != nil {
				return 0, fmt.Errorf("manifest %s: %w", cur, err)
			}
			cur = h.Base
		}
	}
	var doomed []string
	n := 0
	for name := range forgotten {
		if needed[name] {
			continue
		}
		n++
		doomed = append(doomed, manifestKey(name), forgottenKey(name))
	}
	// Manifests go before their markers: a marker without a manifest is
	// harmless, a manifest without its marker would come back.
	sort.Slice(doomed, func(i, j int) bool {
		return strings.HasPrefix(doomed[i], manifestPrefix) && !strings.HasPrefix(doomed[j], manifestPrefix)
	})
	if err := r.store.Remove(ctx, doomed...); err != nil {
		return 0, err
	}
	return n, nil
}

// refreshIndex loads the index files written since the index was loaded
// and, when some have gone (another agent's prune), drops the packs only
// they listed. Pack slots of live packs do not change, so the protections
// of running sessions stay valid.
func (r *Repository) refreshIndex(ctx context.Context) error {
	r.maint.RLock() // not during this process's prune, which edits the index itself
	defer r.maint.RUnlock()
	// Known before listing: a file added meanwhile is listed, not "gone".
	r.mu.Lock()
	known := make(map[string]bool, len(r.idx.files))
	for name := range r.idx.files {
		known[name] = true
	}
	r.mu.Unlock()
	names, err := r.listIndex(ctx)
	if err != nil {
		return err
	}
	listed := make(map[string]bool, len(names))
	for _, n := range names {
		listed[n] = true
	}
	var gone []string
	for name := range known {
		if !listed[name] {
			gone = append(gone, name)
		}
	}
	read := map[string][]indexedPack{}
	for _, name := range names {
		// With files gone, chunks they held may live on in other packs
		// whose entries were skipped as duplicates: read every file again.
		if known[name] && len(gone) == 0 {
			continue
		}
		packs, err := r.readIndexFile(name)
		if err != nil {
			r.log.Warn("index file unusable", zap.String("file", name), zap.Error(err))
			continue
		}
		read[name] = packs
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(gone) > 0 {
		alive := map[PackID]bool{}
		for _, packs := range read {
			for _, p := range packs {
				alive[p.id] = true
			}
		}
		dead := map[uint32]bool{}
		for _, name := range gone {
			for _, id := range r.idx.files[name] {
				if _, ok := r.inflight[id]; ok || alive[id] {
					continue
				}
				if slot, ok := r.idx.packSlot[id]; ok {
					dead[slot] = true
					r.idx.removePack(id)
				}
			}
			delete(r.idx.files, name)
		}
		var drop []ChunkID
		if err := r.idx.chunks.each(func(id ChunkID, loc location) (bool, error) {
			if dead[loc.pack] {
				drop = append(drop, id)
			}
			return true, nil
		}); err != nil {
			return err
		}
		for _, id := range drop {
			r.idx.removeChunk(id)
		}
		r.log.Info("index files removed by another agent", zap.Int("files", len(gone)), zap.Int("packs_dropped", len(dead)))
	}
	for name, packs := range read {
		r.idx.addFile(name, packs)
	}
	return nil
}
