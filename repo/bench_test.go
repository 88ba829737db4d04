package repo_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/repo"
)

// Benchmarks. Figures worth quoting come from one run on one machine, e.g.
//
//	go test -run '^$' -bench 'Write|Read' -benchtime 3x ./repo/
//	go test -run '^$' -bench 'PeakMemory|SmallFiles' -benchtime 1x ./repo/
//
// Write benchmarks report MB/s (b.SetBytes) and "x-io.Copy": their
// throughput divided by plain io.Copy of the same bytes to a file on the same
// disk (fsynced, as the repository fsyncs), measured in the same process.

const benchStreamSize = 256 << 20

var (
	benchDataOnce sync.Once
	benchRandom   []byte
	benchText     []byte
)

func benchData() (random, text []byte) {
	benchDataOnce.Do(func() {
		benchRandom = randomData(31337, benchStreamSize)
		benchText = textData(31337, benchStreamSize)
	})
	return benchRandom, benchText
}

// copyThroughput measures io.Copy of data into a new file plus fsync, in MB/s:
// the median of five runs, each into a fresh file as the repository writes
// fresh packs.
func copyThroughput(b *testing.B, data []byte) float64 {
	b.Helper()
	dir := b.TempDir()
	var runs []float64
	for i := 0; i < 5; i++ {
		start := time.Now()
		copyToNewFile(b, filepath.Join(dir, fmt.Sprint("copy", i)), data)
		runs = append(runs, float64(len(data))/1e6/time.Since(start).Seconds())
	}
	sort.Float64s(runs)
	return runs[len(runs)/2]
}

func copyToNewFile(b *testing.B, path string, data []byte) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	_ = f.Close()
	_ = os.Remove(path)
}

// BenchmarkCopyBaseline is plain io.Copy to a file plus fsync: the yardstick.
func BenchmarkCopyBaseline(b *testing.B) {
	random, _ := benchData()
	dir := b.TempDir()
	b.SetBytes(int64(len(random)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		copyToNewFile(b, filepath.Join(dir, fmt.Sprint("copy", i)), random)
	}
}

// BenchmarkWrite stores a 256 MiB stream into a fresh repository per
// iteration (so nothing deduplicates) and commits it.
func BenchmarkWrite(b *testing.B) {
	random, text := benchData()
	for _, tc := range []struct {
		name string
		data []byte
		enc  bool
	}{
		{"incompressible/encrypted", random, true},
		{"incompressible/plain", random, false},
		{"text/encrypted", text, true},
		{"text/plain", text, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			baseline := copyThroughput(b, tc.data)
			ctx := context.Background()
			b.SetBytes(int64(len(tc.data)))
			b.ReportAllocs()
			var stored int64
			var elapsed time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir, _ := os.MkdirTemp(b.TempDir(), "repo")
				r, err := repo.Open(dir, repo.Options{Create: true, DisableEncryption: !tc.enc})
				if err != nil {
					b.Fatal(err)
				}
				s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t", Source: "s"})
				start := time.Now()
				b.StartTimer()
				st, err := s.Store(ctx, bytes.NewReader(tc.data))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.Commit(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				elapsed += time.Since(start)
				stored = st.NewBytes
				_ = r.Close()
				_ = os.RemoveAll(dir)
				b.StartTimer()
			}
			b.StopTimer()
			mbps := float64(len(tc.data)) * float64(b.N) / 1e6 / elapsed.Seconds()
			b.ReportMetric(baseline, "io.Copy-MB/s")
			b.ReportMetric(mbps/baseline, "x-io.Copy")
			b.ReportMetric(float64(stored)/float64(len(tc.data)), "stored/raw")
		})
	}
}

// BenchmarkRead streams an item back (authenticate, decompress, hash check).
func BenchmarkRead(b *testing.B) {
	random, text := benchData()
	for _, tc := range []struct {
		name string
		data []byte
	}{{"incompressible/encrypted", random}, {"text/encrypted", text}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			r := openRepo(b, b.TempDir(), repo.Options{PackSize: 32 << 20})
			rp := commitFiles(b, r, "s", "", []file{{id: "big", path: "/big", data: tc.data}})
			b.SetBytes(int64(len(tc.data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ir, err := r.OpenItem(ctx, rp.ID, "big")
				if err != nil {
					b.Fatal(err)
				}
				if n, err := ir.WriteTo(io.Discard); err != nil || n != int64(len(tc.data)) {
					b.Fatal(n, err)
				}
				ir.Close()
			}
		})
	}
}

