package catalog

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BeginOptions start a restore point.
type BeginOptions struct {
	Tenant string
	Source string         // e.g. "onedrive:<user-id>" or "site:<site-id>"
	Base   RestorePointID // "" for a full restore point; else it inherits everything of Base not changed
	Label  string         // kept with the restore point, e.g. the job id
	// Name is the restore point's id; default a new NewName. A restore
	// point imported from another agent keeps the name it was given there.
	Name RestorePointID
}

// Txn stages one restore point. Its changes are written in batches that stay
// invisible until Commit writes the restore point record, so memory stays
// bounded however many items a job has. Safe for concurrent use.
type Txn struct {
	c       *Catalog
	seq     uint64
	lineage uint64
	tenant  string
	source  string
	label   string
	name    RestorePointID
	time    time.Time
	parent  uint64
	pname   RestorePointID // the parent's id
	anc     map[uint64]bool

	mu      sync.Mutex
	done    bool
	ops     []op
	drives  map[string]*txnDrive
	written int64
	deleted int64
	rows    int64 // keys put or deleted in the catalogue, for cost accounting
}

type txnDrive struct {
	deltaLink string
	since     uint64
	items     int64
	bytes     int64
	removed   bool
	touched   bool
	changed   bool // items were put or deleted: a reset can no longer hide them
}

type opKind int

const (
	opPut opKind = iota
	opDelete
)

type op struct {
	kind opKind
	item Item // opPut: the full item; opDelete: DriveID and ItemID
}

// flushEvery bounds the staged operations held in memory and written in
// one catalogue transaction. It also bounds the memory map a commit makes
// resident: random keys dirty a leaf per row, and the commit touches every
// page it frees (see dropMappedPages): each row touches about four random
// leaves (paths, ids, by-item, versions). bench memory at 225,000 items:
// at 128 the mapped catalogue peaked near 84 MiB, at 64 near 66 MiB, for
// 9 % more wall time (twice the commits, each an fsync).
const flushEvery = 64

// dropEvery is how many operations, staged or read, may fault catalogue
// pages in before they are dropped again (dropMappedPages).
const dropEvery = 32

