package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// SessionOptions start a writer session: one job's restore point.
type SessionOptions struct {
	Tenant string
	Source string         // caller's key, e.g. "onedrive:<user-id>" or "site:<site-id>"
	Base   RestorePointID // "" for a full restore point; else unchanged items are inherited from Base
	Label  string         // kept with the restore point, e.g. the job id
	// Lease, from AcquireSource, keeps other agents from writing the
	// source; Commit fails if it was lost. Nil: the caller coordinates.
	Lease *SourceLease
}

// Session is one job writing one restore point: it stores byte streams as
// chunks in its own pack files, records item versions, deletions and
// deltaLinks, and commits them (packs → index → restore point). Store,
// PutItem and the other recording methods may be called concurrently;
// Commit and Abort wait for running Store calls.
//
// While a session is open, every chunk it wrote or deduplicated against is
// protected from Prune, with the rest of its pack (see protection).
type Session struct {
	r      *Repository
	txn    *catalog.Txn
	man    *manifestWriter
	lease  *SourceLease // nil: the caller coordinates writers of the source
	tenant string

	storeMu sync.RWMutex // Store holds it shared; Commit/Abort exclusively
	done    bool         // guarded by storeMu (write) / read under RLock

	pmu sync.Mutex // guards pw
	pw  *packWriter

	errMu sync.Mutex
	err   error // first write failure: the session cannot commit

	prot *protection // guarded by r.mu

	newChunks atomic.Int64
	newBytes  atomic.Int64
}

// NewSession starts a writer session.
func (r *Repository) NewSession(ctx context.Context, opts SessionOptions) (*Session, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if r.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	if opts.Lease != nil {
		if err := opts.Lease.check(opts.Tenant, opts.Source); err != nil {
			return nil, err
		}
	}
	txn, err := r.cat.Begin(ctx, catalog.BeginOptions{Tenant: opts.Tenant, Source: opts.Source, Base: opts.Base, Label: opts.Label})
	if err != nil {
		return nil, err
	}
	man, err := r.newManifest(manifestHeader{Name: txn.ID(), Tenant: opts.Tenant, Source: opts.Source, Label: opts.Label, Base: opts.Base})
	if err != nil {
		_ = txn.Abort()
		return nil, err
	}
	s := &Session{r: r, txn: txn, man: man, lease: opts.Lease, tenant: opts.Tenant, prot: newProtection()}
	r.mu.Lock()
	r.sessions[s] = struct{}{}
	r.mu.Unlock()
	return s, nil
}

// ID is the id the restore point will have once committed.
func (s *Session) ID() RestorePointID { return s.txn.ID() }

func (s *Session) fail(err error) {
	s.errMu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.errMu.Unlock()
}

func (s *Session) failed() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err != nil {
		return fmt.Errorf("session failed earlier: %w", s.err)
	}
	return nil
}

// Stored describes a stored stream.
type Stored struct {
	Chunks    []ChunkID
	Size      int64
	SHA256    [32]byte
	NewChunks int   // chunks this call added to the repository (the rest deduplicated)
	NewBytes  int64 // stored bytes those chunks took
}

type chunkJob struct {
	sb   *slotBufs
	data []byte
	id   ChunkID
	refs atomic.Int32 // worker + file hash; the last one frees the buffer and the slot
}

func (j *chunkJob) release(r *Repository) {
	if j.refs.Add(-1) == 0 {
		r.slots <- j.sb
	}
}

// Store reads rd to EOF and stores it as content-defined chunks. Memory is
// bounded by the repository's chunk slots and scanners, never by the
// stream's size. The stream is not part of any restore point until an item
// refers to its chunks (PutItem) and the session commits.
func (s *Session) Store(ctx context.Context, rd io.Reader) (Stored, error) {
	s.storeMu.RLock()
	defer s.storeMu.RUnlock()
	if s.done {
		return Stored{}, fmt.Errorf("store: %w", ErrClosed)
	}
	if err := s.failed(); err != nil {
		return Stored{}, err
	}
	// A stream that ends within minChunkSize bytes is one chunk whatever
	// the chunker would do: read that much first, and only a longer stream
	// takes a scanner (16 MiB) and goes through the pipeline.
	prefix := prefixPool.Get().(*[]byte)
	defer prefixPool.Put(prefix)
	n, err := io.ReadFull(rd, *prefix)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return s.storeWhole(ctx, (*prefix)[:n])
	case err != nil:
		return Stored{}, fmt.Errorf("read stream: %w", err)
	}
	return s.storeChunked(ctx, io.MultiReader(bytes.NewReader((*prefix)[:n]), rd))
}

