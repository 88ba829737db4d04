package repo

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

func testBytes(seed uint64, n int) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// jitterReader returns reads of pseudo-random sizes from 1 byte to 300 KiB,
// as a network body does.
type jitterReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (j *jitterReader) Read(p []byte) (int, error) {
	if n := 1 + j.rng.IntN(300<<10); len(p) > n {
		p = p[:n]
	}
	return j.r.Read(p)
}

// cuts returns the chunk lengths the scanner cuts rd into.
func cuts(t *testing.T, key []byte, rd io.Reader) []int {
	t.Helper()
	var sc scanner
	if err := sc.reset(key, rd); err != nil {
		t.Fatal(err)
	}
	var out []int
	for {
		c, err := sc.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, len(c))
	}
}

func TestScannerCutsWithinBounds(t *testing.T) {
	key := bytes.Repeat([]byte{7}, chunkerKeySize)
	text := []byte(strings.Repeat("quarterly report draft for the contoso tenant\n", 500_000))[:20<<20]
	for _, tc := range []struct {
		name     string
		data     []byte
		avgRange [2]float64 // MiB; zero: not checked
	}{
		{"random", testBytes(1, 48<<20), [2]float64{0.9, 1.6}},
		{"zeros", make([]byte, 20<<20), [2]float64{}},
		{"repetitive text", text, [2]float64{}},
		{"one byte over the minimum", testBytes(2, minChunkSize+1), [2]float64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := cuts(t, key, bytes.NewReader(tc.data))
			total := 0
			for i, n := range got {
				total += n
				if n > maxChunkSize || (n < minChunkSize && i != len(got)-1) {
					t.Fatalf("chunk %d of %d has %d bytes", i, len(got), n)
				}
			}
			if total != len(tc.data) {
				t.Fatalf("chunks add up to %d bytes, want %d", total, len(tc.data))
			}
			if lo, hi := tc.avgRange[0], tc.avgRange[1]; hi > 0 {
				avg := float64(total) / float64(len(got)) / (1 << 20)
				if avg < lo || avg > hi {
					t.Fatalf("average chunk %.2f MiB, want %.1f–%.1f", avg, lo, hi)
				}
				t.Logf("%d chunks, average %.2f MiB", len(got), avg)
			}
		})
	}
}

// Deduplication depends on cuts that depend on the content and the key only,
// never on how the stream arrives.
func TestScannerIsDeterministic(t *testing.T) {
	key := bytes.Repeat([]byte{7}, chunkerKeySize)
	data := testBytes(3, 24<<20)
	want := cuts(t, key, bytes.NewReader(data))
	for _, tc := range []struct {
		name string
		rd   io.Reader
	}{
		{"half reads", iotest.HalfReader(bytes.NewReader(data))},
		{"jittery reads", &jitterReader{r: bytes.NewReader(data), rng: rand.New(rand.NewPCG(1, 2))}},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(data))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cuts(t, key, tc.rd); !equalInts(got, want) {
				t.Fatalf("cuts %v, want %v", got, want)
			}
		})
	}
	t.Run("another key cuts elsewhere", func(t *testing.T) {
		other := bytes.Repeat([]byte{8}, chunkerKeySize)
		if got := cuts(t, other, bytes.NewReader(data)); equalInts(got, want) {
			t.Fatalf("two keys cut %d chunks identically", len(got))
		}
	})
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCompressionSampling(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	text := []byte(strings.Repeat("quarterly report draft for the contoso tenant\n", 50_000))
	randomWithText := func(at func(n int) int, textLen int) []byte {
		b := testBytes(4, 2<<20)
		copy(b[at(len(b)):], text[:textLen])
		return b
	}
	for _, tc := range []struct {
		name       string
		data       []byte
		compressed bool // stored compressed, and so worth compressing
	}{
		{"random", testBytes(5, 2<<20), false},
		{"text", text[:2<<20], true},
		{"small text", text[:100<<10], true},
		{"zeros", make([]byte, 3<<20), true},
		{"random with a text head", randomWithText(func(int) int { return 0 }, 1<<20), true},
		{"random with a text tail", randomWithText(func(n int) int { return n - 1<<20 }, 1<<20), true},
		// Half of it is text: at least one sample falls in it however the
		// chunk is laid out.
		{"random with text in the middle", randomWithText(func(n int) int { return n / 4 }, 1<<20), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.worthCompressing(tc.data, make([]byte, 0, 64<<10)); got != tc.compressed {
				t.Fatalf("worth compressing: %v, want %v", got, tc.compressed)
			}
			var out []byte
			id := ChunkID(sha256.Sum256(tc.data))
			stored, flags, err := r.encodeChunk(id, tc.data, &out)
			if err != nil {
				t.Fatal(err)
			}
			if got := flags&flagZstd != 0; got != tc.compressed {
				t.Fatalf("compressed %v (%d → %d bytes), want %v", got, len(tc.data), len(stored), tc.compressed)
			}
			plain, err := r.decodeChunk(id, location{raw: uint32(len(tc.data)), flags: flags}, stored, make([]byte, 0, len(tc.data)))
			if err != nil || !bytes.Equal(plain, tc.data) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}
