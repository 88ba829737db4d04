package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"sync"

	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// ReadData reads every chunk of every pack and checks that it
	// authenticates, decompresses and hashes to its id. Without it only the
	// structure is checked (index files, pack presence, sizes and trailers,
	// and that every chunk an item refers to is indexed).
	ReadData bool
	// MaxDamagedItems caps VerifyReport.DamagedItems; default 100.
	MaxDamagedItems int
}

// ProblemKind classifies a verify finding.
type ProblemKind string

// Problem kinds. All but ProblemUnreadable are corruption.
const (
	ProblemIndexDamaged    ProblemKind = "index-damaged"    // index file does not hash to its name or does not decode
	ProblemPackMissing     ProblemKind = "pack-missing"     // an index lists a pack that is not on disk
	ProblemPackTruncated   ProblemKind = "pack-truncated"   // pack shorter than the index says
	ProblemPackDamaged     ProblemKind = "pack-damaged"     // pack size or trailer disagrees with the index
	ProblemChunkMissing    ProblemKind = "chunk-missing"    // an item refers to a chunk no index lists
	ProblemChunkDamaged    ProblemKind = "chunk-damaged"    // chunk data fails authentication, decompression or its hash
	ProblemCatalogDamaged  ProblemKind = "catalog-damaged"  // catalogue records do not decode
	ProblemManifestDamaged ProblemKind = "manifest-damaged" // a restore point manifest does not authenticate or decode
	ProblemManifestMissing ProblemKind = "manifest-missing" // a restore point of the catalogue has no manifest
	// ProblemUnreadable is an I/O error that persisted through retries. It
	// is not evidence of corruption; transient errors that clear on retry
	// are not reported at all.
	ProblemUnreadable ProblemKind = "unreadable"
)

// Problem is one verify finding.
type Problem struct {
	Kind   ProblemKind
	File   string  // repository-relative file, when one is concerned
	Chunk  ChunkID // zero when not about one chunk
	Detail string
}

func (p Problem) String() string {
	s := string(p.Kind)
	if p.File != "" {
		s += " " + p.File
	}
	if p.Chunk != (ChunkID{}) {
		s += " chunk " + p.Chunk.String()[:12]
	}
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	return s
}

// DamagedItem names an item of a restore point whose content cannot be
// restored intact.
type DamagedItem struct {
	RestorePoint RestorePointID
	Tenant       string
	Source       string
	DriveID      string
	ItemID       string
	Path         string
	Reason       ProblemKind // the problem of its first bad chunk
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	IndexFiles    int
	Packs         int
	Manifests     int   // restore point manifests read
	OrphanPacks   int   // packs no index lists (left by a crash or a failed write; prune removes them)
	ChunksChecked int64 // chunks whose data was checked (ReadData) or whose presence was checked
	BytesRead     int64
	Problems      []Problem
	// DamagedItems lists the first damaged items, by restore point lineage
	// and path; DamagedItemCount counts all (item, restore point) pairs.
	DamagedItems     []DamagedItem
	DamagedItemCount int
}

// OK reports a clean repository.
func (v *VerifyReport) OK() bool { return len(v.Problems) == 0 }

// Corrupt reports whether any problem is corruption (not mere unreadability).
func (v *VerifyReport) Corrupt() bool {
	for _, p := range v.Problems {
		if p.Kind != ProblemUnreadable {
			return true
		}
	}
	return false
}

type vpack struct {
	id      PackID
	size    int64
	entries []blobEntry
	bad     ProblemKind // "" when fine
}