// storeWhole stores a stream short enough to be a single chunk, in the
// calling goroutine: hashing it once gives both its chunk id and its SHA-256.
func (s *Session) storeWhole(ctx context.Context, data []byte) (Stored, error) {
	out := Stored{Chunks: []ChunkID{}, Size: int64(len(data))}
	if len(data) == 0 {
		out.SHA256 = sha256.Sum256(nil)
		return out, nil
	}
	r := s.r
	var sb *slotBufs
	select {
	case sb = <-r.slots:
	case <-ctx.Done():
		return Stored{}, ctx.Err()
	}
	// The data stays in the caller's prefix buffer; the slot lends its
	// output buffer (and bounds how many chunks are encoded at once).
	j := &chunkJob{sb: sb, data: data}
	added, full, err := s.storeChunk(j)
	r.slots <- sb
	if err == nil && full != nil {
		err = r.finishPack(full, s.prot)
	}
	if err != nil {
		s.fail(err)
		return Stored{}, err
	}
	out.Chunks = append(out.Chunks, j.id)
	out.SHA256 = j.id
	if added > 0 {
		out.NewChunks, out.NewBytes = 1, added
		s.newChunks.Add(1)
		s.newBytes.Add(added)
	}
	return out, nil
}

// storeChunked cuts a stream longer than minChunkSize into chunks. The
// calling goroutine only chunks (the one stage that cannot be split); every
// chunk is copied into a slot and hashed, compressed, sealed and written by
// its own goroutine while one more goroutine computes the stream's SHA-256
// in order, so the work spreads over the cores.
func (s *Session) storeChunked(ctx context.Context, rd io.Reader) (Stored, error) {
	r := s.r
	var sc *scanner
	select {
	case sc = <-r.scanners:
	case <-ctx.Done():
		return Stored{}, ctx.Err()
	}
	defer func() {
		_ = sc.reset(r.chunkerKey, nil) // do not keep the caller's reader alive
		r.scanners <- sc
	}()
	if err := sc.reset(r.chunkerKey, rd); err != nil {
		return Stored{}, err
	}

	var (
		wg      sync.WaitGroup
		jobs    []*chunkJob
		held    *chunkJob // first chunk, hashed into the stream hash only if a second one comes
		size    int64
		newN    atomic.Int64
		newB    atomic.Int64
		loopErr error
	)
	// Every queued job holds a slot, so the queue never holds more than
	// the slots.
	fileHash := sha256.New()
	hashQ := make(chan *chunkJob, cap(r.slots))
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for j := range hashQ {
			fileHash.Write(j.data)
			j.release(r)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			loopErr = err
			break
		}
		if err := s.failed(); err != nil {
			loopErr = err
			break
		}
		c, err := sc.next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				loopErr = fmt.Errorf("read stream: %w", err)
			}
			break
		}
		var sb *slotBufs
		if held != nil {
			select {
			case sb = <-r.slots:
			default:
				// Slots are scarce: do not pin one for the first chunk's
				// deferred hashing (many Stores at once would deadlock).
				hashQ <- held
				held = nil
			}
		}
		if sb == nil {
			select {
			case sb = <-r.slots:
			case <-ctx.Done():
				loopErr = ctx.Err()
			}
			if loopErr != nil {
				break
			}
		}
		if cap(sb.in) < maxChunkSize {
			sb.in = make([]byte, 0, maxChunkSize)
		}
		// The scanner reuses its buffer at the next call: the chunk moves
		// to the slot (a memmove at ~20 GB/s, under a tenth of the cost of
		// cutting it).
		j := &chunkJob{sb: sb, data: append(sb.in[:0], c...)}
		j.refs.Store(2)
		jobs = append(jobs, j)
		size += int64(len(c))
		if len(jobs) == 1 {
			held = j
		} else {
			// A second chunk: the first, if still held, goes into the hash first.
			if held != nil {
				hashQ <- held
				held = nil
			}
			hashQ <- j
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, full, err := s.storeChunk(j)
			// The blob is in the pack file (or was a duplicate): free the
			// slot before a full pack's fsync, which may take a while.
			j.release(r)
			if err == nil && full != nil {
				err = r.finishPack(full, s.prot)
			}
			if err != nil {
				s.fail(err)
				return
			}
			if n > 0 {
				newN.Add(1)
				newB.Add(n)
			}
		}()
	}
	close(hashQ)
	wg.Wait()
	<-hashed
	var out Stored
	if held != nil {
		out.SHA256 = held.id // a single chunk: its id is the stream's SHA-256
		held.release(r)
	} else {
		copy(out.SHA256[:], fileHash.Sum(nil))
	}
	if loopErr != nil {
		return Stored{}, loopErr
	}
	if err := s.failed(); err != nil {
		return Stored{}, err
	}
	out.Chunks = make([]ChunkID, len(jobs))
	for i, j := range jobs {
		out.Chunks[i] = j.id
	}
	out.Size = size
	out.NewChunks = int(newN.Load())
	out.NewBytes = newB.Load()
	s.newChunks.Add(newN.Load())
	s.newBytes.Add(newB.Load())
	return out, nil
}

