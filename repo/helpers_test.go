package repo_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/repo"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const testPackSize = 1 << 20

func openRepo(t testing.TB, dir string, opts repo.Options) *repo.Repository {
	t.Helper()
	opts.Create = true
	if opts.PackSize == 0 {
		opts.PackSize = testPackSize
	}
	if opts.Store == nil && opts.FS == nil {
		opts.Store = testStore(t, dir, dir)
	}
	r, err := repo.Open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// randomData returns n deterministic incompressible bytes.
func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seedBytes(seed)).Read(b)
	return b
}

// randomReader streams n deterministic incompressible bytes without holding them.
func randomReader(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(seedBytes(seed)), n)
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}

var words = []string{"backup", "proxy", "sharepoint", "onedrive", "tenant", "drive", "item", "delta", "the", "a",
	"quarterly", "report", "meeting", "notes", "budget", "2026", "draft", "final", "review", "contoso"}

// textData returns n bytes of deterministic text-like (compressible) data.
func textData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	var buf bytes.Buffer
	for buf.Len() < n {
		buf.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(12) == 0 {
			buf.WriteString(".\n")
		} else {
			buf.WriteByte(' ')
		}
	}
	return buf.Bytes()[:n]
}

// textReader streams n bytes of text-like data.
type textReader struct {
	rng  *rand.Rand
	left int64
	pend []byte
}

func newTextReader(seed uint64, n int64) *textReader {
	return &textReader{rng: rand.New(rand.NewPCG(seed, 7)), left: n}
}

func (t *textReader) Read(p []byte) (int, error) {
	if t.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && t.left > 0 {
		if len(t.pend) == 0 {
			t.pend = append(t.pend[:0], words[t.rng.IntN(len(words))]...)
			t.pend = append(t.pend, ' ')
		}
		k := copy(p[n:], t.pend)
		if int64(k) > t.left {
			k = int(t.left)
		}
		t.pend = t.pend[k:]
		n += k
		t.left -= int64(k)
	}
	return n, nil
}

type file struct {
	drive, id, path string
	data            []byte
}

// commitFiles stores files in one restore point of (t1, src) on base.
func commitFiles(t testing.TB, r *repo.Repository, src string, base repo.RestorePointID, files []file) repo.RestorePoint {
	t.Helper()
	ctx := context.Background()
	s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: src, Base: base})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := s.StoreItem(ctx, itemMeta(f), bytes.NewReader(f.data)); err != nil {
			t.Fatalf("store %s: %v", f.path, err)
		}
	}
	rp, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

func itemMeta(f file) repo.Item {
	d := f.drive
	if d == "" {
		d = "drive1"
	}
	sum := sha256.Sum256(f.data)
	return repo.Item{
		DriveID: d, ItemID: f.id, Path: f.path, Name: f.path, ModTime: time.Unix(1767225600, 0).UTC(),
		ETag: "e-" + f.id, CTag: fmt.Sprintf("c-%s-%x", f.id, sum[:4]), QuickXorHash: fmt.Sprintf("q-%x", sum[:8]),
	}
}

func readItem(t testing.TB, r *repo.Repository, rp repo.RestorePointID, id string) []byte {
	t.Helper()
	ir, err := r.OpenItem(context.Background(), rp, id)
	if err != nil {
		t.Fatalf("open item %s of %s: %v", id, rp, err)
	}
	defer ir.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, ir); err != nil {
		t.Fatalf("read item %s of %s: %v", id, rp, err)
	}
	return buf.Bytes()
}

func verifyClean(t testing.TB, r *repo.Repository, readData bool) repo.VerifyReport {
	t.Helper()
	rep, err := r.Verify(context.Background(), repo.VerifyOptions{ReadData: readData})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !rep.OK() {
		t.Fatalf("verify found problems: %v; damaged items: %+v", rep.Problems, rep.DamagedItems)
	}
	return rep
}
