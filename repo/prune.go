package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/lease"
	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// Forget removes the restore points the policy does not keep (see
// ForgetPolicy: newest of each source always kept, union of KeepLast and
// KeepWithin, KeepWithin measured with the repository clock). Space is
// reclaimed by Prune.
func (r *Repository) Forget(ctx context.Context, p ForgetPolicy) ([]RestorePoint, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if r.opts.ReadOnly && !p.DryRun {
		return nil, ErrReadOnly
	}
	if p.DryRun {
		return r.cat.Forget(ctx, p)
	}
	// Source by source, each under its lease: a source another agent is
	// writing is left for later (its new restore point would be based on
	// one forgotten here).
	candidates, err := r.cat.Forget(ctx, catalog.ForgetPolicy{Tenant: p.Tenant, Source: p.Source,
		KeepLast: p.KeepLast, KeepWithin: p.KeepWithin, DryRun: true})
	if err != nil {
		return nil, err
	}
	type src struct{ tenant, source string }
	seen := map[src]bool{}
	var gone []RestorePoint
	for _, c := range candidates {
		s := src{c.Tenant, c.Source}
		if seen[s] {
			continue
		}
		seen[s] = true
		l, err := r.acquire(ctx, sourceLeaseName(s.tenant, s.source))
		if errors.Is(err, lease.ErrHeld) {
			r.log.Info("forget skips a source being written", zap.String("tenant", s.tenant), zap.String("source", s.source))
			continue
		}
		if err != nil {
			return gone, fmt.Errorf("forget: lease of %s/%s: %w", s.tenant, s.source, err)
		}
		sp := p
		sp.Tenant, sp.Source = s.tenant, s.source
		g, err := r.cat.Forget(ctx, sp)
		if err == nil {
			err = r.markForgotten(ctx, g)
		}
		r.release(l)
		gone = append(gone, g...)
		if err != nil {
			return gone, err
		}
	}
	return gone, nil
}

// ForgetRestorePoint removes one restore point; ErrInUse if a running job
// is based on it.
func (r *Repository) ForgetRestorePoint(ctx context.Context, id RestorePointID) error {
	if err := r.check(); err != nil {
		return err
	}
	if r.opts.ReadOnly {
		return ErrReadOnly
	}
	rp, err := r.cat.RestorePoint(ctx, id)
	if err != nil {
		return err
	}
	l, err := r.acquire(ctx, sourceLeaseName(rp.Tenant, rp.Source))
	if err != nil {
		if errors.Is(err, lease.ErrHeld) {
			// A job of this process or another agent is writing the source.
			return fmt.Errorf("forget %s: %v: %w", id, err, ErrInUse)
		}
		return fmt.Errorf("forget %s: %w", id, err)
	}
	defer r.release(l)
	if err := r.cat.ForgetRestorePoint(ctx, id); err != nil {
		return err
	}
	return r.markForgotten(ctx, []RestorePoint{rp})
}

// PruneOptions configure Prune.
type PruneOptions struct {
	// RepackThreshold: a pack is rewritten when at least this fraction of
	// its bytes is dead (and it still has live chunks). Default 0.5.
	RepackThreshold float64
	// DryRun computes the report and changes nothing.
	DryRun bool
}

// PruneReport reports a prune.
type PruneReport struct {
	RowsRemoved        int64 // catalogue rows no restore point sees
	VersionsRemoved    int64 // item versions no restore point refers to
	ChunksRemoved      int64
	PacksDeleted       int // wholly dead packs
	PacksRewritten     int // mostly dead packs whose live chunks were copied
	PacksWritten       int // new packs holding copied chunks
	OrphanPacksDeleted int // packs no index listed
	IndexFilesRemoved  int
	ManifestsRemoved   int   // of forgotten restore points nothing kept descends from
	BytesFreed         int64 // pack bytes deleted minus pack bytes written
}