// claim registers id as referenced by the session and reports whether it is
// already stored (in the index, or being written by this session).
func (s *Session) claim(id ChunkID) bool {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := s.prot.pending[id]; ok {
		return true
	}
	if loc, ok := r.idx.chunks.get(id); ok {
		s.prot.packs[loc.pack] = struct{}{}
		return true
	}
	s.prot.pending[id] = struct{}{}
	return false
}

// storeChunk hashes, deduplicates, encodes and packs one chunk; it returns
// the stored bytes it added (0 when deduplicated) and, when the chunk filled
// the session's pack, that pack, which the caller must finishPack once it
// has released the chunk's slot.
func (s *Session) storeChunk(j *chunkJob) (int64, *packWriter, error) {
	j.id = sha256.Sum256(j.data)
	if s.claim(j.id) {
		return 0, nil, nil
	}
	stored, flags, err := s.r.encodeChunk(j.id, j.data, &j.sb.out)
	if err != nil {
		return 0, nil, err
	}
	full, err := s.addBlob(j.id, stored, len(j.data), flags)
	if err != nil {
		return 0, nil, err
	}
	return int64(len(stored)), full, nil
}

// addBlob appends a blob to the session's pack and returns the pack if that
// filled it (it is then no longer the session's).
func (s *Session) addBlob(id ChunkID, stored []byte, raw int, flags uint8) (*packWriter, error) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.pw == nil {
		pw, err := newPackWriter(s.r.store)
		if err != nil {
			return nil, fmt.Errorf("new pack: %w", err)
		}
		s.pw = pw
	}
	if err := s.pw.add(id, stored, raw, flags); err != nil {
		s.pw.abort()
		s.pw = nil
		return nil, fmt.Errorf("append to pack: %w", err)
	}
	var full *packWriter
	if s.pw.offset >= s.r.opts.PackSize {
		full, s.pw = s.pw, nil
	}
	return full, nil
}