// Verify checks the repository and reports what is damaged and which items
// that affects. The error is for failures to run (cancelled context, closed
// repository), not for findings.
func (r *Repository) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	if err := r.check(); err != nil {
		return VerifyReport{}, err
	}
	if opts.MaxDamagedItems <= 0 {
		opts.MaxDamagedItems = 100
	}
	r.maint.RLock() // no prune while we look
	defer r.maint.RUnlock()
	var rep VerifyReport
	problem := func(p Problem) { rep.Problems = append(rep.Problems, p) }

	// 1. Index files, from disk (not the in-memory copy).
	packs := map[PackID]*vpack{}
	chunkPack := map[ChunkID]*vpack{}
	loaded := map[string]bool{}
	if _, err := r.verifyLoadIndex(ctx, loaded, packs, chunkPack, &rep, problem); err != nil {
		return rep, err
	}

	// 2. Packs: present, of the indexed size, trailer agrees with the index.
	ids := make([]PackID, 0, len(packs))
	for id := range packs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	rep.Packs = len(ids)
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		vp := packs[id]
		if vp.bad != "" {
			continue
		}
		if kind, detail := r.checkPackStructure(vp); kind != "" {
			vp.bad = kind
			problem(Problem{Kind: kind, File: packKey(id), Detail: detail})
		}
	}
	if n, err := r.countOrphans(ctx, packs); err == nil {
		rep.OrphanPacks = n
	} else {
		problem(Problem{Kind: ProblemUnreadable, File: "packs", Detail: err.Error()})
	}
	if err := r.verifyManifests(ctx, &rep, problem); err != nil {
		return rep, err
	}

	// 3. Data.
	badChunk := map[ChunkID]ProblemKind{}
	if opts.ReadData {
		r.verifyData(ctx, ids, packs, &rep, badChunk)
		if err := ctx.Err(); err != nil {
			return rep, err
		}
	}

	// 4. Items: every chunk an item refers to must be indexed in a sound
	// pack and, when read, sound itself. A job that committed after step 1
	// wrote its index files before its restore point, so a chunk missing
	// from what we loaded is looked for in newer index files before it is
	// reported.
	type pending struct {
		v      catalog.Visible
		chunks []ChunkID
	}
	var misses []pending
	damaged := func(v catalog.Visible, reason ProblemKind) {
		for _, rp := range v.RestorePoints {
			rep.DamagedItemCount++
			if len(rep.DamagedItems) < opts.MaxDamagedItems {
				rep.DamagedItems = append(rep.DamagedItems, DamagedItem{
					RestorePoint: rp.ID, Tenant: rp.Tenant, Source: rp.Source,
					DriveID: v.Item.DriveID, ItemID: v.Item.ItemID, Path: v.Item.Path, Reason: reason,
				})
			}
		}
	}
	// judge returns the item's first problem, or the chunks no loaded index lists.
	judge := func(chunks []ChunkID, count bool) (ProblemKind, []ChunkID) {
		var missing []ChunkID
		for _, c := range chunks {
			vp, ok := chunkPack[c]
			switch {
			case !ok:
				missing = append(missing, c)
			case vp.bad != "":
				return vp.bad, nil
			case badChunk[c] != "":
				return badChunk[c], nil
			case count && !opts.ReadData:
				rep.ChunksChecked++
			}
		}
		return "", missing
	}
	err := r.cat.WalkVisible(ctx, func(v catalog.Visible) error {
		reason, missing := judge(v.Item.Chunks, true)
		switch {
		case reason != "":
			damaged(v, reason)
		case len(missing) > 0:
			misses = append(misses, pending{v, missing})
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, catalog.ErrCorrupt) {
			problem(Problem{Kind: ProblemCatalogDamaged, File: "catalog.db", Detail: err.Error()})
		} else {
			return rep, fmt.Errorf("verify catalogue: %w", err)
		}
	}
	if len(misses) > 0 {
		fresh, err := r.verifyLoadIndex(ctx, loaded, packs, chunkPack, &rep, problem)
		if err != nil {
			return rep, err
		}
		for _, vp := range fresh {
			if kind, detail := r.checkPackStructure(vp); kind != "" {
				vp.bad = kind
				problem(Problem{Kind: kind, File: packKey(vp.id), Detail: detail})
			}
		}
		reported := map[ChunkID]bool{}
		for _, m := range misses {
			reason, missing := judge(m.chunks, false)
			if len(missing) > 0 {
				reason = ProblemChunkMissing
				for _, c := range missing {
					if !reported[c] {
						reported[c] = true
						problem(Problem{Kind: ProblemChunkMissing, Chunk: c, Detail: fmt.Sprintf("referenced by %s", m.v.Item.Path)})
					}
				}
			}
			if reason != "" {
				damaged(m.v, reason)
			}
		}
	}
	return rep, nil
}

