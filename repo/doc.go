// Package repo is the backup repository: it stores byte streams as
// content-defined, content-addressed, compressed and encrypted chunks packed
// into large files, and keeps a catalogue of restore points (package
// repo/catalog). It knows nothing of Microsoft Graph: sources, drives and
// items are strings chosen by the caller.
//
// # Promises (after restic and kopia)
//
//   - Chunks are cut by FastCDC with normalised chunking
//     (github.com/PlakarKorp/go-cdc-chunkers, "fastcdc-v1.0.0": 512 KiB
//     min, 1 MiB normal, ~1.2 MiB average, 8 MiB max; its Gear table is
//     derived from a random per-repository key, sealed in the config;
//     streams up to 512 KiB are one chunk), named by the SHA-256 of their
//     plaintext and written once: storing the same content again costs no
//     new chunk, and content shifted by a byte shares all but the chunks
//     around the edit. The cuts depend on the content and the key only,
//     never on how the stream's reads arrive.
//   - Chunks are zstd-compressed when that saves more than ~1.5 % (chunks
//     over 128 KiB only when eight 8 KiB samples spread over them do, so
//     already-compressed data costs no full compression attempt) and
//     sealed with AES-256-GCM (random nonce, chunk id as associated data)
//     under a 32-byte key in a 0600 key file; encryption is on by default.
//   - Every object is published whole or not at all (DirStore: temp →
//     fsync → rename → fsync dir; S3Store: one PUT), and the commit order
//     is pack → index file → restore point (one catalogue transaction,
//     deltaLinks included) → its manifest. A crash at any instant leaves a
//     valid repository: an unfinished pack is a temp file (removed at Open),
//     a pack without index file is an orphan (removed by Prune), staged
//     catalogue rows without a restore point record are invisible (removed
//     by Prune), a restore point without manifest is dropped by the next
//     Sync. A rerun deduplicates against every pack that was indexed.
//   - Every restore point is also a manifest object of the store (see
//     manifest.go), so the catalogue is a local index that Sync rebuilds.
//   - Verify detects any flipped bit: index files are named by their hash,
//     pack trailers by theirs, and every chunk authenticates and hashes to
//     its id. Transient read errors are retried, never reported as corruption.
//   - Many small files do not become many files: packs are tens of MiB.
//   - Memory does not grow with the repository: the chunk index is a
//     sorted run in a local temp file behind a Bloom filter (chunkindex.go),
//     the catalogue a bbolt file whose mapped pages are dropped as it goes.
//
// # Layout
//
// Objects of the store (Options.Store; by default the directory itself):
//
//	config                     JSON: version (2), id, encryption, chunker parameters, sealed chunker key
//	packs/<xx>/<id>            pack files; id = SHA-256 of the pack's stored trailer
//	index/<id>                 index files; id = SHA-256 of the file
//	restorepoints/<name>       restore point manifests; name = "rp-" ‖ time ‖ random
//	forgotten/<name>           markers of forgotten restore points whose manifests are still needed
//
// Local files, in the directory given to Open:
//
//	<dir>/key                  hex AES-256 key, mode 0600 (Options.KeyFile may put it elsewhere)
//	<dir>/catalog.db           bbolt catalogue (restore points, item versions, deltaLinks)
//	<dir>/tmp/                 temp files of writes in progress (the store's TempDir)
//
// A pack is "BPPACK\x00\x01" ‖ blobs ‖ sealed trailer (chunk id, offset,
// length, raw length, flags per blob) ‖ trailer length ‖ "BPPT". An index
// file lists packs with their size and blob entries; writers add one per
// pack, Prune (and Open, past 256 files) merge them.
//
// # Concurrency
//
// A Repository serves any number of writer Sessions (one per job; each may
// Store from several goroutines), readers, Verify and Prune at once, in one
// process; a second process is kept out of its directory by the
// catalogue's file lock (ErrLocked; ReadOnly opens share it with other
// readers only). Several agents, each with its own directory, may share
// one store: see shared.go for how leases (Options.Leases, Redis for
// agents on several machines) keep their writers and prunes apart. Sessions
// write their own packs; chunk encoding is bounded by Options.Workers+2
// buffer slots and chunking of streams over 512 KiB by Options.Workers
// scanners, shared by all sessions, which also bounds write memory. Within
// one Store the calling goroutine only chunks; hashing, compression,
// encryption and the pack write of each chunk, and the stream's SHA-256,
// run on other goroutines, so a single stream uses every core.
// Prune never removes a chunk a running session wrote, deduplicated against
// or looked up: sessions register those chunks, and the dead set is decided
// and removed from the in-memory index under one lock.
//
// # Use
//
//	r, err := repo.Open(dir, repo.Options{Create: true, Logger: log})
//	lease, err := r.AcquireSource(ctx, tenant, source)             // waits for other writers; syncs; lease.Release() at the end
//	latest, err := r.LatestRestorePoint(ctx, tenant, source)       // ErrNotFound: full job
//	link, _, err := r.DeltaLink(ctx, tenant, source, drive)        // ErrNotFound: crawl the drive in full
//	s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: tenant, Source: source, Base: latest.ID, Lease: lease})
//	old, ok, err := s.LookupVersion(ctx, d, id, cTag, quickXorHash) // ok: s.PutItem(ctx, old with new path), no download
//	item, err := s.StoreItem(ctx, repo.Item{DriveID: d, ItemID: id, Path: p, ...}, body)
//	err = s.DeleteItem(ctx, d, goneID)
//	err = s.SetDeltaLink(d, newDeltaLink)
//	rp, err := s.Commit(ctx)
//	rep, err := r.Verify(ctx, repo.VerifyOptions{ReadData: true})
package repo