// finishPack makes a pack durable and then indexes it: pack (temp → fsync →
// rename → dir fsync) → index file (same) → in-memory index. Only then can
// other sessions deduplicate against its chunks.
// owner, when not nil, is the protection of the session that wrote the pack:
// its chunks move from pending to the pack's slot as the pack is indexed.
func (r *Repository) finishPack(pw *packWriter, owner *protection) error {
	if len(pw.entries) == 0 {
		pw.abort()
		return nil
	}
	id, size, err := pw.finish(r.seal)
	if err != nil {
		pw.abort()
		return fmt.Errorf("finish pack: %w", err)
	}
	r.mu.Lock()
	r.inflight[id] = struct{}{} // prune must not take it for an orphan
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.inflight, id)
		r.mu.Unlock()
	}()
	ctx := context.Background() // a pack under way is finished even if its job is cancelled
	if err := r.store.Publish(ctx, pw.f, packKey(id)); err != nil {
		return fmt.Errorf("commit pack %s: %w", id, err)
	}
	ip := indexedPack{id: id, size: size, entries: pw.entries}
	data, name, err := encodeIndex(r.seal, []indexedPack{ip})
	if err != nil {
		return fmt.Errorf("index pack %s: %w", id, err)
	}
	if err := writeObject(ctx, r.store, indexKey(name), data); err != nil {
		return fmt.Errorf("index pack %s: %w", id, err)
	}
	r.mu.Lock()
	r.idx.addFile(name, []indexedPack{ip})
	if owner != nil {
		owner.indexed(r.idx.packSlot[id], pw.entries)
	}
	r.mu.Unlock()
	return nil
}

// StoreItem stores rd and records it as item (whose Size, SHA256 and Chunks
// are filled in from the stream) in one call, and returns the recorded item.
func (s *Session) StoreItem(ctx context.Context, item Item, rd io.Reader) (Item, error) {
	st, err := s.Store(ctx, rd)
	if err != nil {
		return Item{}, err
	}
	item.Size, item.SHA256, item.Chunks = st.Size, st.SHA256, st.Chunks
	return item, s.PutItem(ctx, item)
}

// PutItem records item as new or changed in the restore point. Its chunks
// must have been stored by this session or exist in the repository.
func (s *Session) PutItem(ctx context.Context, item Item) error {
	if err := s.usable(); err != nil {
		return err
	}
	if err := s.protect(item.Chunks); err != nil {
		return fmt.Errorf("item %s: %w", item.ItemID, err)
	}
	return s.man.record(mPut, catalog.MarshalItem(item), func() error { return s.txn.Put(ctx, item) })
}

// protect registers chunks as referenced by the session, failing if one is
// neither stored nor being stored.
func (s *Session) protect(chunks []ChunkID) error {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range chunks {
		if _, ok := s.prot.pending[c]; ok {
			continue
		}
		loc, ok := r.idx.chunks.get(c)
		if !ok {
			return fmt.Errorf("chunk %s is not stored: %w", c, ErrInvalidArgument)
		}
		s.prot.packs[loc.pack] = struct{}{}
	}
	return nil
}

// LookupVersion finds an item version stored earlier for (driveID, itemID)
// with the given cTag or quickXorHash whose chunks are all still in the
// repository, and protects those chunks for this session: the caller can
// PutItem it without downloading the content again.
func (s *Session) LookupVersion(ctx context.Context, driveID, itemID, cTag, quickXorHash string) (Item, bool, error) {
	if err := s.usable(); err != nil {
		return Item{}, false, err
	}
	it, ok, err := s.r.cat.LookupVersion(ctx, s.tenant, driveID, itemID, cTag, quickXorHash)
	if err != nil || !ok {
		return Item{}, false, err
	}
	if err := s.protect(it.Chunks); err != nil {
		if errors.Is(err, ErrInvalidArgument) {
			return Item{}, false, nil // pruned since: download again
		}
		return Item{}, false, err
	}
	return it, true, nil
}

// ItemPath returns the path this restore point records for item itemID of
// driveID so far (put by this session or inherited from the base); ok is
// false when it records no such item.
func (s *Session) ItemPath(ctx context.Context, driveID, itemID string) (path string, ok bool, err error) {
	if err := s.usable(); err != nil {
		return "", false, err
	}
	return s.txn.Path(ctx, driveID, itemID)
}

// DeleteItem records that the item no longer exists.
func (s *Session) DeleteItem(ctx context.Context, driveID, itemID string) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.man.record(mDelete, appendStrings(nil, driveID, itemID), func() error { return s.txn.Delete(ctx, driveID, itemID) })
}

// SetDeltaLink records the drive's new deltaLink, visible with the restore point.
func (s *Session) SetDeltaLink(driveID, link string) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.man.record(mDeltaLink, appendStrings(nil, driveID, link), func() error { return s.txn.SetDeltaLink(driveID, link) })
}

