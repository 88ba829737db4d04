package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/lease"
	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// Re-exported catalogue types, so callers import only repo.
type (
	// Item is one item version of a restore point.
	Item = catalog.Item
	// RestorePoint is a committed restore point.
	RestorePoint = catalog.RestorePoint
	// RestorePointID names a restore point.
	RestorePointID = catalog.RestorePointID
	// Drive is one drive of a restore point.
	Drive = catalog.Drive
	// ListItemsRequest selects a page of items.
	ListItemsRequest = catalog.ListItemsRequest
	// ForgetPolicy selects restore points to keep.
	ForgetPolicy = catalog.ForgetPolicy
)

// Repository is an open backup repository. It is safe for concurrent use by
// several writer sessions, readers, Verify and Prune.
type Repository struct {
	dir   string // local: the catalogue, and everything else unless Options.Store
	opts  Options
	fsys  FS // local files: the key, temp files
	store Store
	log   *zap.Logger
	cfg   config
	seal  *sealer
	// chunkerKey derives the chunker's Gear table (config, sealed).
	chunkerKey []byte
	cat        *catalog.Catalog
	enc        *zstd.Encoder // nil with CompressionOff
	dec        *zstd.Decoder
	// slots are the chunk buffers of writes in flight: taking one is the
	// permission to hold a chunk, so write memory is bounded by
	// cap(slots) × (8 MiB input + its encoded output) + cap(scanners) ×
	// 16 MiB however many sessions and streams there are.
	slots chan *slotBufs
	// scanners are the chunkers of streams over minChunkSize being cut;
	// a Store takes one before any slot (lock order: scanner, then slot).
	scanners chan *scanner

	mu       sync.Mutex // guards the fields below
	idx      *memIndex
	sessions map[*Session]struct{}
	inflight map[PackID]struct{} // packs being renamed/indexed by writers
	held     map[string]int      // leases this process holds, by name
	// publishing are restore points committed in the catalogue whose
	// manifests are being published: Sync must not take them for forgotten.
	publishing map[RestorePointID]struct{}
	pruning    int           // prunes running
	retired    []*protection // protections of sessions that ended while a prune ran

	maint  sync.RWMutex // Prune takes it exclusively, Verify shared
	syncMu sync.Mutex   // one Sync at a time
	closed atomic.Bool
}

// slotBufs are the buffers one in-flight chunk uses.
type slotBufs struct {
	in  []byte // the chunk's plaintext, copied out of the scanner
	out []byte // its compressed and sealed form
}

// prefixPool holds the buffers a Store reads a stream's first
// minChunkSize+1 bytes into: a stream that ends within them is one chunk and
// needs no scanner (most files are small).
var prefixPool = sync.Pool{New: func() any { b := make([]byte, minChunkSize+1); return &b }}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<20); return &b }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, 0, n)
	}
	*bp = (*bp)[:0]
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) > maxChunkSize+maxChunkSize/8+4096 {
		return // do not keep oversized buffers alive
	}
	bufPool.Put(bp)
}