// verifyLoadIndex reads the index files not loaded yet and returns the
// packs they introduced.
func (r *Repository) verifyLoadIndex(ctx context.Context, loaded map[string]bool, packs map[PackID]*vpack,
	chunkPack map[ChunkID]*vpack, rep *VerifyReport, problem func(Problem)) ([]*vpack, error) {
	names, err := r.listIndex(ctx)
	if err != nil {
		return nil, err
	}
	var fresh []*vpack
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if loaded[name] {
			continue
		}
		loaded[name] = true
		rep.IndexFiles++
		rel := indexKey(name)
		ips, err := r.readIndexFile(name)
		if err != nil {
			problem(Problem{Kind: classify(err, ProblemIndexDamaged), File: rel, Detail: err.Error()})
			continue
		}
		for _, ip := range ips {
			vp, ok := packs[ip.id]
			if !ok {
				vp = &vpack{id: ip.id, size: ip.size, entries: ip.entries}
				packs[ip.id] = vp
				fresh = append(fresh, vp)
			}
			if vp.size != ip.size {
				vp.bad = ProblemIndexDamaged
				problem(Problem{Kind: ProblemIndexDamaged, File: rel, Detail: fmt.Sprintf("pack %s listed with sizes %d and %d", ip.id, vp.size, ip.size)})
			}
			for _, be := range ip.entries {
				if _, dup := chunkPack[be.id]; !dup {
					chunkPack[be.id] = vp
				}
			}
		}
	}
	return fresh, nil
}

// classify maps a read/check error to corruption or unreadability.
func classify(err error, corrupt ProblemKind) ProblemKind {
	if errors.Is(err, ErrCorrupt) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return corrupt
	}
	return ProblemUnreadable
}

