// Package catalog is the backup repository's catalogue: restore points per
// tenant and source, the item versions each restore point holds per drive,
// deletions, and each drive's deltaLink.
//
// # Storage engine: bbolt
//
// The catalogue is a bbolt (go.etcd.io/bbolt) file rather than SQLite because:
//   - it is pure Go: no cgo, one static binary, no SQL dialect or schema
//     migrations to carry;
//   - every Update is an ACID transaction that fsyncs before returning, so "a
//     restore point and its deltaLinks become visible together or not at all"
//     is one Update, and a crash at any instant leaves the last committed state;
//   - keys are ordered byte strings with cursors, which is exactly what listing
//     items by path prefix with stable paging needs;
//   - readers are MVCC snapshots that never block the single writer, and the
//     file lock keeps a second process out of the repository.
//
// Its costs, accepted: one writer at a time (commits are short batches), and
// the file does not shrink after deletions (freed pages are reused).
//
// # Data model: inheritance by reference
//
// A lineage is one (tenant, source). Every restore point, committed or being
// staged, has a sequence number (seq) and, unless it is a full restore point,
// a parent (its base). Item rows are written only for what changed:
//
//	p/<drive>\x00<path>\x00<item id>\x00<seq>  → version | tombstone
//	i/<item id>\x00<drive>\x00<seq>            → version | tombstone, path
//
// A restore point R sees, for every row group (the key without seq), the row
// with the highest seq that is an ancestor of R (R itself, its base, the base's
// base, …) and not older than the drive's start in R (a drive reset or re-added
// starts afresh). So an incremental restore point with 1 % changes writes rows
// for that 1 % only, while reading resolves inheritance in one ordered scan:
// no chain walk per item. Item versions (metadata and chunk list) are stored
// once, keyed by the SHA-256 of their encoding, and shared by every restore
// point and lineage that refers to them.
//
// Rows of a restore point being staged are written in batches under a reserved
// seq that no committed restore point can see; the final Update writes the
// restore point record with its deltaLinks, which is what makes the rows
// visible. A crash before that leaves invisible rows that GC removes.
package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// Domain errors. The repository re-exports them; the gRPC edge maps them.
var (
	// ErrNotFound: the restore point, item or deltaLink does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument: the request is malformed (empty ids, NUL bytes, bad page token, …).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrClosed: the catalogue (or a finished transaction) is used after Close/Commit/Abort.
	ErrClosed = errors.New("closed")
	// ErrLocked: another process holds the catalogue.
	ErrLocked = errors.New("locked by another process")
	// ErrInUse: the restore point is the base of a job being staged.
	ErrInUse = errors.New("in use by a running job")
	// ErrCorrupt: stored catalogue data does not decode.
	ErrCorrupt = errors.New("corrupt")
)

// ChunkID identifies a content chunk: the SHA-256 of its plaintext.
type ChunkID [32]byte

// String returns the hex form of the id.
func (id ChunkID) String() string { return fmt.Sprintf("%x", id[:]) }

// RestorePointID names a committed restore point. It is opaque to callers.
type RestorePointID string

// Item is one version of a drive item as a restore point holds it.
type Item struct {
	DriveID      string
	ItemID       string
	Path         string // full path within the drive; the listing order and prefix filter use it
	Name         string
	Size         int64
	ModTime      time.Time
	ETag         string
	CTag         string
	QuickXorHash string
	Folder       bool // folders (and the drive root) have no content
	SHA256       [32]byte
	Chunks       []ChunkID
}

// Drive is one drive of a restore point.
type Drive struct {
	ID        string
	DeltaLink string
	Items     int64 // visible items of this drive
	Bytes     int64 // sum of their sizes
}

// RestorePoint is a committed restore point.
type RestorePoint struct {
	ID           RestorePointID
	Tenant       string
	Source       string
	Label        string         // caller's label, e.g. the job that wrote it
	Base         RestorePointID // "" for a full restore point
	Time         time.Time
	Drives       []Drive // sorted by ID
	Items        int64   // visible items over all drives
	Bytes        int64   // sum of visible item sizes
	ItemsWritten int64   // item versions written by this restore point (new or changed)
	ItemsDeleted int64   // items this restore point removed
}

// Options configure Open.
type Options struct {
	Clock    func() time.Time // restore point times and retention; default time.Now
	Logger   *zap.Logger      // default zap.NewNop()
	ReadOnly bool             // open with a shared lock; writes fail
	Timeout  time.Duration    // how long to wait for the file lock; default 1s
}

