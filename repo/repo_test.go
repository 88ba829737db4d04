package repo_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/backup-proxy/backup-proxy/repo"
)

func TestRoundTripRandomFiles(t *testing.T) {
	sizes := []int{0, 1, 100, 4095, 10 << 10, 512<<10 - 1, 512 << 10, 512<<10 + 1, 1 << 20, 3<<20 + 7, 8<<20 + 1, 21 << 20, 64 << 20}
	rng := rand.New(rand.NewPCG(42, 42))
	for _, enc := range []bool{true, false} {
		t.Run(fmt.Sprintf("encrypted=%v", enc), func(t *testing.T) {
			dir := t.TempDir()
			r := openRepo(t, dir, repo.Options{DisableEncryption: !enc})
			var files []file
			for i, n := range sizes {
				if !enc && n > 8<<20 {
					continue // the big sizes once is enough
				}
				var data []byte
				switch i % 3 {
				case 0:
					data = randomData(uint64(i), n)
				case 1:
					data = textData(uint64(i), n)
				default:
					data = make([]byte, n) // zeros: maximal chunks, highly compressible
					if n > 0 {
						data[rng.IntN(n)] = 1
					}
				}
				files = append(files, file{id: fmt.Sprint("f", i), path: fmt.Sprintf("/d/f%02d-%d", i, n), data: data})
			}
			rp := commitFiles(t, r, "onedrive:u1", "", files)
			check := func(r *repo.Repository) {
				for _, f := range files {
					it, err := r.Item(context.Background(), rp.ID, f.id)
					if err != nil {
						t.Fatal(err)
					}
					if it.Size != int64(len(f.data)) || it.SHA256 != sha256.Sum256(f.data) {
						t.Fatalf("%s: size %d sha %x", f.path, it.Size, it.SHA256[:4])
					}
					if got := readItem(t, r, rp.ID, f.id); !bytes.Equal(got, f.data) {
						t.Fatalf("%s: read back %d bytes differ from %d written", f.path, len(got), len(f.data))
					}
					// Small reads exercise Read across chunk boundaries.
					if len(f.data) < 2<<20 {
						ir, _ := r.OpenItem(context.Background(), rp.ID, f.id)
						got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(ir, 4096)))
						ir.Close()
						if err != nil || !bytes.Equal(got, f.data[:min(4096, len(f.data))]) {
							t.Fatalf("%s: byte-wise read: %v", f.path, err)
						}
					}
				}
			}
			check(r)
			verifyClean(t, r, true)
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			r2 := openRepo(t, dir, repo.Options{})
			if r2.Encrypted() != enc {
				t.Fatalf("encryption %v after reopen", r2.Encrypted())
			}
			check(r2)
		})
	}
}

func TestSameContentTwiceCostsNoNewChunk(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	data := randomData(7, 5<<20+123)
	s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Store(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if first.NewChunks != len(first.Chunks) || first.NewChunks < 2 {
		t.Fatalf("first store: %d new of %d chunks", first.NewChunks, len(first.Chunks))
	}
	again, err := s.Store(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if again.NewChunks != 0 || again.NewBytes != 0 {
		t.Fatalf("same content in the same session stored %d new chunks", again.NewChunks)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	before, _ := r.Stats(ctx)
	s2, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t2", Source: "site:other"})
	third, err := s2.Store(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if third.NewChunks != 0 {
		t.Fatalf("same content in another session stored %d new chunks", third.NewChunks)
	}
	_ = s2.Abort()
	after, _ := r.Stats(ctx)
	if after.Chunks != before.Chunks || after.Packs != before.Packs {
		t.Fatalf("stats moved: %+v → %+v", before, after)
	}
}

func TestShiftedByOneByteSharesMostChunks(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	data := randomData(9, 24<<20)
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s"})
	defer s.Abort()
	orig, err := s.Store(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		shifted []byte
	}{
		{"prepend", append([]byte{0x5a}, data...)},
		{"drop first", data[1:]},
		{"insert middle", append(append(append([]byte(nil), data[:len(data)/2]...), 0x01), data[len(data)/2:]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := s.Store(ctx, bytes.NewReader(tc.shifted))
			if err != nil {
				t.Fatal(err)
			}
			shared := len(st.Chunks) - st.NewChunks
			if st.NewChunks > 2 || float64(shared) < 0.8*float64(len(orig.Chunks)) {
				t.Fatalf("%d chunks, %d new, %d shared of %d", len(st.Chunks), st.NewChunks, shared, len(orig.Chunks))
			}
			t.Logf("%d of %d chunks shared", shared, len(st.Chunks))
		})
	}
}

// Stores of the same content cut the same chunks however the stream
// arrives, on both sides of the single-chunk limit (512 KiB).
func TestStoreIsDeterministicAcrossReadSizes(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s"})
	defer s.Abort()
	readers := []struct {
		name string
		wrap func([]byte) io.Reader
	}{
		{"one read", func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"half reads", func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) }},
		{"data with EOF", func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) }},
		{"small reads", func(b []byte) io.Reader { return &chopReader{r: bytes.NewReader(b), max: 4093} }},
	}
	for _, n := range []int{0, 1, 512<<10 - 1, 512 << 10, 512<<10 + 1, 3<<20 + 7, 20 << 20} {
		data := randomData(uint64(n), n)
		var want repo.Stored
		for i, rd := range readers {
			t.Run(fmt.Sprintf("%d/%s", n, rd.name), func(t *testing.T) {
				got, err := s.Store(ctx, rd.wrap(data))
				if err != nil {
					t.Fatal(err)
				}
				if got.Size != int64(n) || got.SHA256 != sha256.Sum256(data) {
					t.Fatalf("size %d sha %x", got.Size, got.SHA256[:4])
				}
				if i == 0 {
					want = got
					return
				}
				if fmt.Sprint(got.Chunks) != fmt.Sprint(want.Chunks) || got.NewChunks != 0 {
					t.Fatalf("%d chunks (%d new), want the %d of the first store", len(got.Chunks), got.NewChunks, len(want.Chunks))
				}
			})
		}
	}
}