// Begin starts staging a restore point of (tenant, source).
func (c *Catalog) Begin(ctx context.Context, opts BeginOptions) (*Txn, error) {
	if err := validName("tenant", opts.Tenant, false); err != nil {
		return nil, err
	}
	if err := validName("source", opts.Source, false); err != nil {
		return nil, err
	}
	var baseSeq uint64
	if opts.Base != "" {
		var err error
		if baseSeq, err = c.seqOf(opts.Base); err != nil {
			return nil, err
		}
	}
	if opts.Name == "" {
		opts.Name = NewName(c.clock())
	} else if !ValidName(opts.Name) {
		return nil, fmt.Errorf("restore point name %q: %w", opts.Name, ErrInvalidArgument)
	}
	if _, err := c.seqOf(opts.Name); err == nil {
		return nil, fmt.Errorf("restore point %s exists: %w", opts.Name, ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := &Txn{c: c, tenant: opts.Tenant, source: opts.Source, label: opts.Label, name: opts.Name,
		parent: baseSeq, drives: map[string]*txnDrive{}}
	c.mu.Lock()
	defer c.mu.Unlock() // held so that Forget cannot remove the base between check and registration
	err := c.boltUpdate(func(tx *bolt.Tx) error {
		names := tx.Bucket(bktLineageNames)
		key := []byte(opts.Tenant + "\x00" + opts.Source)
		if v := names.Get(key); len(v) == 8 {
			t.lineage = binary.BigEndian.Uint64(v)
		} else {
			id, err := names.NextSequence()
			if err != nil {
				return err
			}
			t.lineage = id
			if err := names.Put(key, u64(id)); err != nil {
				return err
			}
		}
		lb, err := tx.Bucket(bktLineages).CreateBucketIfNotExists(u64(t.lineage))
		if err != nil {
			return err
		}
		if _, err := lb.CreateBucketIfNotExists(bktPaths); err != nil {
			return err
		}
		if _, err := lb.CreateBucketIfNotExists(bktIDs); err != nil {
			return err
		}
		if baseSeq != 0 {
			base, err := getRP(tx, baseSeq)
			if err != nil {
				return err
			}
			if base.Lineage != t.lineage {
				return fmt.Errorf("base %s belongs to %s/%s, not %s/%s: %w",
					opts.Base, base.Tenant, base.Source, opts.Tenant, opts.Source, ErrInvalidArgument)
			}
			t.pname = base.id()
			for _, d := range base.Drives {
				t.drives[d.ID] = &txnDrive{deltaLink: d.DeltaLink, since: d.Since, items: d.Items, bytes: d.Bytes}
			}
		}
		seq, err := tx.Bucket(bktChain).NextSequence()
		if err != nil {
			return err
		}
		t.seq = seq
		if t.anc, err = ancestors(tx, seq, baseSeq); err != nil {
			return err
		}
		rec, _ := json.Marshal(pendingRecord{Lineage: t.lineage, Base: baseSeq, Started: c.clock().UTC()})
		return tx.Bucket(bktPending).Put(u64(seq), rec)
	})
	if err != nil {
		return nil, fmt.Errorf("begin restore point of %s/%s: %w", opts.Tenant, opts.Source, err)
	}
	c.pending[t.seq] = t
	return t, nil
}

// view is the transaction's own view: its base plus what it staged so far.
func (t *Txn) view() *view {
	v := &view{seq: t.seq, anc: t.anc, drives: make(map[string]uint64, len(t.drives))}
	for id, d := range t.drives {
		if !d.removed {
			v.drives[id] = d.since
		}
	}
	return v
}

func (t *Txn) drive(id string) (*txnDrive, error) {
	d, ok := t.drives[id]
	if !ok {
		d = &txnDrive{since: t.seq}
		t.drives[id] = d
	}
	if d.removed {
		return nil, fmt.Errorf("drive %s was removed from this restore point: %w", id, ErrInvalidArgument)
	}
	d.touched = true
	return d, nil
}

func (t *Txn) check() error {
	if t.done {
		return fmt.Errorf("restore point transaction: %w", ErrClosed)
	}
	return nil
}

// Put records item as new or changed in this restore point. Putting an item
// identical to what the restore point already sees (same version, same path)
// writes nothing.
func (t *Txn) Put(ctx context.Context, item Item) error {
	if err := validItem(&item); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	d, err := t.drive(item.DriveID)
	if err != nil {
		return err
	}
	d.changed = true
	item.Chunks = append([]ChunkID(nil), item.Chunks...)
	t.ops = append(t.ops, op{kind: opPut, item: item})
	return t.maybeFlush(ctx)
}

func validItem(it *Item) error {
	for _, f := range []struct{ what, v string }{{"drive id", it.DriveID}, {"item id", it.ItemID}, {"path", it.Path}} {
		if err := validName(f.what, f.v, false); err != nil {
			return err
		}
	}
	for _, f := range []struct{ what, v string }{{"name", it.Name}, {"eTag", it.ETag}, {"cTag", it.CTag}, {"quickXorHash", it.QuickXorHash}} {
		if err := validName(f.what, f.v, true); err != nil {
			return err
		}
	}
	if it.Size < 0 {
		return fmt.Errorf("item %s size %d: %w", it.ItemID, it.Size, ErrInvalidArgument)
	}
	return nil
}

// Delete records that item itemID of driveID no longer exists. Deleting an
// item the restore point does not see is a no-op.
func (t *Txn) Delete(ctx context.Context, driveID, itemID string) error {
	if err := validName("drive id", driveID, false); err != nil {
		return err
	}
	if err := validName("item id", itemID, false); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	d, err := t.drive(driveID)
	if err != nil {
		return err
	}
	d.changed = true
	t.ops = append(t.ops, op{kind: opDelete, item: Item{DriveID: driveID, ItemID: itemID}})
	return t.maybeFlush(ctx)
}

// SetDeltaLink records the drive's new deltaLink; it becomes visible with the
// restore point at Commit.
func (t *Txn) SetDeltaLink(driveID, link string) error {
	if err := validName("drive id", driveID, false); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	d, err := t.drive(driveID)
	if err != nil {
		return err
	}
	d.deltaLink = link
	return nil
}

// ResetDrive makes driveID start empty in this restore point (a full re-crawl
// of one drive, e.g. after the deltaLink expired): nothing of the base's
// drive is inherited. It must come before any item of that drive is put or
// deleted (a second reset, or one after SetDeltaLink, is fine).
func (t *Txn) ResetDrive(driveID string) error {
	if err := validName("drive id", driveID, false); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	if d, ok := t.drives[driveID]; ok && (d.changed || d.removed) {
		return fmt.Errorf("reset of drive %s after changes to it: %w", driveID, ErrInvalidArgument)
	}
	t.drives[driveID] = &txnDrive{since: t.seq, touched: true}
	return nil
}

// RemoveDrive drops driveID (and its items) from this restore point.
func (t *Txn) RemoveDrive(driveID string) error {
	if err := validName("drive id", driveID, false); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	t.drives[driveID] = &txnDrive{since: t.seq, removed: true}
	return nil
}

func (t *Txn) maybeFlush(ctx context.Context) error {
	if len(t.ops) < flushEvery {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.flush(nil); err != nil {
		return err
	}
	if err := t.c.maybeReopen(); err != nil {
		t.done = true
		t.c.forget(t.seq)
		return err
	}
	return nil
}

// flush applies the staged operations in one Update; final, when not nil,
// runs in the same Update (the commit).
func (t *Txn) flush(final func(tx *bolt.Tx) error) error {
	err := t.c.boltUpdate(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bktLineages).Bucket(u64(t.lineage))
		if lb == nil {
			return fmt.Errorf("lineage %d bucket missing: %w", t.lineage, ErrCorrupt)
		}
		s := &stager{t: t, tx: tx, paths: lb.Bucket(bktPaths), ids: lb.Bucket(bktIDs), v: t.view()}
		for i := range t.ops {
			if i > 0 && i%dropEvery == 0 {
				dropMappedPages(tx)
			}
			var err error
			if t.ops[i].kind == opPut {
				err = s.put(&t.ops[i].item)
			} else {
				err = s.delete(t.ops[i].item.DriveID, t.ops[i].item.ItemID)
			}
			if err != nil {
				return err
			}
		}
		if final != nil {
			return final(tx)
		}
		return nil
	})
	if err != nil {
		// The staged rows of a failed Update were rolled back, but the
		// in-memory counters may have moved: the transaction is unusable.
		t.done = true
		t.c.forget(t.seq)
		return fmt.Errorf("stage restore point: %w", err)
	}
	t.ops = t.ops[:0]
	_ = t.c.boltView(func(tx *bolt.Tx) error { dropMappedPages(tx); return nil })
	return nil
}

type stager struct {
	t     *Txn
	tx    *bolt.Tx
	paths *bolt.Bucket
	ids   *bolt.Bucket
	v     *view
}

// current returns the row the transaction sees for (drive, item) right now.
func (s *stager) current(drive, item string) (row, bool, error) {
	rows, err := groupRows(s.ids.Cursor(), idGroup(item, drive))
	if err != nil {
		return row{}, false, err
	}
	r, ok := s.v.visible(drive, rows)
	return r, ok && r.tag == tagVersion, nil
}

func (s *stager) putRow(b *bolt.Bucket, key, val []byte) error {
	s.t.rows++
	return b.Put(key, val)
}

func (s *stager) deleteRow(b *bolt.Bucket, key []byte) error {
	s.t.rows++
	return b.Delete(key)
}

// vacate makes path show nothing for (drive, item) at this seq: a row staged
// earlier by this transaction is removed, and if the base still shows a
// version there, a tombstone hides it.
func (s *stager) vacate(drive, path, item string) error {
	g := pathGroup(drive, path, item)
	key := withSeq(g, s.t.seq)
	if s.paths.Get(key) != nil {
		if err := s.deleteRow(s.paths, key); err != nil {
			return err
		}
	}
	rows, err := groupRows(s.paths.Cursor(), g)
	if err != nil {
		return err
	}
	if r, ok := s.v.visible(drive, rows); ok && r.tag == tagVersion {
		return s.putRow(s.paths, key, encodeRow(tagTombstone, versionID{}, ""))
	}
	return nil
}

func (s *stager) size(id versionID) (int64, error) {
	it, err := s.t.c.getVersion(s.tx, id)
	return it.Size, err
}

func (s *stager) put(it *Item) error {
	enc := encodeVersion(it)
	vid := versionKey(enc)
	prev, had, err := s.current(it.DriveID, it.ItemID)
	if err != nil {
		return err
	}
	if had && prev.ver == vid && prev.path == it.Path {
		return nil // unchanged: inherited by reference, nothing to write
	}
	d := s.t.drives[it.DriveID]
	if had {
		sz, err := s.size(prev.ver)
		if err != nil {
			return err
		}
		d.items--
		d.bytes -= sz
		if prev.path != it.Path {
			if err := s.vacate(it.DriveID, prev.path, it.ItemID); err != nil {
				return err
			}
		}
	}
	versions := s.tx.Bucket(bktVersions)
	if versions.Get(vid[:]) == nil {
		if err := s.putRow(versions, vid[:], enc); err != nil {
			return err
		}
		bk := append(byItemPrefix(s.t.tenant, it.DriveID, it.ItemID), vid[:]...)
		if err := s.putRow(s.tx.Bucket(bktByItem), bk, nil); err != nil {
			return err
		}
	}
	if err := s.putRow(s.paths, withSeq(pathGroup(it.DriveID, it.Path, it.ItemID), s.t.seq), encodeRow(tagVersion, vid, "")); err != nil {
		return err
	}
	if err := s.putRow(s.ids, withSeq(idGroup(it.ItemID, it.DriveID), s.t.seq), encodeRow(tagVersion, vid, it.Path)); err != nil {
		return err
	}
	d.items++
	d.bytes += it.Size
	s.t.written++
	return nil
}

func (s *stager) delete(drive, item string) error {
	prev, had, err := s.current(drive, item)
	if err != nil || !had {
		return err
	}
	sz, err := s.size(prev.ver)
	if err != nil {
		return err
	}
	if err := s.vacate(drive, prev.path, item); err != nil {
		return err
	}
	if err := s.putRow(s.ids, withSeq(idGroup(item, drive), s.t.seq), encodeRow(tagTombstone, versionID{}, "")); err != nil {
		return err
	}
	d := s.t.drives[drive]
	d.items--
	d.bytes -= sz
	s.t.deleted++
	return nil
}

// Commit makes the restore point, its rows and its deltaLinks visible in one
// catalogue transaction and returns it.
func (t *Txn) Commit(ctx context.Context) (RestorePoint, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return RestorePoint{}, err
	}
	if err := ctx.Err(); err != nil {
		return RestorePoint{}, err
	}
	rec := rpRecord{
		Seq: t.seq, Name: string(t.name), Lineage: t.lineage, Tenant: t.tenant, Source: t.source, Label: t.label,
		Parent: t.parent, ParentName: string(t.pname), Time: t.time.UTC(),
	}
	if t.time.IsZero() {
		rec.Time = t.c.clock().UTC()
	}
	err := t.flush(func(tx *bolt.Tx) error {
		rec.ItemsWritten, rec.ItemsDeleted = t.written, t.deleted
		for id, d := range t.drives {
			if !d.removed {
				rec.Drives = append(rec.Drives, driveRecord{ID: id, DeltaLink: d.deltaLink, Since: d.since, Items: d.items, Bytes: d.bytes})
			}
		}
		sort.Slice(rec.Drives, func(i, j int) bool { return rec.Drives[i].ID < rec.Drives[j].ID })
		if t.parent != 0 {
			// The base must still be a live restore point or at least in the chain.
			if tx.Bucket(bktChain).Get(u64(t.parent)) == nil {
				return fmt.Errorf("base %s vanished: %w", formatRPID(t.parent), ErrNotFound)
			}
		}
		enc, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		chain := make([]byte, 16)
		binary.BigEndian.PutUint64(chain, t.lineage)
		binary.BigEndian.PutUint64(chain[8:], t.parent)
		if err := tx.Bucket(bktChain).Put(u64(t.seq), chain); err != nil {
			return err
		}
		if err := tx.Bucket(bktRPs).Put(u64(t.seq), enc); err != nil {
			return err
		}
		if err := tx.Bucket(bktNames).Put([]byte(t.name), u64(t.seq)); err != nil {
			return err
		}
		// Known before the record is visible, so that whoever sees the
		// record can resolve its name; undone below if the commit fails.
		t.c.setName(t.name, t.seq)
		return tx.Bucket(bktPending).Delete(u64(t.seq))
	})
	if err != nil {
		t.c.setName(t.name, 0)
		return RestorePoint{}, fmt.Errorf("commit restore point of %s/%s: %w", t.tenant, t.source, err)
	}
	t.done = true
	t.c.forget(t.seq)
	return rec.public(), nil
}