// Prune reclaims space: it removes catalogue rows and item versions that no
// restore point sees, deletes packs whose chunks are all unreferenced,
// rewrites mostly-dead packs, merges the index files and deletes orphan
// packs. It never removes a chunk a running session wrote, deduplicated
// against or looked up (sessions protect the packs of those chunks; a
// session that ends while the prune runs leaves its protection behind for
// it). Each step is atomic and ordered (new packs → new index → old index
// removed and dir fsynced → old packs removed), so a crash at any point
// leaves a valid repository.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (PruneReport, error) {
	if err := r.check(); err != nil {
		return PruneReport{}, err
	}
	if r.opts.ReadOnly {
		return PruneReport{}, ErrReadOnly
	}
	if opts.RepackThreshold <= 0 || opts.RepackThreshold > 1 {
		opts.RepackThreshold = 0.5
	}
	var pl *lease.Lease
	if !opts.DryRun {
		// Other agents sharing the store: none may be writing, and every
		// restore point they published must be in the catalogue before it
		// decides what is referenced.
		var err error
		if pl, err = r.acquirePrune(ctx); err != nil {
			return PruneReport{}, err
		}
		defer r.release(pl)
		if _, err := r.Sync(ctx); err != nil {
			return PruneReport{}, fmt.Errorf("prune: %w", err)
		}
	}
	r.maint.Lock()
	defer r.maint.Unlock()
	r.mu.Lock()
	r.pruning++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.pruning--
		if r.pruning == 0 {
			r.retired = nil
		}
		r.mu.Unlock()
	}()

	var rep PruneReport
	gc, err := r.cat.GC(ctx, opts.DryRun)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	rep.RowsRemoved, rep.VersionsRemoved = gc.RowsRemoved, gc.VersionsRemoved

	// The index as it is on disk. A damaged index file could hide live
	// packs, which would then look like orphans: refuse.
	names, err := r.listIndex(ctx)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	var files []indexFile
	for _, name := range names {
		ips, err := r.readIndexFile(name)
		if err != nil {
			return rep, fmt.Errorf("prune: index file %s unusable, run verify: %w", name, err)
		}
		files = append(files, indexFile{name: name, packs: ips})
	}

	// Packs in the store, listed before the plan takes the lock: a pack a
	// writer publishes meanwhile is in r.inflight from before its publication.
	stored, err := r.listPacks(ctx)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	plan, err := r.planPrune(gc.Chunks, files, stored, opts)
	if err != nil {
		return rep, err
	}
	diskPacks, oldIndex := plan.diskPacks, plan.oldIndex
	rep.ChunksRemoved = plan.chunksRemoved
	rep.PacksDeleted = len(plan.deletePacks)
	rep.PacksRewritten = len(plan.repack)
	rep.OrphanPacksDeleted = len(plan.orphans)
	for _, id := range plan.deletePacks {
		rep.BytesFreed += diskPacks[id].size
	}
	for _, id := range plan.repack {
		rep.BytesFreed += diskPacks[id].size
	}
	for _, o := range plan.orphans {
		rep.BytesFreed += o.size
	}
	if opts.DryRun {
		return rep, nil
	}
	if rep.ManifestsRemoved, err = r.pruneManifests(ctx); err != nil {
		return rep, fmt.Errorf("prune: manifests: %w", err)
	}

	// Copy the live chunks of mostly-dead packs into new packs.
	newPacks, err := r.repack(ctx, plan.repack, diskPacks)
	if err != nil {
		return rep, fmt.Errorf("prune: repack: %w", err)
	}
	rep.PacksWritten = len(newPacks)
	for _, ip := range newPacks {
		rep.BytesFreed -= ip.size
	}

	// One index for every surviving pack we read, then drop the old files.
	gone := map[PackID]bool{}
	for _, id := range append(append([]PackID(nil), plan.deletePacks...), plan.repack...) {
		gone[id] = true
	}
	r.mu.Lock()
	var merged []indexedPack
	for id, ip := range diskPacks {
		if gone[id] {
			continue
		}
		slot, ok := r.idx.packSlot[id]
		if !ok {
			continue
		}
		keep := indexedPack{id: id, size: ip.size}
		for _, e := range ip.entries {
			if loc, ok := r.idx.chunks.get(e.id); ok && loc.pack == slot && loc.offset == e.offset {
				keep.entries = append(keep.entries, e)
			}
		}
		merged = append(merged, keep)
	}
	r.mu.Unlock()
	merged = append(merged, newPacks...)
	sort.Slice(merged, func(i, j int) bool { return string(merged[i].id[:]) < string(merged[j].id[:]) })
	var mergedName string
	if len(merged) > 0 {
		data, name, err := encodeIndex(r.seal, merged)
		if err != nil {
			return rep, fmt.Errorf("prune: encode index: %w", err)
		}
		if err := writeObject(ctx, r.store, indexKey(name), data); err != nil {
			return rep, fmt.Errorf("prune: write index: %w", err)
		}
		mergedName = name
	}
	r.mu.Lock()
	for _, name := range oldIndex {
		delete(r.idx.files, name)
	}
	for _, ip := range newPacks {
		for name, ids := range r.idx.files {
			if len(ids) == 1 && ids[0] == ip.id {
				delete(r.idx.files, name)
				oldIndex = append(oldIndex, name) // the per-pack file repack wrote
			}
		}
	}
	if mergedName != "" {
		ids := make([]PackID, len(merged))
		for i, ip := range merged {
			ids[i] = ip.id
		}
		r.idx.files[mergedName] = ids
	}
	r.mu.Unlock()
	var oldKeys []string
	for _, name := range oldIndex {
		if name != mergedName {
			oldKeys = append(oldKeys, indexKey(name))
		}
	}
	// The removals are durable when Remove returns, before the packs the
	// files listed go.
	if err := r.store.Remove(ctx, oldKeys...); err != nil {
		return rep, fmt.Errorf("prune: remove old index files: %w", err)
	}
	rep.IndexFilesRemoved = len(oldKeys)

	r.mu.Lock()
	for id := range gone {
		r.idx.removePack(id)
	}
	r.mu.Unlock()
	doomed := make([]string, 0, len(gone)+len(plan.orphans))
	for id := range gone {
		doomed = append(doomed, packKey(id))
	}
	for _, o := range plan.orphans {
		doomed = append(doomed, o.key)
	}
	if err := pl.Check(); err != nil {
		// Another agent may be writing again: keep the packs (they are
		// orphans now, for the next prune).
		return rep, fmt.Errorf("prune: before removing packs: %w", err)
	}
	if err := r.store.Remove(ctx, doomed...); err != nil {
		return rep, fmt.Errorf("prune: remove packs: %w", err)
	}
	r.log.Info("prune done", zap.Int64("chunks_removed", rep.ChunksRemoved), zap.Int("packs_deleted", rep.PacksDeleted),
		zap.Int("packs_rewritten", rep.PacksRewritten), zap.Int64("bytes_freed", rep.BytesFreed))
	return rep, nil
}