// chopReader returns at most max bytes per read.
type chopReader struct {
	r   io.Reader
	max int
}

func (c *chopReader) Read(p []byte) (int, error) {
	if len(p) > c.max {
		p = p[:c.max]
	}
	return c.r.Read(p)
}

func TestSmallFilesArePackedWhole(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{PackSize: 1 << 20})
	var files []file
	for i := 0; i < 300; i++ {
		files = append(files, file{id: fmt.Sprint("s", i), path: fmt.Sprintf("/small/%03d", i), data: randomData(uint64(1000+i), 10<<10)})
	}
	rp := commitFiles(t, r, "onedrive:u", "", files)
	items, _, err := r.ListItems(ctx, repo.ListItemsRequest{RestorePoint: rp.ID, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if len(it.Chunks) != 1 || it.SHA256 != it.Chunks[0] {
			t.Fatalf("%s: %d chunks", it.Path, len(it.Chunks))
		}
	}
	st, _ := r.Stats(ctx)
	if st.Chunks != 300 || st.Packs > 4 {
		t.Fatalf("300 small files became %d chunks in %d packs", st.Chunks, st.Packs)
	}
	if packFiles := countObjects(t, r, "packs/"); packFiles != st.Packs {
		t.Fatalf("%d packs in the store, stats says %d", packFiles, st.Packs)
	}
}