// SetTime sets the restore point's time, which is otherwise the clock's at
// Commit: an imported restore point keeps the time it was committed with.
func (t *Txn) SetTime(tm time.Time) {
	t.mu.Lock()
	t.time = tm
	t.mu.Unlock()
}

// Abort abandons the transaction; its staged rows stay invisible and are
// removed by the next GC. Aborting a finished transaction is a no-op.
func (t *Txn) Abort() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return nil
	}
	t.done = true
	t.ops = nil
	t.c.forget(t.seq)
	err := t.c.boltUpdate(func(tx *bolt.Tx) error { return tx.Bucket(bktPending).Delete(u64(t.seq)) })
	if err != nil {
		return fmt.Errorf("abort restore point: %w", err)
	}
	return nil
}

// Path returns the path the restore point being staged records for item
// itemID of driveID so far: what this transaction put, or else what it
// inherits from its base. ok is false when it records no such item. It lets
// a crawl find the path of a folder it met long ago without keeping every
// folder in memory.
func (t *Txn) Path(ctx context.Context, driveID, itemID string) (path string, ok bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return "", false, err
	}
	for i := len(t.ops) - 1; i >= 0; i-- { // staged, not yet flushed
		if o := &t.ops[i]; o.item.ItemID == itemID && o.item.DriveID == driveID {
			return o.item.Path, o.kind == opPut, nil
		}
	}
	if d, ok := t.drives[driveID]; ok && d.removed {
		return "", false, nil
	}
	v := t.view()
	err = t.c.view(ctx, func(tx *bolt.Tx) error {
		lb := tx.Bucket(bktLineages).Bucket(u64(t.lineage))
		if lb == nil {
			return fmt.Errorf("lineage %d bucket missing: %w", t.lineage, ErrCorrupt)
		}
		rows, err := groupRows(lb.Bucket(bktIDs).Cursor(), idGroup(itemID, driveID))
		if err != nil {
			return err
		}
		if r, vis := v.visible(driveID, rows); vis && r.tag == tagVersion {
			path, ok = r.path, true
		}
		return nil
	})
	return path, ok, err
}

// RowsWritten is the number of catalogue keys the transaction has put or
// deleted so far: the cost of the restore point, for accounting and tests.
func (t *Txn) RowsWritten() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rows
}

// ID is the id the restore point will have once committed.
func (t *Txn) ID() RestorePointID { return t.name }

func (c *Catalog) forget(seq uint64) {
	c.mu.Lock()
	delete(c.pending, seq)
	c.mu.Unlock()
}
