package catalog

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ForgetPolicy selects restore points to keep; every other restore point of
// the matching (tenant, source) lineages is forgotten. A restore point is
// kept when any rule keeps it. The newest restore point of each lineage is
// always kept (it carries the deltaLinks the next incremental job needs), and
// so is the base of any job being staged.
type ForgetPolicy struct {
	Tenant     string        // "" matches every tenant
	Source     string        // "" matches every source
	KeepLast   int           // keep the newest KeepLast of each lineage
	KeepWithin time.Duration // keep those younger than this, by the catalogue clock
	DryRun     bool          // report, change nothing
}

// Forget removes the restore points the policy does not keep and returns
// them. Their rows and item versions are reclaimed by GC.
func (c *Catalog) Forget(ctx context.Context, p ForgetPolicy) ([]RestorePoint, error) {
	if p.KeepLast < 0 || p.KeepWithin < 0 || (p.KeepLast == 0 && p.KeepWithin == 0) {
		return nil, fmt.Errorf("forget needs KeepLast > 0 or KeepWithin > 0: %w", ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	bases := c.pendingBasesLocked()
	cutoff := c.clock().Add(-p.KeepWithin)
	var gone []*rpRecord
	fn := func(tx *bolt.Tx) error {
		recs, err := allRPs(tx)
		if err != nil {
			return err
		}
		byLineage := map[uint64][]*rpRecord{}
		for _, r := range recs {
			if (p.Tenant == "" || r.Tenant == p.Tenant) && (p.Source == "" || r.Source == p.Source) {
				byLineage[r.Lineage] = append(byLineage[r.Lineage], r)
			}
		}
		for _, rs := range byLineage {
			sort.Slice(rs, func(i, j int) bool { // newest first
				if !rs[i].Time.Equal(rs[j].Time) {
					return rs[i].Time.After(rs[j].Time)
				}
				return rs[i].Seq > rs[j].Seq
			})
			for i, r := range rs {
				keep := i == 0 || i < p.KeepLast || bases[r.Seq] ||
					(p.KeepWithin > 0 && r.Time.After(cutoff))
				if keep {
					continue
				}
				gone = append(gone, r)
				if !p.DryRun {
					if err := deleteRP(tx, r); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	var err error
	if p.DryRun {
		err = c.boltView(fn)
	} else {
		err = c.boltUpdate(fn)
	}
	if err != nil {
		return nil, fmt.Errorf("forget: %w", err)
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].Seq < gone[j].Seq })
	out := make([]RestorePoint, len(gone))
	for i, r := range gone {
		out[i] = r.public()
		if !p.DryRun && r.Name != "" {
			c.setName(out[i].ID, 0)
		}
	}
	return out, nil
}

// deleteRP removes a restore point record and its name. Its rows and item
// versions stay until GC.
func deleteRP(tx *bolt.Tx, r *rpRecord) error {
	if r.Name != "" {
		if err := tx.Bucket(bktNames).Delete([]byte(r.Name)); err != nil {
			return err
		}
	}
	return tx.Bucket(bktRPs).Delete(u64(r.Seq))
}

// ForgetRestorePoint removes one restore point. Restore points based on it
// keep everything they inherited.
func (c *Catalog) ForgetRestorePoint(ctx context.Context, id RestorePointID) error {
	seq, err := c.seqOf(id)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pendingBasesLocked()[seq] {
		return fmt.Errorf("forget %s: %w", id, ErrInUse)
	}
	var name string
	err = c.boltUpdate(func(tx *bolt.Tx) error {
		r, err := getRP(tx, seq)
		if err != nil {
			return err
		}
		name = r.Name
		return deleteRP(tx, r)
	})
	if err != nil {
		return fmt.Errorf("forget %s: %w", id, err)
	}
	if name != "" {
		c.setName(RestorePointID(name), 0)
	}
	return nil
}

func (c *Catalog) pendingBasesLocked() map[uint64]bool {
	m := map[uint64]bool{}
	for _, t := range c.pending {
		if t.parent != 0 {
			m[t.parent] = true
		}
	}
	return m
}

// GCResult reports a GC.
type GCResult struct {
	RowsRemoved     int64
	VersionsRemoved int64
	ChainRemoved    int64
	LiveVersions    int64
	// Chunks is every chunk referenced by an item version that a live
	// restore point or a transaction being staged can see.
	Chunks map[ChunkID]struct{}
}

// GC removes rows no restore point can see any more (forgotten restore
// points, abandoned transactions), item versions nothing refers to and
// unneeded chain links, and returns the chunks still referenced. It runs in
// one catalogue transaction so that no commit interleaves with it; with
// dryRun it changes nothing.
func (c *Catalog) GC(ctx context.Context, dryRun bool) (GCResult, error) {
	if err := ctx.Err(); err != nil {
		return GCResult{}, err
	}
	c.mu.Lock() // no Begin while we decide what staging transactions need
	defer c.mu.Unlock()
	keepSeqs := map[uint64]bool{}
	neededChain := map[uint64]bool{}
	for seq, t := range c.pending {
		keepSeqs[seq] = true
		for a := range t.anc {
			neededChain[a] = true
		}
	}
	res := GCResult{Chunks: map[ChunkID]struct{}{}}
	fn := func(tx *bolt.Tx) error {
		recs, err := allRPs(tx)
		if err != nil {
			return err
		}
		views := map[uint64][]*view{}
		for _, r := range recs {
			v, err := viewOf(tx, r)
			if err != nil {
				return err
			}
			views[r.Lineage] = append(views[r.Lineage], v)
			for a := range v.anc {
				neededChain[a] = true
			}
		}
		liveVersions := map[versionID]bool{}
		lineages := tx.Bucket(bktLineages)
		var lineageIDs []uint64
		if err := lineages.ForEach(func(k, _ []byte) error {
			lineageIDs = append(lineageIDs, binary.BigEndian.Uint64(k))
			return nil
		}); err != nil {
			return err
		}
		for _, lid := range lineageIDs {
			lb := lineages.Bucket(u64(lid))
			for _, which := range [][]byte{bktPaths, bktIDs} {
				if err := ctx.Err(); err != nil {
					return err
				}
				b := lb.Bucket(which)
				if b == nil {
					continue
				}
				isPath := which[0] == bktPaths[0]
				var doomed [][]byte
				it := newGroupIter(b.Cursor(), nil, nil)
				for it.next() {
					c.noteRead(tx)
					var drive string
					if isPath {
						drive, _, _, _ = splitPathGroup(it.group)
					} else {
						_, drive, _ = splitIDGroup(it.group)
					}
					kept := make([]bool, len(it.rows))
					for i, r := range it.rows {
						kept[i] = keepSeqs[r.seq]
					}
					for _, v := range views[lid] {
						for i := len(it.rows) - 1; i >= 0; i-- {
							if v.sees(drive, it.rows[i].seq) {
								kept[i] = true
								break
							}
						}
					}
					below := false
					for i, r := range it.rows {
						if kept[i] && r.tag == tagTombstone && !below && !keepSeqs[r.seq] {
							kept[i] = false // hides nothing any more
						}
						if !kept[i] {
							doomed = append(doomed, withSeq(it.group, r.seq))
							continue
						}
						below = true
						if isPath && r.tag == tagVersion {
							liveVersions[r.ver] = true
						}
					}
				}
				if it.err != nil {
					return it.err
				}
				res.RowsRemoved += int64(len(doomed))
				if !dryRun {
					for _, k := range doomed {
						if err := b.Delete(k); err != nil {
							return err
						}
					}
				}
			}
		}
		if err := deleteWhere(tx.Bucket(bktChain), dryRun, func(k, _ []byte) bool {
			return !neededChain[binary.BigEndian.Uint64(k)]
		}, &res.ChainRemoved); err != nil {
			return err
		}
		var decodeErr error
		if err := deleteWhere(tx.Bucket(bktVersions), dryRun, func(k, v []byte) bool {
			var id versionID
			copy(id[:], k)
			if !liveVersions[id] {
				return true
			}
			it, err := decodeVersion(v)
			if err != nil {
				decodeErr = fmt.Errorf("version %x: %w", k[:8], err)
				return false
			}
			for _, ch := range it.Chunks {
				res.Chunks[ch] = struct{}{}
			}
			return false
		}, &res.VersionsRemoved); err != nil {
			return err
		}
		if decodeErr != nil {
			return decodeErr
		}
		var n int64
		if err := deleteWhere(tx.Bucket(bktByItem), dryRun, func(k, _ []byte) bool {
			var id versionID
			copy(id[:], k[len(k)-32:])
			return !liveVersions[id]
		}, &n); err != nil {
			return err
		}
		res.LiveVersions = int64(len(liveVersions))
		return nil
	}
	var err error
	if dryRun {
		err = c.boltView(fn)
	} else {
		err = c.boltUpdate(fn)
	}
	if err != nil {
		return GCResult{}, fmt.Errorf("catalogue gc: %w", err)
	}
	return res, nil
}

func deleteWhere(b *bolt.Bucket, dryRun bool, doomed func(k, v []byte) bool, count *int64) error {
	var keys [][]byte
	if err := b.ForEach(func(k, v []byte) error {
		if doomed(k, v) {
			keys = append(keys, append([]byte(nil), k...))
		}
		return nil
	}); err != nil {
		return err
	}
	*count += int64(len(keys))
	if dryRun {
		return nil
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Visible is one item version as one or more restore points see it.
type Visible struct {
	Item          Item // Path set
	RestorePoints []RestorePoint
}

// WalkVisible calls fn once for every distinct (path, version) that a live
// restore point sees, with the restore points that see it. Each version is
// decoded once however many restore points share it; verification uses it to
// name the items a damaged chunk affects.
func (c *Catalog) WalkVisible(ctx context.Context, fn func(Visible) error) error {
	return c.view(ctx, func(tx *bolt.Tx) error {
		recs, err := allRPs(tx)
		if err != nil {
			return err
		}
		type rv struct {
			v  *view
			rp RestorePoint
		}
		views := map[uint64][]rv{}
		for _, r := range recs {
			v, err := viewOf(tx, r)
			if err != nil {
				return err
			}
			views[r.Lineage] = append(views[r.Lineage], rv{v, r.public()})
		}
		lids := make([]uint64, 0, len(views))
		for lid := range views {
			lids = append(lids, lid)
		}
		sort.Slice(lids, func(i, j int) bool { return lids[i] < lids[j] })
		for _, lid := range lids {
			lb := tx.Bucket(bktLineages).Bucket(u64(lid))
			if lb == nil {
				continue
			}
			it := newGroupIter(lb.Bucket(bktPaths).Cursor(), nil, nil)
			for it.next() {
				if err := ctx.Err(); err != nil {
					return err
				}
				c.noteRead(tx)
				drive, path, _, _ := splitPathGroup(it.group)
				seen := map[versionID][]RestorePoint{}
				var order []versionID
				for _, x := range views[lid] {
					r, ok := x.v.visible(drive, it.rows)
					if !ok || r.tag != tagVersion {
						continue
					}
					if _, dup := seen[r.ver]; !dup {
						order = append(order, r.ver)
					}
					seen[r.ver] = append(seen[r.ver], x.rp)
				}
				for _, vid := range order {
					item, err := c.getVersion(tx, vid)
					if err != nil {
						return err
					}
					item.Path = path
					if err := fn(Visible{Item: item, RestorePoints: seen[vid]}); err != nil {
						return err
					}
				}
			}
			if it.err != nil {
				return it.err
			}
		}
		return nil
	})
}