func (r *Repository) checkPackStructure(vp *vpack) (ProblemKind, string) {
	key := packKey(vp.id)
	var oi ObjectInfo
	err := retryTransient(func() error {
		var err error
		oi, err = r.store.Stat(context.Background(), key)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return ProblemPackMissing, "listed in the index, not on disk"
	}
	if err != nil {
		return ProblemUnreadable, err.Error()
	}
	var maxEnd int64
	for _, e := range vp.entries {
		maxEnd = max(maxEnd, int64(e.offset)+int64(e.length))
	}
	if oi.Size < vp.size || oi.Size < maxEnd+packFooterSize {
		return ProblemPackTruncated, fmt.Sprintf("%d bytes, index says %d", oi.Size, vp.size)
	}
	if oi.Size != vp.size {
		return ProblemPackDamaged, fmt.Sprintf("%d bytes, index says %d", oi.Size, vp.size)
	}
	var entries []blobEntry
	err = retryTransient(func() error {
		f, err := r.store.Open(context.Background(), key)
		if err != nil {
			return err
		}
		defer f.Close()
		entries, err = readTrailer(f, vp.size, vp.id, r.seal)
		return err
	})
	if err != nil {
		return classify(err, ProblemPackDamaged), err.Error()
	}
	if !indexedInTrailer(entries, vp.entries) {
		return ProblemPackDamaged, "trailer and index disagree"
	}
	return "", ""
}

// indexedInTrailer reports whether every index entry appears, identical, in
// the pack's trailer. The trailer may list more: prune's merged index drops
// dead chunks of packs it keeps.
func indexedInTrailer(trailer, indexed []blobEntry) bool {
	m := make(map[ChunkID]blobEntry, len(trailer))
	for _, e := range trailer {
		m[e.id] = e
	}
	for _, e := range indexed {
		if t, ok := m[e.id]; !ok || t != e {
			return false
		}
	}
	return true
}

func (r *Repository) countOrphans(ctx context.Context, indexed map[PackID]*vpack) (int, error) {
	stored, err := r.listPacks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for id := range stored {
		if _, ok := indexed[id]; !ok {
			n++
		}
	}
	return n, nil
}

// listPacks lists the packs in the store.
func (r *Repository) listPacks(ctx context.Context) (map[PackID]ObjectInfo, error) {
	out := map[PackID]ObjectInfo{}
	err := r.store.List(ctx, "packs/", func(o ObjectInfo) error {
		name := path.Base(o.Key)
		if id, ok := parsePackID(name); ok && isPackName(name) && o.Key == packKey(id) {
			out[id] = o
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return out, nil
}

// verifyData reads every chunk of every structurally sound pack, with one
// goroutine per worker.
func (r *Repository) verifyData(ctx context.Context, ids []PackID, packs map[PackID]*vpack, rep *VerifyReport, bad map[ChunkID]ProblemKind) {
	var mu sync.Mutex
	work := make(chan *vpack)
	var wg sync.WaitGroup
	for w := 0; w < r.opts.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stbuf, dst := getBuf(maxChunkSize+4096), getBuf(maxChunkSize)
			defer putBuf(stbuf)
			defer putBuf(dst)
			for vp := range work {
				probs, checked, read := r.verifyPackData(ctx, vp, stbuf, dst)
				mu.Lock()
				rep.ChunksChecked += checked
				rep.BytesRead += read
				for _, p := range probs {
					rep.Problems = append(rep.Problems, p)
					if p.Chunk != (ChunkID{}) {
						bad[p.Chunk] = p.Kind
					} else {
						vp.bad = p.Kind
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		if vp := packs[id]; vp.bad == "" {
			work <- vp
		}
	}
	close(work)
	wg.Wait()
	// Problems were appended in completion order; keep the report stable.
	sort.SliceStable(rep.Problems, func(i, j int) bool { return rep.Problems[i].File < rep.Problems[j].File })
}

func (r *Repository) verifyPackData(ctx context.Context, vp *vpack, stbuf, dst *[]byte) ([]Problem, int64, int64) {
	rel := packKey(vp.id)
	var f Object
	err := retryTransient(func() error {
		var err error
		f, err = r.store.Open(ctx, packKey(vp.id))
		return err
	})
	if err != nil {
		return []Problem{{Kind: classify(err, ProblemPackMissing), File: rel, Detail: err.Error()}}, 0, 0
	}
	defer f.Close()
	entries := append([]blobEntry(nil), vp.entries...)
	sort.Slice(entries, func(i, j int) bool { return entries[i].offset < entries[j].offset })
	var probs []Problem
	var checked, read int64
	for _, e := range entries {
		if ctx.Err() != nil {
			break
		}
		if cap(*stbuf) < int(e.length) {
			*stbuf = make([]byte, e.length)
		}
		if cap(*dst) < int(e.raw) {
			*dst = make([]byte, 0, e.raw)
		}
		stored := (*stbuf)[:e.length]
		err := retryTransient(func() error {
			_, err := f.ReadAt(stored, int64(e.offset))
			return err
		})
		if err == nil {
			read += int64(e.length)
			_, err = r.decodeChunk(e.id, location{offset: e.offset, length: e.length, raw: e.raw, flags: e.flags}, stored, *dst)
		}
		checked++
		if err != nil {
			probs = append(probs, Problem{Kind: classify(err, ProblemChunkDamaged), File: rel, Chunk: e.id, Detail: err.Error()})
		}
	}
	return probs, checked, read
}

// verifyManifests reads every restore point manifest whole, and checks that
// every restore point of the catalogue has one.
func (r *Repository) verifyManifests(ctx context.Context, rep *VerifyReport, problem func(Problem)) error {
	local, err := r.cat.ListRestorePoints(ctx, "", "")
	if err != nil {
		return err
	}
	manifests, _, err := r.listManifests(ctx)
	if err != nil {
		problem(Problem{Kind: ProblemUnreadable, File: manifestPrefix, Detail: err.Error()})
		return nil
	}
	names := make([]RestorePointID, 0, len(manifests))
	for name := range manifests {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] < names[j] })
	for _, name := range names {
		err := retryTransient(func() error {
			return r.readManifest(ctx, name, func(byte, []byte) error { return nil })
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rep.Manifests++
		if err != nil {
			problem(Problem{Kind: classify(err, ProblemManifestDamaged), File: manifestKey(name), Detail: err.Error()})
		}
	}
	r.mu.Lock()
	publishing := make(map[RestorePointID]bool, len(r.publishing))
	for name := range r.publishing {
		publishing[name] = true
	}
	r.mu.Unlock()
	for _, rp := range local {
		if catalog.ValidName(rp.ID) && !manifests[rp.ID] && !publishing[rp.ID] {
			problem(Problem{Kind: ProblemManifestMissing, File: manifestKey(rp.ID), Detail: "restore point of the catalogue"})
		}
	}
	return nil
}