// Catalog is an open catalogue. It is safe for concurrent use.
type Catalog struct {
	// dbmu is held shared by every use of db, exclusively to reopen it
	// (see maybeReopen).
	dbmu        sync.RWMutex
	db          *bolt.DB
	path        string
	boltOpts    *bolt.Options
	reopenAfter int64        // reopenAfterPages; tests lower it
	reopens     atomic.Int64 // times maybeReopen reopened db

	clock func() time.Time
	log   *zap.Logger

	mu      sync.Mutex
	pending map[uint64]*Txn // transactions being staged in this process

	nmu   sync.RWMutex
	names map[string]uint64 // restore point name → seq, as the names bucket

	reads atomic.Int64 // random reads of the catalogue, for dropMappedPages (noteRead)
}

var (
	bktMeta         = []byte("meta")
	bktLineageNames = []byte("lineage-names") // tenant\x00source → lineage id
	bktLineages     = []byte("lineages")      // lineage id → bucket{p, i}
	bktRPs          = []byte("rps")           // seq → rpRecord (live restore points)
	bktChain        = []byte("chain")         // seq → lineage, parent (committed, kept while an ancestor of something live)
	bktPending      = []byte("pending")       // seq → pendingRecord (staging transactions)
	bktVersions     = []byte("versions")      // version id → encoded version
	bktByItem       = []byte("by-item")       // tenant\x00drive\x00item\x00 + version id → ""
	bktNames        = []byte("names")         // restore point name → seq
	bktPaths        = []byte("p")
	bktIDs          = []byte("i")
)

const schemaVersion = 1

// Open opens or creates the catalogue file at path.
func Open(path string, opts Options) (*Catalog, error) {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	boltOpts := &bolt.Options{
		Timeout:  opts.Timeout,
		ReadOnly: opts.ReadOnly,
		// The freelist is written at each commit (8 bytes a free page: a
		// few KiB). Without it, every open rebuilds it by walking the whole
		// catalogue through the memory map: opening one of 260 MiB took
		// 135 ms and 258 MiB of RSS, against 0.5 ms and 3 MiB.
		NoFreelistSync: false,
		FreelistType:   bolt.FreelistMapType,
	}
	db, err := bolt.Open(path, 0o600, boltOpts)
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open catalogue %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open catalogue %s: %w", path, err)
	}
	c := &Catalog{db: db, path: path, boltOpts: boltOpts, reopenAfter: reopenAfterPages, clock: opts.Clock, log: opts.Logger, pending: map[uint64]*Txn{}, names: map[string]uint64{}}
	if opts.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error { return checkSchema(tx) })
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bktMeta, bktLineageNames, bktLineages, bktRPs, bktChain, bktPending, bktVersions, bktByItem, bktNames} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bktMeta)
			if meta.Get([]byte("schema")) == nil {
				if err := meta.Put([]byte("schema"), u64(schemaVersion)); err != nil {
					return err
				}
			}
			if err := checkSchema(tx); err != nil {
				return err
			}
			// We hold the exclusive lock, so every pending record is left over
			// from a process that died while staging; its rows are invisible
			// and GC removes them.
			return clearBucket(tx.Bucket(bktPending))
		})
	}
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bktNames)
			if b == nil { // a read-only open of a catalogue from before names
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("name %q: %w", k, ErrCorrupt)
				}
				c.names[string(k)] = binary.BigEndian.Uint64(v)
				return nil
			})
		})
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open catalogue %s: %w", path, err)
	}
	return c, nil
}

func checkSchema(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	if meta == nil {
		return fmt.Errorf("no meta bucket: %w", ErrCorrupt)
	}
	v := meta.Get([]byte("schema"))
	if len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion {
		return fmt.Errorf("unsupported catalogue schema %x: %w", v, ErrCorrupt)
	}
	return nil
}