const memChildEnv = "BACKUP_PROXY_REPO_MEM_CHILD"

// TestPeakMemoryChild is the child process of BenchmarkPeakMemory4GiB; it
// does nothing in a normal test run.
func TestPeakMemoryChild(t *testing.T) {
	spec := os.Getenv(memChildEnv)
	if spec == "" {
		t.Skip("child of BenchmarkPeakMemory4GiB")
	}
	dir, sizeStr, _ := strings.Cut(spec, ",")
	size, _ := strconv.ParseInt(sizeStr, 10, 64)
	ctx := context.Background()
	r, err := repo.Open(dir, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	var peakHeap, peakSys uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapInuse)
			peakSys = max(peakSys, ms.Sys)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t", Source: "s"})
	start := time.Now()
	st, err := s.Store(ctx, randomReader(4242, size))
	if err != nil {
		t.Fatal(err)
	}
	meta := repo.Item{DriveID: "d", ItemID: "big", Path: "/big", Size: st.Size, SHA256: st.SHA256, Chunks: st.Chunks}
	if err := s.PutItem(ctx, meta); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	fmt.Printf("MEM heap_inuse=%d sys=%d rss_peak=%d bytes=%d seconds=%f\n", peakHeap, peakSys, vmHWM(), st.Size, elapsed.Seconds())
}

// vmHWM is the process's peak resident set size from /proc.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// BenchmarkPeakMemory4GiB stores a 4 GiB stream (encrypted, generated on
// the fly) in a child process and reports its peak heap, Go runtime Sys and
// peak RSS. Target: ≤ 128 MiB.
func BenchmarkPeakMemory4GiB(b *testing.B) {
	const size = 4 << 30
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestPeakMemoryChild$", "-test.v")
		cmd.Env = append(os.Environ(), memChildEnv+"="+dir+","+strconv.Itoa(size))
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("child: %v\n%s", err, out)
		}
		var heap, sys, rss, n int64
		var secs float64
		idx := bytes.Index(out, []byte("MEM "))
		if idx < 0 {
			b.Fatalf("child output: %s", out)
		}
		if _, err := fmt.Sscanf(string(out[idx:]), "MEM heap_inuse=%d sys=%d rss_peak=%d bytes=%d seconds=%f", &heap, &sys, &rss, &n, &secs); err != nil {
			b.Fatalf("parse %q: %v", out[idx:], err)
		}
		b.ReportMetric(float64(heap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(sys)/(1<<20), "go-sys-MiB")
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
		b.ReportMetric(float64(n)/1e6/secs, "MB/s")
		_ = os.RemoveAll(dir)
	}
}

// BenchmarkSmallFiles100k stores 100,000 files of 10 KiB in one restore
// point and reports what lands on disk.
func BenchmarkSmallFiles100k(b *testing.B) {
	const files, size = 100_000, 10 << 10
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		r, err := repo.Open(dir, repo.Options{Create: true})
		if err != nil {
			b.Fatal(err)
		}
		s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t", Source: "onedrive:u"})
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for w := 0; w < 4; w++ { // an engine downloads several files at once
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, size)
				for f := w; f < files; f += 4 {
					_, _ = io.ReadFull(randomReader(uint64(f), size), buf) // incompressible, distinct
					meta := repo.Item{DriveID: "d", ItemID: fmt.Sprint("i", f), Path: fmt.Sprintf("/dir%03d/file%06d.txt", f%500, f), Name: "f"}
					if _, err := s.StoreItem(ctx, meta, bytes.NewReader(buf)); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		if _, err := s.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		st, _ := r.Stats(ctx)
		_ = r.Close()
		var nfiles, nbytes int64
		_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, _ error) error {
			if d != nil && !d.IsDir() {
				fi, _ := d.Info()
				nfiles++
				nbytes += fi.Size()
			}
			return nil
		})
		b.ReportMetric(float64(nfiles), "files-on-disk")
		b.ReportMetric(float64(nbytes)/(1<<20), "MiB-on-disk")
		b.ReportMetric(float64(st.CatalogBytes)/(1<<20), "catalog-MiB")
		b.ReportMetric(float64(files)/elapsed.Seconds(), "files/s")
	}
}