// Open opens the repository in dir (creating it when opts.Create is set and
// there is none). Temp files left by a crashed writer are removed.
func Open(dir string, opts Options) (*Repository, error) {
	opts = opts.withDefaults()
	if opts.KeyFile == "" {
		opts.KeyFile = filepath.Join(dir, defaultKeyName)
	}
	st := opts.Store
	if st == nil {
		st = NewDirStore(dir, opts.FS)
	}
	r := &Repository{
		dir: dir, opts: opts, fsys: opts.FS, store: st, log: opts.Logger.Named("repo"),
		idx: newMemIndex(opts.Logger, st.TempDir()), sessions: map[*Session]struct{}{}, inflight: map[PackID]struct{}{},
		held: map[string]int{}, publishing: map[RestorePointID]struct{}{},
		slots: make(chan *slotBufs, opts.Workers+2), scanners: make(chan *scanner, opts.Workers),
	}
	for i := 0; i < cap(r.slots); i++ {
		r.slots <- &slotBufs{} // buffers are allocated on first use
	}
	for i := 0; i < cap(r.scanners); i++ {
		r.scanners <- &scanner{} // chunkers are created on first use
	}
	ctx := context.Background()
	raw, err := readObject(ctx, st, configName)
	if errors.Is(err, fs.ErrNotExist) && opts.Create && !opts.ReadOnly {
		// Agents starting together on an empty shared store must not each
		// write a config (with its own chunker key): one creates it, under
		// a lease, and the others read it.
		lctx, cancel := context.WithTimeout(ctx, 2*opts.LeaseTTL)
		l, lerr := lease.AcquireWait(lctx, opts.Leases, "create", opts.LeaseTTL, max(opts.LeaseTTL/20, 50*time.Millisecond))
		cancel()
		if lerr != nil {
			return nil, fmt.Errorf("create repository %s: %w", st, lerr)
		}
		defer func() { _ = l.Release(context.Background()) }()
		raw, err = readObject(ctx, st, configName)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist) && opts.Create && !opts.ReadOnly:
		if err := r.initialise(); err != nil {
			return nil, fmt.Errorf("create repository %s: %w", st, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("repository %s: no config: %w", st, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("repository %s: read config: %w", st, err)
	default:
		if err := json.Unmarshal(raw, &r.cfg); err != nil {
			return nil, fmt.Errorf("repository %s: config: %w", st, ErrCorrupt)
		}
		if r.cfg.Version != configVersion {
			return nil, fmt.Errorf("repository %s: config version %d, this build reads version %d: %w", st, r.cfg.Version, configVersion, ErrCorrupt)
		}
		var key []byte
		if r.cfg.Encryption == encAESGCM {
			if key, err = loadKey(r.fsys, opts.KeyFile); err != nil {
				return nil, fmt.Errorf("repository %s: %w", dir, err)
			}
		}
		if r.seal, err = newSealer(key); err != nil {
			return nil, err
		}
		if r.chunkerKey, err = r.cfg.open(r.seal); err != nil {
			return nil, fmt.Errorf("repository %s: %w", dir, err)
		}
	}
	if err := r.setupCodecs(); err != nil {
		return nil, err
	}
	r.cat, err = catalog.Open(filepath.Join(dir, "catalog.db"), catalog.Options{
		Clock: opts.Clock, Logger: r.log, ReadOnly: opts.ReadOnly,
	})
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	if !opts.ReadOnly {
		// We hold the catalogue's exclusive lock: no other writer uses this
		// temp directory, so every file in it is debris of a crash.
		if err := r.fsys.MkdirAll(st.TempDir(), 0o700); err != nil {
			_ = r.cat.Close()
			return nil, fmt.Errorf("repository %s: temp dir: %w", dir, err)
		}
		r.cleanTemp()
	}
	if _, err := r.loadIndex(context.Background()); err != nil {
		_ = r.cat.Close()
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	return r, nil
}

func (r *Repository) initialise() error {
	o := r.opts
	if err := r.fsys.MkdirAll(r.store.TempDir(), 0o700); err != nil {
		return err
	}
	for _, d := range []string{r.dir, filepath.Dir(r.dir)} {
		if err := r.fsys.SyncDir(d); err != nil {
			return fmt.Errorf("fsync %s: %w", d, err)
		}
	}
	chunkerKey, err := newChunkerKey()
	if err != nil {
		return err
	}
	id, err := newRandomID()
	if err != nil {
		return err
	}
	r.chunkerKey = chunkerKey
	r.cfg = config{Version: configVersion, ID: id, Created: o.Clock().UTC(), Chunker: currentChunker}
	var key []byte
	if o.DisableEncryption {
		r.cfg.Encryption = encNone
		r.cfg.ChunkerKey = hex.EncodeToString(chunkerKey)
	} else {
		r.cfg.Encryption = encAESGCM
		// A key left by an initialisation that crashed before the config
		// was written protects nothing yet: reuse it.
		key, err = loadKey(r.fsys, o.KeyFile)
		if errors.Is(err, ErrNotFound) {
			key, err = createKey(r.fsys, o.KeyFile)
		}
		if err != nil {
			return err
		}
	}
	if r.seal, err = newSealer(key); err != nil {
		return err
	}
	if key != nil {
		sp, _ := json.Marshal(secretParams{ChunkerKey: hex.EncodeToString(chunkerKey), ID: id})
		sealed, err := r.seal.seal(nil, sp, aadConfig)
		if err != nil {
			return err
		}
		r.cfg.Sealed = hex.EncodeToString(sealed)
	}
	raw, _ := json.MarshalIndent(r.cfg, "", "  ")
	// The config goes last: its presence is what makes the directory a repository.
	return writeObject(context.Background(), r.store, configName, raw)
}

func (r *Repository) setupCodecs() error {
	level := zstd.SpeedFastest
	if r.opts.Compression == CompressionDefault {
		level = zstd.SpeedDefault
	}
	if r.opts.Compression != CompressionOff {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(r.opts.Workers),
			zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
		if err != nil {
			return fmt.Errorf("zstd encoder: %w", err)
		}
		r.enc = enc
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(r.opts.Workers), zstd.WithDecoderMaxMemory(maxChunkSize*2))
	if err != nil {
		return fmt.Errorf("zstd decoder: %w", err)
	}
	r.dec = dec
	return nil
}

func (r *Repository) cleanTemp() {
	tmp := r.store.TempDir()
	entries, err := r.fsys.ReadDir(tmp)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		r.log.Warn("list temp dir", zap.Error(err))
		return
	}
	for _, e := range entries {
		if err := r.fsys.Remove(filepath.Join(tmp, e.Name())); err != nil {
			r.log.Warn("remove temp file", zap.String("file", e.Name()), zap.Error(err))
		}
	}
}

// indexProblem is an index file that could not be loaded.
type indexProblem struct {
	name string
	err  error
}

// loadIndex reads every index file into a fresh in-memory index, one file
// at a time. Damaged index files are skipped (Verify reports them; their
// chunks then count as missing) rather than making the repository unusable.
func (r *Repository) loadIndex(ctx context.Context) ([]indexProblem, error) {
	names, err := r.listIndex(ctx)
	if err != nil {
		return nil, err
	}
	idx := newMemIndex(r.log, r.indexDir())
	var problems []indexProblem
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		packs, err := r.readIndexFile(name)
		if err != nil {
			problems = append(problems, indexProblem{name, err})
			r.log.Warn("index file unusable", zap.String("file", name), zap.Error(err))
			continue
		}
		idx.addFile(name, packs)
	}
	r.mu.Lock()
	old := r.idx
	r.idx = idx
	r.mu.Unlock()
	old.chunks.close()
	if !r.opts.ReadOnly && len(problems) == 0 {
		if err := r.compactIndex(ctx); err != nil {
			// Not fatal: the individual files are still valid.
			r.log.Warn("compact index", zap.Error(err))
		}
	}
	return problems, nil
}

// compactIndexFiles: above this many small index files (writers add one
// per pack), Open merges them so that opening stays fast.
const compactIndexFiles = 256

// compactIndexChunks is how many chunks the files compaction writes list
// (about 4 MiB each): reading or writing one needs that much memory at
// most, however large the repository. A file listing less than half of it
// is small. A variable for tests.
var compactIndexChunks = 64 << 10

// compactIndex merges the small index files into files of about
// compactIndexChunks chunks, reading them again one at a time. It runs at
// Open, before any writer exists: new files durable first, then the old
// ones removed (a crash in between only leaves duplicates).
func (r *Repository) compactIndex(ctx context.Context) error {
	r.mu.Lock()
	var small []string
	for name, ids := range r.idx.files {
		n := 0
		for _, id := range ids {
			if slot, ok := r.idx.packSlot[id]; ok {
				n += r.idx.packs[slot].chunks
			}
		}
		if n < compactIndexChunks/2 {
			small = append(small, name)
		}
	}
	r.mu.Unlock()
	if len(small) <= compactIndexFiles {
		return nil
	}
	sort.Strings(small)
	var (
		batch    []indexedPack
		chunks   int
		from     []string // the files batch holds the packs of
		seen     = map[PackID]bool{}
		written  = map[string][]PackID{}
		consumed []string
	)
	flush := func() error {
		if len(from) < 2 { // nothing to merge
			return nil
		}
		sort.Slice(batch, func(i, j int) bool { return string(batch[i].id[:]) < string(batch[j].id[:]) })
		data, name, err := encodeIndex(r.seal, batch)
		if err != nil {
			return err
		}
		if err := writeObject(ctx, r.store, indexKey(name), data); err != nil {
			return err
		}
		ids := make([]PackID, len(batch))
		for i, p := range batch {
			ids[i] = p.id
		}
		written[name] = ids
		consumed = append(consumed, from...)
		batch, chunks, from = nil, 0, nil
		return nil
	}
	for _, name := range small {
		packs, err := r.readIndexFile(name)
		if err != nil {
			return err
		}
		for _, p := range packs {
			if !seen[p.id] {
				seen[p.id] = true
				batch = append(batch, p)
				chunks += len(p.entries)
			}
		}
		from = append(from, name)
		if chunks >= compactIndexChunks {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	r.mu.Lock()
	var old []string
	for _, f := range consumed {
		if _, ok := written[f]; !ok { // rewritten identical: same name
			delete(r.idx.files, f)
			old = append(old, indexKey(f))
		}
	}
	for name, ids := range written {
		r.idx.files[name] = ids
	}
	r.mu.Unlock()
	return r.store.Remove(ctx, old...)
}

// indexDir is where the chunk index keeps its run: the temp directory,
// which a read-only open does not create (the catalogue's directory then).
func (r *Repository) indexDir() string {
	if r.opts.ReadOnly {
		return r.dir
	}
	return r.store.TempDir()
}

// listIndex returns the names of the index files in the store.
func (r *Repository) listIndex(ctx context.Context) ([]string, error) {
	var names []string
	err := r.store.List(ctx, "index/", func(o ObjectInfo) error {
		names = append(names, strings.TrimPrefix(o.Key, "index/"))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	sort.Strings(names)
	return names, nil
}

func (r *Repository) readIndexFile(name string) ([]indexedPack, error) {
	var packs []indexedPack
	err := retryTransient(func() error {
		data, err := readObject(context.Background(), r.store, indexKey(name))
		if err != nil {
			return err
		}
		packs, err = decodeIndex(r.seal, name, data)
		return err
	})
	return packs, err
}

// retryTransient runs fn up to three times while it fails transiently.
func retryTransient(fn func() error) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = fn(); err == nil || !isTransient(err) {
			return err
		}
		time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
	}
	return err
}

// Close closes the repository. Sessions still open are aborted.
func (r *Repository) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.mu.Lock()
	var open []*Session
	for s := range r.sessions {
		open = append(open, s)
	}
	r.mu.Unlock()
	for _, s := range open {
		_ = s.Abort()
	}
	if r.enc != nil {
		_ = r.enc.Close()
	}
	r.dec.Close()
	r.mu.Lock()
	r.idx.chunks.close()
	r.mu.Unlock()
	return r.cat.Close()
}

func (r *Repository) check() error {
	if r.closed.Load() {
		return fmt.Errorf("repository: %w", ErrClosed)
	}
	return nil
}

// Stats is repository usage for GetAgentInfo.
type Stats struct {
	Packs         int   // pack files
	IndexFiles    int   // index files
	Chunks        int64 // distinct chunks
	RawBytes      int64 // plaintext bytes of the distinct chunks
	StoredBytes   int64 // their bytes after compression and encryption
	CatalogBytes  int64 // catalogue file size
	BytesOnDisk   int64 // packs + index files + catalogue
	RestorePoints int   // committed restore points
}

// Stats returns usage figures from the in-memory index and the file sizes.
func (r *Repository) Stats(ctx context.Context) (Stats, error) {
	if err := r.check(); err != nil {
		return Stats{}, err
	}
	r.mu.Lock()
	st := Stats{Packs: r.idx.livePacks(), IndexFiles: len(r.idx.files), Chunks: int64(r.idx.chunks.len()), RawBytes: r.idx.raw, StoredBytes: r.idx.stored}
	for _, p := range r.idx.packs {
		if p.live {
			st.BytesOnDisk += p.size
		}
	}
	files := make([]string, 0, len(r.idx.files))
	for name := range r.idx.files {
		files = append(files, name)
	}
	r.mu.Unlock()
	for _, name := range files {
		if err := ctx.Err(); err != nil {
			return Stats{}, err
		}
		if oi, err := r.store.Stat(ctx, indexKey(name)); err == nil {
			st.BytesOnDisk += oi.Size
		}
	}
	n, err := r.cat.Size()
	if err != nil {
		return Stats{}, fmt.Errorf("catalogue size: %w", err)
	}
	st.CatalogBytes = n
	st.BytesOnDisk += n
	if st.RestorePoints, err = r.cat.CountRestorePoints(ctx); err != nil {
		return Stats{}, err
	}
	return st, nil
}

// Store returns the store of the repository's objects.
func (r *Repository) Store() Store { return r.store }

// Dir returns the repository directory.
func (r *Repository) Dir() string { return r.dir }

// Encrypted reports whether the repository encrypts its data.
func (r *Repository) Encrypted() bool { return r.seal.aead != nil }

// ---- chunk codec ----

// encodeChunk compresses (when that shrinks it) and seals plain into *out,
// which it grows as needed, and returns the stored form: it aliases *out, or
// plain itself when the repository neither compresses nor encrypts it.
func (r *Repository) encodeChunk(id ChunkID, plain []byte, out *[]byte) ([]byte, uint8, error) {
	over := r.seal.overhead()
	if need := len(plain) + len(plain)/64 + 1024 + over; cap(*out) < need {
		// Grown by doubling up to the largest chunk's size: a slot that only
		// ever sees small files (most of a OneDrive) stays small, and one
		// that sees large ones reaches the full size in a few steps.
		*out = make([]byte, 0, max(need, min(2*cap(*out), maxChunkSize+maxChunkSize/64+1024+over)))
	}
	buf := (*out)[:0]
	if r.enc != nil && len(plain) >= 64 && r.worthCompressing(plain, buf) {
		// Compress after room for the nonce so that sealing runs in place.
		c := r.enc.EncodeAll(plain, buf[:nonceSize])
		if cap(c) > cap(*out) {
			*out = c[:0] // zstd grew it; keep the bigger buffer
		}
		if payload := c[nonceSize:]; len(payload) < len(plain)-len(plain)/64 { // keep it only if it saves over ~1.5 %
			if r.seal.aead == nil {
				return append(c[:0], payload...), flagZstd, nil
			}
			sealed, err := r.seal.seal(c[:0], payload, id[:])
			return sealed, flagZstd, err
		}
		buf = (*out)[:0]
	}
	if r.seal.aead == nil {
		return plain, 0, nil // stored as is: no copy
	}
	sealed, err := r.seal.seal(buf, plain, id[:])
	return sealed, 0, err
}

// Compressibility sampling: compressing an incompressible chunk only to
// throw the result away cost ~7 % of the CPU time of a write (already
// compressed files: photos, video, Office documents, archives). A chunk larger than
// compressSamples × compressSampleSize is compressed only when samples spread
// evenly over it (first and last bytes included) save at least as much as
// the whole chunk must; the samples cost ~5 % of compressing it all.
// A chunk whose compressible part misses every sample is stored
// uncompressed: at most (1 - 1/compressSamples) of it, in stretches shorter
// than the sample stride.
const (
	compressSampleSize = 8 << 10
	compressSamples    = 8
)

// worthCompressing reports whether plain is worth compressing as a whole.
// scratch is a buffer the samples may be compressed into.
func (r *Repository) worthCompressing(plain, scratch []byte) bool {
	if len(plain) <= 2*compressSamples*compressSampleSize {
		return true // small enough to just try
	}
	stride := (len(plain) - compressSampleSize) / (compressSamples - 1)
	compressed := 0
	for i := 0; i < compressSamples; i++ {
		sample := plain[i*stride : i*stride+compressSampleSize]
		compressed += len(r.enc.EncodeAll(sample, scratch[:0]))
	}
	const sampled = compressSamples * compressSampleSize
	return compressed < sampled-sampled/64
}

// decodeChunk opens stored (in place), decompresses into dst and checks the
// plaintext hashes to id.
func (r *Repository) decodeChunk(id ChunkID, loc location, stored, dst []byte) ([]byte, error) {
	payload, err := r.seal.open(stored, id[:])
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	plain := payload
	if loc.flags&flagZstd != 0 {
		plain, err = r.dec.DecodeAll(payload, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("chunk %s: decompress: %v: %w", id, err, ErrCorrupt)
		}
	} else {
		plain = append(dst[:0], payload...)
	}
	if uint32(len(plain)) != loc.raw || sha256.Sum256(plain) != id {
		return nil, fmt.Errorf("chunk %s: content does not hash to its id: %w", id, ErrCorrupt)
	}
	return plain, nil
}

func isPackName(name string) bool {
	return len(name) == 64 && strings.Trim(name, "0123456789abcdef") == ""
}