func clearBucket(b *bolt.Bucket) error {
	var keys [][]byte
	if err := b.ForEach(func(k, _ []byte) error {
		keys = append(keys, append([]byte(nil), k...))
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the catalogue. Open transactions must be finished first; an
// unfinished one is abandoned (its rows stay invisible).
func (c *Catalog) Close() error {
	c.dbmu.Lock()
	defer c.dbmu.Unlock()
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("close catalogue: %w", err)
	}
	return nil
}

// Size returns the size of the catalogue file in bytes.
func (c *Catalog) Size() (int64, error) {
	var n int64
	err := c.boltView(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n, err
}

// boltView and boltUpdate are how everything but Open, Close and
// maybeReopen uses db. fn must not use the catalogue's db again.
func (c *Catalog) boltView(fn func(*bolt.Tx) error) error {
	c.dbmu.RLock()
	defer c.dbmu.RUnlock()
	return c.db.View(fn)
}

func (c *Catalog) boltUpdate(fn func(*bolt.Tx) error) error {
	c.dbmu.RLock()
	defer c.dbmu.RUnlock()
	return c.db.Update(fn)
}

// reopenAfterPages is how many page allocations bbolt may record before the
// catalogue is reopened. bbolt remembers which transaction allocated every
// reused page that is still live, about 30 bytes each, for as long as the
// database stays open: on a long backup that grows with the catalogue
// (4.7 MB of heap at 506k items). Reopening forgets it and costs about a
// millisecond, now that the freelist is on disk.
const reopenAfterPages = 32 << 10

// maybeReopen closes and reopens db when bbolt's memory of page
// allocations has grown past reopenAfterPages and nobody is using db: it
// never waits (a verify walking the catalogue for minutes must not stall
// backups), so a busy catalogue is reopened at a later call. The caller
// must hold no transaction.
func (c *Catalog) maybeReopen() error {
	allocated := func() int64 { st := c.db.Stats(); return st.TxStats.GetPageCount() }
	c.dbmu.RLock()
	n := allocated()
	c.dbmu.RUnlock()
	if n < c.reopenAfter || c.boltOpts.ReadOnly || !c.dbmu.TryLock() {
		return nil
	}
	defer c.dbmu.Unlock()
	if allocated() < c.reopenAfter {
		return nil // reopened meanwhile
	}
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("reopen catalogue: %w", err)
	}
	db, err := bolt.Open(c.path, 0o600, c.boltOpts)
	if err != nil {
		// Unusable until the agent restarts; every use now fails with
		// bbolt's "database not open".
		c.log.Error("cannot reopen the catalogue", zap.String("path", c.path), zap.Error(err))
		return fmt.Errorf("reopen catalogue %s: %w", c.path, err)
	}
	c.db = db
	c.reopens.Add(1)
	return nil
}

// ---- ids and keys ----

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func formatRPID(seq uint64) RestorePointID {
	return RestorePointID("rp-" + strconv.FormatUint(seq, 10))
}

// NewName returns a fresh restore point name, unique across agents writing
// one repository: "rp-" ‖ 16 hex digits of t in ns ‖ "-" ‖ 8 random hex digits.
func NewName(t time.Time) RestorePointID {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return RestorePointID(fmt.Sprintf("rp-%016x-%x", uint64(t.UnixNano()), b))
}

// ValidName reports whether id has the form of NewName's names.
func ValidName(id RestorePointID) bool {
	s, ok := strings.CutPrefix(string(id), "rp-")
	if !ok || len(s) != 16+1+8 || s[16] != '-' {
		return false
	}
	_, err1 := hex.DecodeString(s[:16])
	_, err2 := hex.DecodeString(s[17:])
	return err1 == nil && err2 == nil
}

// seqOf resolves a restore point id: a name (NewName) or, for restore
// points committed before names existed, "rp-<seq>".
func (c *Catalog) seqOf(id RestorePointID) (uint64, error) {
	if seq, err := parseRPID(id); err == nil {
		return seq, nil
	}
	if !ValidName(id) {
		return 0, fmt.Errorf("restore point id %q: %w", id, ErrInvalidArgument)
	}
	c.nmu.RLock()
	seq, ok := c.names[string(id)]
	c.nmu.RUnlock()
	if !ok {
		return 0, fmt.Errorf("restore point %s: %w", id, ErrNotFound)
	}
	return seq, nil
}

func (c *Catalog) setName(name RestorePointID, seq uint64) {
	c.nmu.Lock()
	if seq == 0 {
		delete(c.names, string(name))
	} else {
		c.names[string(name)] = seq
	}
	c.nmu.Unlock()
}

func parseRPID(id RestorePointID) (uint64, error) {
	s, ok := strings.CutPrefix(string(id), "rp-")
	if !ok {
		return 0, fmt.Errorf("restore point id %q: %w", id, ErrInvalidArgument)
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("restore point id %q: %w", id, ErrInvalidArgument)
	}
	return seq, nil
}

func validName(what, s string, allowEmpty bool) error {
	if s == "" && !allowEmpty {
		return fmt.Errorf("%s is empty: %w", what, ErrInvalidArgument)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte: %w", what, s, ErrInvalidArgument)
	}
	return nil
}

// pathGroup is the p-bucket key without seq: drive\x00path\x00item\x00.
func pathGroup(drive, path, item string) []byte {
	k := make([]byte, 0, len(drive)+len(path)+len(item)+3+8)
	k = append(k, drive...)
	k = append(k, 0)
	k = append(k, path...)
	k = append(k, 0)
	k = append(k, item...)
	return append(k, 0)
}

// idGroup is the i-bucket key without seq: item\x00drive\x00.
func idGroup(item, drive string) []byte {
	k := make([]byte, 0, len(drive)+len(item)+2+8)
	k = append(k, item...)
	k = append(k, 0)
	k = append(k, drive...)
	return append(k, 0)
}

func withSeq(group []byte, seq uint64) []byte {
	k := make([]byte, len(group), len(group)+8)
	copy(k, group)
	return binary.BigEndian.AppendUint64(k, seq)
}

func splitPathGroup(g []byte) (drive, path, item string, ok bool) {
	parts := strings.Split(string(g[:len(g)-1]), "\x00")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

func splitIDGroup(g []byte) (item, drive string, ok bool) {
	parts := strings.Split(string(g[:len(g)-1]), "\x00")
	if len(parts) != 2 {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// ---- rows ----

const (
	tagTombstone = 0
	tagVersion   = 1
)

type versionID [32]byte

// row is one decoded p or i row.
type row struct {
	seq  uint64
	tag  byte
	ver  versionID
	path string // i rows only
}

func encodeRow(tag byte, ver versionID, path string) []byte {
	v := make([]byte, 0, 33+len(path))
	v = append(v, tag)
	v = append(v, ver[:]...)
	return append(v, path...)
}

func decodeRow(seq uint64, v []byte) (row, error) {
	if len(v) < 33 || v[0] > tagVersion {
		return row{}, fmt.Errorf("row of %d bytes: %w", len(v), ErrCorrupt)
	}
	r := row{seq: seq, tag: v[0], path: string(v[33:])}
	copy(r.ver[:], v[1:33])
	return r, nil
}

// groupRows reads every row of group from cursor c, in ascending seq order.
func groupRows(c *bolt.Cursor, group []byte) ([]row, error) {
	var rows []row
	for k, v := c.Seek(group); k != nil && len(k) == len(group)+8 && bytes.HasPrefix(k, group); k, v = c.Next() {
		r, err := decodeRow(binary.BigEndian.Uint64(k[len(group):]), v)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// groupIter walks the row groups of a bucket whose keys start with prefix,
// beginning at start, one group (all seq rows of one key) at a time.
type groupIter struct {
	cur    *bolt.Cursor
	prefix []byte
	k, v   []byte
	group  []byte
	rows   []row
	err    error
}

func newGroupIter(cur *bolt.Cursor, start, prefix []byte) *groupIter {
	it := &groupIter{cur: cur, prefix: prefix}
	if start == nil {
		it.k, it.v = cur.First()
	} else {
		it.k, it.v = cur.Seek(start)
	}
	return it
}

func (it *groupIter) next() bool {
	if it.err != nil || it.k == nil || !bytes.HasPrefix(it.k, it.prefix) {
		return false
	}
	if len(it.k) <= 8 {
		it.err = fmt.Errorf("row key of %d bytes: %w", len(it.k), ErrCorrupt)
		return false
	}
	it.group = append(it.group[:0], it.k[:len(it.k)-8]...)
	it.rows = it.rows[:0]
	for ; it.k != nil && len(it.k) == len(it.group)+8 && bytes.HasPrefix(it.k, it.group); it.k, it.v = it.cur.Next() {
		r, err := decodeRow(binary.BigEndian.Uint64(it.k[len(it.group):]), it.v)
		if err != nil {
			it.err = err
			return false
		}
		it.rows = append(it.rows, r)
	}
	return true
}

// ---- views ----

// view is what one restore point (or staging transaction) can see.
type view struct {
	seq    uint64
	rp     RestorePointID
	anc    map[uint64]bool   // seq and all its ancestors
	drives map[string]uint64 // drive → first seq of the drive's current history
}

func (v *view) sees(drive string, seq uint64) bool {
	since, ok := v.drives[drive]
	return ok && seq >= since && v.anc[seq]
}

// visible returns the row of rows (ascending seq) that v sees, if any.
func (v *view) visible(drive string, rows []row) (row, bool) {
	for i := len(rows) - 1; i >= 0; i-- {
		if v.sees(drive, rows[i].seq) {
			return rows[i], true
		}
	}
	return row{}, false
}

// ancestors walks the chain from parent upwards.
func ancestors(tx *bolt.Tx, seq, parent uint64) (map[uint64]bool, error) {
	anc := map[uint64]bool{seq: true}
	chain := tx.Bucket(bktChain)
	for p := parent; p != 0; {
		if anc[p] {
			return nil, fmt.Errorf("restore point chain loops at %d: %w", p, ErrCorrupt)
		}
		anc[p] = true
		v := chain.Get(u64(p))
		if len(v) != 16 {
			return nil, fmt.Errorf("restore point %d missing from chain: %w", p, ErrCorrupt)
		}
		p = binary.BigEndian.Uint64(v[8:])
	}
	return anc, nil
}

func viewOf(tx *bolt.Tx, rec *rpRecord) (*view, error) {
	anc, err := ancestors(tx, rec.Seq, rec.Parent)
	if err != nil {
		return nil, err
	}
	v := &view{seq: rec.Seq, rp: formatRPID(rec.Seq), anc: anc, drives: map[string]uint64{}}
	for _, d := range rec.Drives {
		v.drives[d.ID] = d.Since
	}
	return v, nil
}

// ---- records ----

type driveRecord struct {
	ID        string `json:"id"`
	DeltaLink string `json:"delta_link,omitempty"`
	Since     uint64 `json:"since"`
	Items     int64  `json:"items"`
	Bytes     int64  `json:"bytes"`
}

type rpRecord struct {
	Seq          uint64        `json:"seq"`
	Name         string        `json:"name,omitempty"`        // empty for restore points from before names
	ParentName   string        `json:"parent_name,omitempty"` // the base's id
	Lineage      uint64        `json:"lineage"`
	Tenant       string        `json:"tenant"`
	Source       string        `json:"source"`
	Label        string        `json:"label,omitempty"`
	Parent       uint64        `json:"parent,omitempty"`
	Time         time.Time     `json:"time"`
	Drives       []driveRecord `json:"drives"`
	ItemsWritten int64         `json:"items_written"`
	ItemsDeleted int64         `json:"items_deleted"`
}

func (r *rpRecord) public() RestorePoint {
	p := RestorePoint{
		ID: r.id(), Tenant: r.Tenant, Source: r.Source, Label: r.Label, Time: r.Time,
		ItemsWritten: r.ItemsWritten, ItemsDeleted: r.ItemsDeleted,
	}
	switch {
	case r.ParentName != "":
		p.Base = RestorePointID(r.ParentName)
	case r.Parent != 0:
		p.Base = formatRPID(r.Parent)
	}
	for _, d := range r.Drives {
		p.Drives = append(p.Drives, Drive{ID: d.ID, DeltaLink: d.DeltaLink, Items: d.Items, Bytes: d.Bytes})
		p.Items += d.Items
		p.Bytes += d.Bytes
	}
	return p
}

func (r *rpRecord) id() RestorePointID {
	if r.Name != "" {
		return RestorePointID(r.Name)
	}
	return formatRPID(r.Seq)
}

func getRP(tx *bolt.Tx, seq uint64) (*rpRecord, error) {
	v := tx.Bucket(bktRPs).Get(u64(seq))
	if v == nil {
		return nil, fmt.Errorf("restore point %s: %w", formatRPID(seq), ErrNotFound)
	}
	var r rpRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("restore point %s: %v: %w", formatRPID(seq), err, ErrCorrupt)
	}
	return &r, nil
}

func allRPs(tx *bolt.Tx) ([]*rpRecord, error) {
	var out []*rpRecord
	err := tx.Bucket(bktRPs).ForEach(func(k, v []byte) error {
		var r rpRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("restore point %x: %v: %w", k, err, ErrCorrupt)
		}
		out = append(out, &r)
		return nil
	})
	return out, err
}

type pendingRecord struct {
	Lineage uint64    `json:"lineage"`
	Base    uint64    `json:"base,omitempty"`
	Started time.Time `json:"started"`
}

// version encoding: a compact, deterministic binary form so that the version
// id (its SHA-256) is stable.
const versionFormat = 1

// Version flags.
const flagFolder = 1 << 0

func encodeVersion(it *Item) []byte {
	b := make([]byte, 0, 128+len(it.Chunks)*32)
	b = append(b, versionFormat)
	for _, s := range []string{it.DriveID, it.ItemID, it.Name, it.ETag, it.CTag, it.QuickXorHash} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendVarint(b, it.Size)
	var flags uint64
	if it.Folder {
		flags |= flagFolder
	}
	b = binary.AppendUvarint(b, flags)
	// Seconds and nanoseconds: UnixNano overflows outside 1678–2262.
	b = binary.AppendVarint(b, it.ModTime.Unix())
	b = binary.AppendUvarint(b, uint64(it.ModTime.Nanosecond()))
	b = append(b, it.SHA256[:]...)
	b = binary.AppendUvarint(b, uint64(len(it.Chunks)))
	for _, c := range it.Chunks {
		b = append(b, c[:]...)
	}
	return b
}

func decodeVersion(b []byte) (Item, error) {
	var it Item
	bad := func(what string) (Item, error) {
		return Item{}, fmt.Errorf("item version: %s: %w", what, ErrCorrupt)
	}
	if len(b) == 0 || b[0] != versionFormat {
		return bad("format")
	}
	b = b[1:]
	strs := make([]string, 6)
	for i := range strs {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return bad("string")
		}
		strs[i] = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	it.DriveID, it.ItemID, it.Name, it.ETag, it.CTag, it.QuickXorHash = strs[0], strs[1], strs[2], strs[3], strs[4], strs[5]
	var k int
	if it.Size, k = binary.Varint(b); k <= 0 {
		return bad("size")
	}
	b = b[k:]
	flags, k := binary.Uvarint(b)
	if k <= 0 || flags&^flagFolder != 0 {
		return bad("flags")
	}
	it.Folder = flags&flagFolder != 0
	b = b[k:]
	sec, k := binary.Varint(b)
	if k <= 0 {
		return bad("mtime")
	}
	b = b[k:]
	nsec, k := binary.Uvarint(b)
	if k <= 0 || nsec >= 1e9 {
		return bad("mtime")
	}
	it.ModTime = time.Unix(sec, int64(nsec)).UTC()
	b = b[k:]
	if len(b) < 32 {
		return bad("sha256")
	}
	copy(it.SHA256[:], b)
	b = b[32:]
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) != n*32 {
		return bad("chunks")
	}
	b = b[k:]
	it.Chunks = make([]ChunkID, n)
	for i := range it.Chunks {
		copy(it.Chunks[i][:], b[i*32:])
	}
	return it, nil
}

func versionKey(enc []byte) versionID { return sha256.Sum256(enc) }

// getVersion reads a version: a random key, so it counts as a read for
// dropMappedPages.
func (c *Catalog) getVersion(tx *bolt.Tx, id versionID) (Item, error) {
	c.noteRead(tx)
	v := tx.Bucket(bktVersions).Get(id[:])
	if v == nil {
		return Item{}, fmt.Errorf("item version %x missing: %w", id[:8], ErrCorrupt)
	}
	return decodeVersion(v)
}

func byItemPrefix(tenant, drive, item string) []byte {
	return []byte(tenant + "\x00" + drive + "\x00" + item + "\x00")
}

// ---- read API ----

func (c *Catalog) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.boltView(func(tx *bolt.Tx) error {
		// Lookups fault random pages in too (the engine asks about every
		// file it meets): drop them now and then.
		c.noteRead(tx)
		return fn(tx)
	})
}

// noteRead counts a read of a random part of the catalogue through tx and
// drops the mapped pages every dropEvery reads, so that neither many small
// transactions nor one long one (a listing, a walk of every restore point)
// leave the catalogue mapped in this process.
func (c *Catalog) noteRead(tx *bolt.Tx) {
	if c.reads.Add(1)%dropEvery == 0 {
		dropMappedPages(tx)
	}
}

func lineageID(tx *bolt.Tx, tenant, source string) (uint64, bool) {
	v := tx.Bucket(bktLineageNames).Get([]byte(tenant + "\x00" + source))
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// RestorePoint returns one committed restore point.
func (c *Catalog) RestorePoint(ctx context.Context, id RestorePointID) (RestorePoint, error) {
	seq, err := c.seqOf(id)
	if err != nil {
		return RestorePoint{}, err
	}
	var rp RestorePoint
	err = c.view(ctx, func(tx *bolt.Tx) error {
		rec, err := getRP(tx, seq)
		if err != nil {
			return err
		}
		rp = rec.public()
		return nil
	})
	return rp, err
}

// ListRestorePoints returns the restore points of tenant (all tenants when
// empty) and source (all sources when empty), oldest first.
func (c *Catalog) ListRestorePoints(ctx context.Context, tenant, source string) ([]RestorePoint, error) {
	var recs []*rpRecord
	err := c.view(ctx, func(tx *bolt.Tx) error {
		all, err := allRPs(tx)
		for _, r := range all {
			if (tenant == "" || r.Tenant == tenant) && (source == "" || r.Source == source) {
				recs = append(recs, r)
			}
		}
		return err
	})
	sortRecords(recs)
	out := make([]RestorePoint, len(recs))
	for i, r := range recs {
		out[i] = r.public()
	}
	return out, err
}

// sortRecords orders restore points oldest first: by time, then by the
// order this catalogue committed them.
func sortRecords(recs []*rpRecord) {
	sort.SliceStable(recs, func(i, j int) bool {
		if !recs[i].Time.Equal(recs[j].Time) {
			return recs[i].Time.Before(recs[j].Time)
		}
		return recs[i].Seq < recs[j].Seq
	})
}

// CountRestorePoints returns the number of committed restore points.
func (c *Catalog) CountRestorePoints(ctx context.Context) (int, error) {
	n := 0
	err := c.view(ctx, func(tx *bolt.Tx) error {
		n = tx.Bucket(bktRPs).Stats().KeyN
		return nil
	})
	return n, err
}

// Latest returns the newest committed restore point of (tenant, source).
func (c *Catalog) Latest(ctx context.Context, tenant, source string) (RestorePoint, error) {
	if err := validName("tenant", tenant, false); err != nil {
		return RestorePoint{}, err
	}
	if err := validName("source", source, false); err != nil {
		return RestorePoint{}, err
	}
	rps, err := c.ListRestorePoints(ctx, tenant, source)
	if err != nil {
		return RestorePoint{}, err
	}
	if len(rps) == 0 {
		return RestorePoint{}, fmt.Errorf("restore point of %s/%s: %w", tenant, source, ErrNotFound)
	}
	return rps[len(rps)-1], nil
}

// DeltaLink returns the deltaLink of drive in the newest restore point of
// (tenant, source) that has one for the drive, with that restore point's id.
// ErrNotFound when there is none (crawl the drive in full). An incremental
// job bases its restore point on Latest; when the newest deltaLink of a drive
// is older than Latest (the drive was reset or removed since), replaying
// from it is still correct: a delta from an older point is a superset of the
// changes since Latest, and re-putting an unchanged item writes nothing.
func (c *Catalog) DeltaLink(ctx context.Context, tenant, source, drive string) (string, RestorePointID, error) {
	rps, err := c.ListRestorePoints(ctx, tenant, source)
	if err != nil {
		return "", "", err
	}
	if tenant == "" || source == "" || drive == "" {
		return "", "", fmt.Errorf("deltaLink needs tenant, source and drive: %w", ErrInvalidArgument)
	}
	for i := len(rps) - 1; i >= 0; i-- {
		for _, d := range rps[i].Drives {
			if d.ID == drive && d.DeltaLink != "" {
				return d.DeltaLink, rps[i].ID, nil
			}
		}
	}
	return "", "", fmt.Errorf("deltaLink of %s/%s drive %s: %w", tenant, source, drive, ErrNotFound)
}

// ListItemsRequest selects a page of items of one restore point.
type ListItemsRequest struct {
	RestorePoint RestorePointID
	PathPrefix   string // plain string prefix of Item.Path; "" lists everything
	PageSize     int    // default 100, at most 10000
	PageToken    string // from the previous page; "" for the first
}

const (
	defaultPageSize = 100
	maxPageSize     = 10000
	tokenVersion    = "1"
)

// ListItems returns items of a restore point ordered by (drive, path, item
// id), which is stable across calls, and the token of the next page ("" at
// the end). Chunk lists are included.
func (c *Catalog) ListItems(ctx context.Context, req ListItemsRequest) ([]Item, string, error) {
	seq, err := c.seqOf(req.RestorePoint)
	if err != nil {
		return nil, "", err
	}
	size := req.PageSize
	if size <= 0 {
		size = defaultPageSize
	}
	if size > maxPageSize {
		size = maxPageSize
	}
	var after []byte
	if req.PageToken != "" {
		after, err = decodeToken(req.PageToken, req.RestorePoint)
		if err != nil {
			return nil, "", err
		}
	}
	var items []Item
	var next string
	err = c.view(ctx, func(tx *bolt.Tx) error {
		rec, err := getRP(tx, seq)
		if err != nil {
			return err
		}
		v, err := viewOf(tx, rec)
		if err != nil {
			return err
		}
		lb := tx.Bucket(bktLineages).Bucket(u64(rec.Lineage))
		if lb == nil {
			return nil
		}
		cur := lb.Bucket(bktPaths).Cursor()
		var afterDrive string
		if after != nil {
			afterDrive, _, _, _ = splitPathGroup(after)
		}
		for _, d := range rec.Drives {
			if after != nil && d.ID < afterDrive {
				continue // listed on earlier pages
			}
			prefix := append([]byte(d.ID+"\x00"), req.PathPrefix...)
			start := prefix
			if after != nil && d.ID == afterDrive && bytes.Compare(after, prefix) >= 0 {
				// Past every row of the last group returned: rows are group+8 bytes.
				start = append(append([]byte(nil), after...), bytes.Repeat([]byte{0xff}, 9)...)
			}
			it := newGroupIter(cur, start, prefix)
			for it.next() {
				if err := ctx.Err(); err != nil {
					return err
				}
				r, ok := v.visible(d.ID, it.rows)
				if !ok || r.tag != tagVersion {
					continue
				}
				if len(items) == size {
					next = encodeToken(req.RestorePoint, items[len(items)-1])
					return nil
				}
				item, err := c.getVersion(tx, r.ver)
				if err != nil {
					return err
				}
				_, item.Path, _, _ = splitPathGroup(it.group)
				items = append(items, item)
			}
			if it.err != nil {
				return it.err
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list items of %s: %w", req.RestorePoint, err)
	}
	return items, next, nil
}

// Page tokens carry the restore point and the last group returned, so a
// token of another restore point is refused rather than silently misused.
func encodeToken(rp RestorePointID, last Item) string {
	g := pathGroup(last.DriveID, last.Path, last.ItemID)
	return tokenVersion + "." + string(rp) + "." + hex.EncodeToString(g)
}

func decodeToken(tok string, rp RestorePointID) ([]byte, error) {
	parts := strings.SplitN(tok, ".", 3)
	if len(parts) != 3 || parts[0] != tokenVersion || parts[1] != string(rp) {
		return nil, fmt.Errorf("page token: %w", ErrInvalidArgument)
	}
	g, err := hex.DecodeString(parts[2])
	if err != nil || len(g) < 3 || g[len(g)-1] != 0 || bytes.Count(g, []byte{0}) != 3 {
		return nil, fmt.Errorf("page token: %w", ErrInvalidArgument)
	}
	return g, nil
}

// Item returns the item with itemID in restore point rp. If several drives
// of rp hold that id, the first drive in id order wins; ItemInDrive is exact.
func (c *Catalog) Item(ctx context.Context, rp RestorePointID, itemID string) (Item, error) {
	return c.ItemInDrive(ctx, rp, "", itemID)
}

// ItemInDrive returns the item (driveID, itemID) of restore point rp; an
// empty driveID searches all drives.
func (c *Catalog) ItemInDrive(ctx context.Context, rp RestorePointID, driveID, itemID string) (Item, error) {
	seq, err := c.seqOf(rp)
	if err != nil {
		return Item{}, err
	}
	if err := validName("item id", itemID, false); err != nil {
		return Item{}, err
	}
	var it Item
	err = c.view(ctx, func(tx *bolt.Tx) error {
		rec, err := getRP(tx, seq)
		if err != nil {
			return err
		}
		v, err := viewOf(tx, rec)
		if err != nil {
			return err
		}
		lb := tx.Bucket(bktLineages).Bucket(u64(rec.Lineage))
		if lb == nil {
			return fmt.Errorf("item %s: %w", itemID, ErrNotFound)
		}
		cur := lb.Bucket(bktIDs).Cursor()
		for _, d := range rec.Drives {
			if driveID != "" && d.ID != driveID {
				continue
			}
			rows, err := groupRows(cur, idGroup(itemID, d.ID))
			if err != nil {
				return err
			}
			r, ok := v.visible(d.ID, rows)
			if !ok || r.tag != tagVersion {
				continue
			}
			it, err = c.getVersion(tx, r.ver)
			if err != nil {
				return err
			}
			it.Path = r.path
			return nil
		}
		return fmt.Errorf("item %s in %s: %w", itemID, rp, ErrNotFound)
	})
	return it, err
}

// LookupVersion finds a previously stored version of (driveID, itemID) in any
// restore point of tenant whose cTag equals cTag (when cTag is not empty) or
// whose quickXorHash equals quickXorHash (when not empty), so that an engine
// can skip downloading it again. The returned Item's Path is empty.
func (c *Catalog) LookupVersion(ctx context.Context, tenant, driveID, itemID, cTag, quickXorHash string) (Item, bool, error) {
	for _, f := range []struct{ what, v string }{{"tenant", tenant}, {"drive id", driveID}, {"item id", itemID}} {
		if err := validName(f.what, f.v, false); err != nil {
			return Item{}, false, err
		}
	}
	if cTag == "" && quickXorHash == "" {
		return Item{}, false, fmt.Errorf("lookup needs a cTag or quickXorHash: %w", ErrInvalidArgument)
	}
	var found Item
	var ok bool
	err := c.view(ctx, func(tx *bolt.Tx) error {
		prefix := byItemPrefix(tenant, driveID, itemID)
		cur := tx.Bucket(bktByItem).Cursor()
		for k, _ := cur.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = cur.Next() {
			var id versionID
			copy(id[:], k[len(prefix):])
			it, err := c.getVersion(tx, id)
			if err != nil {
				return err
			}
			if !it.Folder && ((cTag != "" && it.CTag == cTag) || (quickXorHash != "" && it.QuickXorHash == quickXorHash)) {
				found, ok = it, true
				return nil
			}
		}
		return nil
	})
	return found, ok, err
}

// MarshalItem encodes an item with its path, compactly and
// deterministically: restore point manifests carry items in this form.
func MarshalItem(it Item) []byte {
	b := binary.AppendUvarint(nil, uint64(len(it.Path)))
	b = append(b, it.Path...)
	return append(b, encodeVersion(&it)...)
}

// UnmarshalItem decodes MarshalItem's form.
func UnmarshalItem(b []byte) (Item, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return Item{}, fmt.Errorf("item path: %w", ErrCorrupt)
	}
	path := string(b[k : k+int(n)])
	it, err := decodeVersion(b[k+int(n):])
	it.Path = path
	return it, err
}