func TestIncrementalSessionByReference(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	var files []file
	for i := 0; i < 50; i++ {
		files = append(files, file{id: fmt.Sprint("i", i), path: fmt.Sprintf("/docs/%02d.txt", i), data: textData(uint64(i), 20<<10)})
	}
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:u1"})
	for _, f := range files {
		if _, err := s.StoreItem(ctx, itemMeta(f), bytes.NewReader(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.SetDeltaLink("drive1", "delta-1")
	full, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	link, base, err := r.DeltaLink(ctx, "t1", "onedrive:u1", "drive1")
	if err != nil || link != "delta-1" || base != full.ID {
		t.Fatalf("deltaLink %q %s %v", link, base, err)
	}
	// Incremental: one changed, one deleted, one unchanged-but-reported
	// item reused without download via LookupVersion.
	s2, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:u1", Base: base})
	changed := file{id: "i3", path: "/docs/03.txt", data: textData(999, 30<<10)}
	if _, err := s2.StoreItem(ctx, itemMeta(changed), bytes.NewReader(changed.data)); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteItem(ctx, "drive1", "i4"); err != nil {
		t.Fatal(err)
	}
	meta := itemMeta(files[5])
	prev, ok, err := s2.LookupVersion(ctx, "drive1", "i5", meta.CTag, "")
	if err != nil || !ok {
		t.Fatalf("lookup: %v %v", ok, err)
	}
	prev.Path = "/docs/renamed-05.txt"
	if err := s2.PutItem(ctx, prev); err != nil {
		t.Fatal(err)
	}
	if err := s2.PutItem(ctx, repo.Item{DriveID: "drive1", ItemID: "bogus", Path: "/x", Size: 1, Chunks: []repo.ChunkID{{1}}}); !errors.Is(err, repo.ErrInvalidArgument) {
		t.Fatalf("item with an unknown chunk: %v", err)
	}
	_ = s2.SetDeltaLink("drive1", "delta-2")
	inc, err := s2.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if inc.Items != 49 || inc.ItemsWritten != 2 || inc.ItemsDeleted != 1 {
		t.Fatalf("incremental: %+v", inc)
	}
	if got := readItem(t, r, inc.ID, "i3"); !bytes.Equal(got, changed.data) {
		t.Fatal("changed item differs")
	}
	if got := readItem(t, r, inc.ID, "i7"); !bytes.Equal(got, files[7].data) {
		t.Fatal("inherited item differs")
	}
	if got := readItem(t, r, inc.ID, "i5"); !bytes.Equal(got, files[5].data) {
		t.Fatal("reused item differs")
	}
	if got := readItem(t, r, full.ID, "i3"); !bytes.Equal(got, files[3].data) {
		t.Fatal("the full restore point changed")
	}
	if _, err := r.OpenItem(ctx, inc.ID, "i4"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("deleted item: %v", err)
	}
	if link, _, _ := r.DeltaLink(ctx, "t1", "onedrive:u1", "drive1"); link != "delta-2" {
		t.Fatalf("deltaLink after incremental: %q", link)
	}
	if _, err := s2.Store(ctx, bytes.NewReader(nil)); !errors.Is(err, repo.ErrClosed) {
		t.Fatalf("store after commit: %v", err)
	}
	verifyClean(t, r, true)
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	r := openRepo(t, dir, repo.Options{})
	secret := bytes.Repeat([]byte("TOP-SECRET-PLAINTEXT "), 2000)
	commitFiles(t, r, "site:s", "", []file{{id: "a", path: "/a", data: secret}})
	_ = r.Close()
	fi, err := os.Stat(filepath.Join(dir, "key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	stored := dir
	if onS3() {
		stored = s3srv.DataDir()
	}
	_ = filepath.Walk(stored, func(p string, fi os.FileInfo, _ error) error {
		if fi != nil && !fi.IsDir() && filepath.Base(p) != "catalog.db" {
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte("TOP-SECRET")) {
				t.Fatalf("%s holds plaintext", p)
			}
		}
		return nil
	})
	tests := []struct {
		name  string
		setup func(t *testing.T) repo.Options
		want  error
	}{
		{"wrong key", func(t *testing.T) repo.Options {
			kf := filepath.Join(t.TempDir(), "other.key")
			_ = os.WriteFile(kf, []byte(fmt.Sprintf("%064x", 12345)), 0o600)
			return repo.Options{KeyFile: kf}
		}, repo.ErrWrongKey},
		{"group-readable key", func(t *testing.T) repo.Options {
			kf := filepath.Join(t.TempDir(), "open.key")
			b, _ := os.ReadFile(filepath.Join(dir, "key"))
			_ = os.WriteFile(kf, b, 0o644)
			_ = os.Chmod(kf, 0o644)
			return repo.Options{KeyFile: kf}
		}, repo.ErrInsecureKey},
		{"missing key", func(t *testing.T) repo.Options {
			return repo.Options{KeyFile: filepath.Join(t.TempDir(), "none")}
		}, repo.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := repo.Open(dir, withStore(t, dir, tc.setup(t)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("open: %v, want %v", err, tc.want)
			}
		})
	}
	nothing := filepath.Join(t.TempDir(), "nothing")
	if _, err := repo.Open(nothing, withStore(t, nothing, repo.Options{})); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("open of no repository: %v", err)
	}
}

// The config names the format: a repository of another version or chunking
// is refused, not written into with chunks that would not deduplicate.
func TestOpenRefusesOtherFormats(t *testing.T) {
	dir := t.TempDir()
	r := openRepo(t, dir, repo.Options{})
	_ = r.Close()
	st := r.Store()
	orig := getObject(t, st, "config")
	for _, tc := range []struct {
		name   string
		change func(cfg map[string]any)
	}{
		{"version 1 (Rabin chunker)", func(cfg map[string]any) { cfg["version"] = 1 }},
		{"other chunker", func(cfg map[string]any) { cfg["chunker"].(map[string]any)["algorithm"] = "rabin" }},
		{"other chunk size", func(cfg map[string]any) { cfg["chunker"].(map[string]any)["max_size"] = 16 << 20 }},
		{"no chunker", func(cfg map[string]any) { delete(cfg, "chunker") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg map[string]any
			if err := json.Unmarshal(orig, &cfg); err != nil {
				t.Fatal(err)
			}
			tc.change(cfg)
			b, _ := json.Marshal(cfg)
			putObject(t, st, "config", b)
			if _, err := repo.Open(dir, repo.Options{Store: st}); !errors.Is(err, repo.ErrCorrupt) {
				t.Fatalf("open: %v, want ErrCorrupt", err)
			}
		})
	}
	putObject(t, st, "config", orig)
	r = openRepo(t, dir, repo.Options{Store: st})
	_ = r.Close()
}

// The chunker key decides where chunks are cut: with encryption it is
// sealed, or chunk sizes would let an observer recognise known files.
func TestChunkerKeyIsSealed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		enc       bool
		wantClear bool
	}{{"encrypted", true, false}, {"plain", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := openRepo(t, dir, repo.Options{DisableEncryption: !tc.enc})
			_ = r.Close()
			b := getObject(t, r.Store(), "config")
			var cfg map[string]any
			if err := json.Unmarshal(b, &cfg); err != nil {
				t.Fatal(err)
			}
			if _, clear := cfg["chunker_key"]; clear != tc.wantClear {
				t.Fatalf("chunker key in the clear: %v, want %v (%s)", clear, tc.wantClear, b)
			}
		})
	}
}