// ResetDrive starts driveID empty in this restore point (full re-crawl of the drive).
func (s *Session) ResetDrive(driveID string) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.man.record(mReset, appendStrings(nil, driveID), func() error { return s.txn.ResetDrive(driveID) })
}

// RemoveDrive drops driveID from this restore point.
func (s *Session) RemoveDrive(driveID string) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.man.record(mRemove, appendStrings(nil, driveID), func() error { return s.txn.RemoveDrive(driveID) })
}

func (s *Session) usable() error {
	s.storeMu.RLock()
	done := s.done
	s.storeMu.RUnlock()
	if done {
		return fmt.Errorf("session: %w", ErrClosed)
	}
	return s.failed()
}

// Commit finishes the session's last pack, indexes it and commits the
// restore point with its deltaLinks in one catalogue transaction. After a
// failed Commit the session is over (aborted); its durable chunks are reused
// by the next job through deduplication.
func (s *Session) Commit(ctx context.Context) (RestorePoint, error) {
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	if s.done {
		return RestorePoint{}, fmt.Errorf("commit: %w", ErrClosed)
	}
	err := s.failed()
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		s.pmu.Lock()
		pw := s.pw
		s.pw = nil
		s.pmu.Unlock()
		if pw != nil {
			err = s.r.finishPack(pw, s.prot)
		}
	}
	if err == nil && s.lease != nil {
		err = s.lease.l.Check()
	}
	var rp RestorePoint
	if err == nil {
		rp, err = s.commitLocked(ctx)
	}
	if err != nil {
		s.abortLocked()
		return RestorePoint{}, fmt.Errorf("commit restore point: %w", err)
	}
	s.done = true
	s.end()
	return rp, nil
}

// Abort abandons the session. Chunks it stored stay (deduplication reuses
// them; prune removes them if nothing does). Aborting a finished session is a
// no-op.
func (s *Session) Abort() error {
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	if s.done {
		return nil
	}
	return s.abortLocked()
}

// commitLocked commits the restore point in the catalogue and then
// publishes its manifest; a restore point whose manifest could not be
// published is removed again, so that the catalogue never holds a restore
// point other agents cannot see. Sync leaves it alone meanwhile.
func (s *Session) commitLocked(ctx context.Context) (RestorePoint, error) {
	r, name := s.r, s.txn.ID()
	r.mu.Lock()
	r.publishing[name] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.publishing, name)
		r.mu.Unlock()
	}()
	rp, err := s.txn.Commit(ctx)
	if err != nil {
		return RestorePoint{}, err
	}
	if s.lease != nil {
		err = s.lease.l.Check()
	}
	if err == nil {
		err = s.man.publish(context.WithoutCancel(ctx), manifestEnd{Time: rp.Time, Items: rp.Items, Bytes: rp.Bytes,
			ItemsWritten: rp.ItemsWritten, ItemsDeleted: rp.ItemsDeleted})
	}
	if err != nil {
		if ferr := r.cat.ForgetRestorePoint(context.WithoutCancel(ctx), rp.ID); ferr != nil {
			r.log.Error("restore point without manifest could not be removed; the next Sync removes it",
				zap.String("restore_point", string(rp.ID)), zap.Error(ferr))
		}
		return RestorePoint{}, fmt.Errorf("publish manifest: %w", err)
	}
	return rp, nil
}

func (s *Session) abortLocked() error {
	s.man.abort()
	s.pmu.Lock()
	if s.pw != nil {
		s.pw.abort()
		s.pw = nil
	}
	s.pmu.Unlock()
	s.done = true
	err := s.txn.Abort()
	s.end()
	return err
}

// end deregisters the session. If a prune is running, the session's chunk
// set stays visible to it: the prune may have read the catalogue before
// this session's restore point was committed.
func (s *Session) end() {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sessions, s)
	if r.pruning > 0 {
		r.retired = append(r.retired, s.prot)
	}
}

// Written reports the chunks and stored bytes this session added.
func (s *Session) Written() (chunks, bytes int64) { return s.newChunks.Load(), s.newBytes.Load() }