type orphanPack struct {
	key  string
	size int64
}

type indexFile struct {
	name  string
	packs []indexedPack
}

type prunePlan struct {
	diskPacks     map[PackID]indexedPack // packs of the index files prune takes over
	oldIndex      []string               // those files; replaced by the merged index
	deletePacks   []PackID
	repack        []PackID
	orphans       []orphanPack
	chunksRemoved int64
}

// planPrune decides, under the repository lock, what is dead, and (unless
// dry-running) removes dead chunks from the in-memory index at once, so no
// session can deduplicate against a chunk that is about to go.
func (r *Repository) planPrune(referenced map[catalog.ChunkID]struct{}, files []indexFile, stored map[PackID]ObjectInfo, opts PruneOptions) (prunePlan, error) {
	plan := prunePlan{diskPacks: map[PackID]indexedPack{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	// An index file whose pack is not in memory yet belongs to a writer
	// still finishing that pack: leave the file and its packs alone.
	diskPacks := plan.diskPacks
	for _, f := range files {
		ours := true
		for _, ip := range f.packs {
			if _, ok := r.idx.packSlot[ip.id]; !ok {
				ours = false
			}
		}
		if !ours {
			continue
		}
		plan.oldIndex = append(plan.oldIndex, f.name)
		for _, ip := range f.packs {
			if _, ok := diskPacks[ip.id]; !ok {
				diskPacks[ip.id] = ip
			}
		}
	}
	var dead []ChunkID
	// A run that cannot be read leaves dead chunks for the next prune.
	_ = r.idx.chunks.each(func(id ChunkID, loc location) (bool, error) {
		if _, ok := referenced[id]; !ok && !r.protected(id, loc) {
			dead = append(dead, id)
		}
		return true, nil
	})
	plan.chunksRemoved = int64(len(dead))
	deadSet := make(map[ChunkID]bool, len(dead))
	for _, id := range dead {
		deadSet[id] = true
	}
	for id, ip := range diskPacks {
		slot := r.idx.packSlot[id]
		var liveBytes int64
		for _, e := range ip.entries {
			loc, ok := r.idx.chunks.get(e.id)
			if ok && loc.pack == slot && loc.offset == e.offset && !deadSet[e.id] {
				liveBytes += int64(e.length)
			}
		}
		switch {
		case liveBytes == 0:
			plan.deletePacks = append(plan.deletePacks, id)
		case float64(ip.size-liveBytes) >= opts.RepackThreshold*float64(ip.size):
			plan.repack = append(plan.repack, id)
		}
	}
	listed := map[PackID]bool{}
	for _, f := range files {
		for _, ip := range f.packs {
			listed[ip.id] = true
		}
	}
	for id, oi := range stored {
		if listed[id] { // by an index file, ours or a writer's
			continue
		}
		if _, ok := r.idx.packSlot[id]; ok {
			continue // indexed by a file written after we listed
		}
		if _, ok := r.inflight[id]; ok {
			continue // a writer is finishing it
		}
		plan.orphans = append(plan.orphans, orphanPack{key: oi.Key, size: oi.Size})
	}
	if !opts.DryRun {
		for _, id := range dead {
			r.idx.removeChunk(id)
		}
	}
	sort.Slice(plan.deletePacks, func(i, j int) bool { return string(plan.deletePacks[i][:]) < string(plan.deletePacks[j][:]) })
	sort.Slice(plan.repack, func(i, j int) bool { return string(plan.repack[i][:]) < string(plan.repack[j][:]) })
	return plan, nil
}

// repack copies the live chunks of the given packs, verified, into new
// packs, and points the in-memory index at the copies.
func (r *Repository) repack(ctx context.Context, ids []PackID, diskPacks map[PackID]indexedPack) ([]indexedPack, error) {
	var out []indexedPack
	var pw *packWriter
	stbuf, dst := getBuf(maxChunkSize+4096), getBuf(maxChunkSize)
	defer putBuf(stbuf)
	defer putBuf(dst)
	flush := func() error {
		if pw == nil || len(pw.entries) == 0 {
			return nil
		}
		p := pw
		pw = nil
		ip, err := r.finishPackReplacing(p)
		if err != nil {
			return err
		}
		out = append(out, ip)
		return nil
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		f, err := r.store.Open(ctx, packKey(id))
		if err != nil {
			return out, fmt.Errorf("open pack %s: %w", id, err)
		}
		r.mu.Lock()
		slot := r.idx.packSlot[id]
		var keep []blobEntry
		for _, e := range diskPacks[id].entries {
			if loc, ok := r.idx.chunks.get(e.id); ok && loc.pack == slot && loc.offset == e.offset {
				keep = append(keep, e)
			}
		}
		r.mu.Unlock()
		for _, e := range keep {
			if cap(*stbuf) < int(e.length) {
				*stbuf = make([]byte, e.length)
			}
			stored := (*stbuf)[:e.length]
			if _, err := f.ReadAt(stored, int64(e.offset)); err != nil {
				f.Close()
				return out, fmt.Errorf("read chunk %s of pack %s: %w", e.id, id, err)
			}
			// Check before copying: never spread a damaged chunk. Decoding
			// works in place, so copy the stored form aside first.
			check := append((*dst)[:0], stored...)
			if _, err := r.decodeChunk(e.id, location{offset: e.offset, length: e.length, raw: e.raw, flags: e.flags}, check, make([]byte, 0, e.raw)); err != nil {
				f.Close()
				return out, fmt.Errorf("chunk %s of pack %s: %w", e.id, id, err)
			}
			if pw == nil {
				if pw, err = newPackWriter(r.store); err != nil {
					f.Close()
					return out, err
				}
			}
			if err := pw.add(e.id, stored, int(e.raw), e.flags); err != nil {
				f.Close()
				pw.abort()
				return out, err
			}
			if pw.offset >= r.opts.PackSize {
				if err := flush(); err != nil {
					f.Close()
					return out, err
				}
			}
		}
		f.Close()
	}
	if err := flush(); err != nil {
		return out, err
	}
	return out, nil
}

// finishPackReplacing is finishPack for copies: the in-memory index is
// pointed at the new pack for every chunk it holds.
func (r *Repository) finishPackReplacing(pw *packWriter) (indexedPack, error) {
	if err := r.finishPack(pw, nil); err != nil {
		return indexedPack{}, err
	}
	id, size := pw.id, pw.size
	ip := indexedPack{id: id, size: size, entries: pw.entries}
	r.mu.Lock()
	slot := r.idx.packSlot[id]
	from := map[uint32]struct{}{}
	for _, e := range pw.entries {
		old, ok := r.idx.chunks.get(e.id)
		if ok {
			r.idx.stored -= int64(old.length)
			r.idx.raw -= int64(old.raw)
			from[old.pack] = struct{}{}
		}
		r.idx.chunks.put(e.id, location{pack: slot, offset: e.offset, length: e.length, raw: e.raw, flags: e.flags})
		r.idx.stored += int64(e.length)
		r.idx.raw += int64(e.raw)
	}
	r.moveProtection(from, slot)
	r.mu.Unlock()
	return ip, nil
}
