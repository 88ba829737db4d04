package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"
)

// The chunk index behaves as a map of every chunk, whether its entries are
// in memory, in the run or both, across merges, replacements and deletions.
func TestChunkIndexIsAMap(t *testing.T) {
	for _, tc := range []struct {
		name         string
		mergeAt      int
		tmpDir       func(t *testing.T) string
		ops          int
		wantRun      bool // entries end up in a run file
		wantFallback bool // the temp file failed: all in memory
	}{
		{"no merges", 1 << 20, func(t *testing.T) string { return t.TempDir() }, 3000, false, false},
		{"merges often", 7, func(t *testing.T) string { return t.TempDir() }, 3000, true, false},
		{"block sized", chunkBlockRecs, func(t *testing.T) string { return t.TempDir() }, 5000, true, false},
		{"no temp dir: in memory", 7, func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") }, 2000, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChunkIndex(zaptest.NewLogger(t), tc.tmpDir(t))
			c.mergeAt = tc.mergeAt
			defer c.close()
			model := map[ChunkID]location{}
			rng := rand.New(rand.NewPCG(1, 2))
			id := func(i int) ChunkID { return sha256.Sum256(binary.LittleEndian.AppendUint64(nil, uint64(i))) }
			universe := tc.ops / 2 // ids recur: replacements and deletions of existing entries
			for op := 0; op < tc.ops; op++ {
				k := id(rng.IntN(universe))
				switch rng.IntN(4) {
				case 0, 1:
					loc := location{pack: rng.Uint32(), offset: rng.Uint32(), length: rng.Uint32(), raw: rng.Uint32(), flags: uint8(rng.IntN(4))}
					c.put(k, loc)
					model[k] = loc
				case 2:
					c.delete(k)
					delete(model, k)
				}
				probe := id(rng.IntN(universe + 100)) // some never put
				got, ok := c.get(probe)
				want, wok := model[probe]
				if ok != wok || got != want {
					t.Fatalf("op %d: get = %v %v, want %v %v", op, got, ok, want, wok)
				}
				if c.len() != len(model) {
					t.Fatalf("op %d: len %d, want %d", op, c.len(), len(model))
				}
			}
			seen := map[ChunkID]location{}
			var last *ChunkID
			if err := c.each(func(id ChunkID, loc location) (bool, error) {
				if last != nil && bytes.Compare(last[:], id[:]) >= 0 {
					t.Fatalf("each visits %x after %x: not in id order", id[:4], last[:4])
				}
				last = &id
				seen[id] = loc
				return true, nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(seen) != len(model) {
				t.Fatalf("each visits %d, want %d", len(seen), len(model))
			}
			for k, v := range model {
				if seen[k] != v {
					t.Fatalf("each: %x = %v, want %v", k[:4], seen[k], v)
				}
			}
			if (c.run != nil) != tc.wantRun || c.noRun != tc.wantFallback {
				t.Fatalf("run file %v, in-memory fallback %v; want %v, %v", c.run != nil, c.noRun, tc.wantRun, tc.wantFallback)
			}
		})
	}
}

// The Bloom filter has no false negatives and about 1 % false positives.
func TestBloom(t *testing.T) {
	const n = 20000
	b := newBloom(n)
	id := func(i int) ChunkID { return sha256.Sum256(binary.LittleEndian.AppendUint64(nil, uint64(i))) }
	for i := 0; i < n; i++ {
		b.add(id(i))
	}
	fp := 0
	for i := 0; i < n; i++ {
		if !b.has(id(i)) {
			t.Fatalf("false negative %d", i)
		}
		if b.has(id(n + i)) {
			fp++
		}
	}
	if rate := float64(fp) / n; rate > 0.02 {
		t.Fatalf("false positive rate %.3f", rate)
	}
}