func TestReadOnlyAndLocked(t *testing.T) {
	dir := t.TempDir()
	r := openRepo(t, dir, repo.Options{})
	rp := commitFiles(t, r, "site:s", "", []file{{id: "a", path: "/a", data: []byte("hello")}})
	if _, err := repo.Open(dir, repo.Options{Store: r.Store()}); !errors.Is(err, repo.ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
	_ = r.Close()
	ro, err := repo.Open(dir, repo.Options{ReadOnly: true, Store: r.Store()})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got := readItem(t, ro, rp.ID, "a"); string(got) != "hello" {
		t.Fatalf("read-only read: %q", got)
	}
	if _, err := ro.NewSession(context.Background(), repo.SessionOptions{Tenant: "t", Source: "s"}); !errors.Is(err, repo.ErrReadOnly) {
		t.Fatalf("session on read-only: %v", err)
	}
	verifyClean(t, ro, true)
}

func TestStatsAndListRestorePoints(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	rp1 := commitFiles(t, r, "site:a", "", []file{{id: "x", path: "/x", data: textData(1, 300<<10)}})
	commitFiles(t, r, "site:b", "", []file{{id: "y", path: "/y", data: randomData(2, 300<<10)}})
	rp3 := commitFiles(t, r, "site:a", rp1.ID, nil)
	rps, err := r.ListRestorePoints(ctx, "t1", "site:a")
	if err != nil || len(rps) != 2 || rps[0].ID != rp1.ID || rps[1].ID != rp3.ID || rps[1].Base != rp1.ID {
		t.Fatalf("list: %+v %v", rps, err)
	}
	if latest, _ := r.LatestRestorePoint(ctx, "t1", "site:a"); latest.ID != rp3.ID || latest.Items != 1 {
		t.Fatalf("latest: %+v", latest)
	}
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != 2 || st.Packs != 2 || st.RawBytes != 600<<10 || st.StoredBytes >= st.RawBytes || st.BytesOnDisk < st.StoredBytes+st.CatalogBytes {
		t.Fatalf("stats: %+v", st)
	}
}

func TestOpenCompactsManyIndexFiles(t *testing.T) {
	tests := []struct {
		name      string
		perFile   int // chunks a compacted file lists
		wantFiles int
	}{
		{"into one", 64 << 10, 1},
		{"into files of bounded size", 100, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer repo.SetCompactIndexChunks(tt.perFile)()
			ctx := context.Background()
			dir := t.TempDir()
			r := openRepo(t, dir, repo.Options{PackSize: 64 << 10}) // one pack, so one index file, per file
			var files []file
			for i := 0; i < 300; i++ {
				files = append(files, file{id: fmt.Sprint("f", i), path: fmt.Sprintf("/f%03d", i), data: randomData(uint64(7000+i), 70<<10)})
			}
			rp := commitFiles(t, r, "site:s", "", files)
			if st, _ := r.Stats(ctx); st.IndexFiles != 300 {
				t.Fatalf("%d index files before reopen", st.IndexFiles)
			}
			_ = r.Close()
			r2 := openRepo(t, dir, repo.Options{})
			st, _ := r2.Stats(ctx)
			if st.IndexFiles != tt.wantFiles || st.Packs != 300 || st.Chunks != 300 {
				t.Fatalf("after reopen: %+v, want %d index files", st, tt.wantFiles)
			}
			if n := countObjects(t, r2, "index/"); n != tt.wantFiles {
				t.Fatalf("%d index files in the store, want %d", n, tt.wantFiles)
			}
			verifyClean(t, r2, false)
			for _, f := range files[:20] {
				if got := readItem(t, r2, rp.ID, f.id); !bytes.Equal(got, f.data) {
					t.Fatalf("%s differs", f.path)
				}
			}
			// Compacted files are not small: opening again changes nothing.
			_ = r2.Close()
			r3 := openRepo(t, dir, repo.Options{})
			if n := countObjects(t, r3, "index/"); n != tt.wantFiles {
				t.Fatalf("%d index files after a second reopen, want %d", n, tt.wantFiles)
			}
		})
	}
}
