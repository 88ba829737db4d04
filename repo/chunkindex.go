package repo

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"go.uber.org/zap"
)

// chunkIndex maps chunk ids to their locations in memory that does not
// grow with the repository (after kopia's on-disk index): the entries live
// in a sorted run in an unlinked local temp file, read with pread (page
// cache, not the process's memory); memory holds the first id of each
// 4 KiB block of the run (0.4 B a chunk), a Bloom filter over it (1.2 B a
// chunk, so that most lookups of new chunks read nothing), and the puts
// and deletions since the last merge, at most mergeAt of them. A map of
// every chunk cost about 65 B a chunk live, twice that with the garbage
// collector's headroom: tens of MiB for a drive of small files.
//
// Not safe for concurrent use: callers hold Repository.mu.
type chunkIndex struct {
	log    *zap.Logger
	tmpDir string

	recent map[ChunkID]location // puts since the last merge; newer than the run
	gone   map[ChunkID]struct{} // run entries deleted since the last merge

	run    *os.File  // nil: everything is in recent (no run yet, or no temp file possible)
	runN   int       // records in the run
	fences []ChunkID // first id of every block of the run
	bloom  bloom     // over the run's ids
	block  []byte    // read buffer of one block

	n       int // live entries
	mergeAt int
	noRun   bool // the temp file failed once: stay in memory
}

const (
	chunkRecSize   = 32 + 4*4 + 1 // id, pack slot, offset, length, raw, flags
	chunkBlockRecs = 4096 / chunkRecSize
	chunkBlockSize = chunkBlockRecs * chunkRecSize
	// chunkMergeAt bounds recent and gone: about 1 MiB of map.
	chunkMergeAt = 16 << 10
)

func newChunkIndex(log *zap.Logger, tmpDir string) *chunkIndex {
	return &chunkIndex{log: log, tmpDir: tmpDir, recent: map[ChunkID]location{}, gone: map[ChunkID]struct{}{},
		mergeAt: chunkMergeAt, block: make([]byte, chunkBlockSize)}
}

func encodeChunkRec(b []byte, id ChunkID, loc location) {
	copy(b, id[:])
	binary.LittleEndian.PutUint32(b[32:], loc.pack)
	binary.LittleEndian.PutUint32(b[36:], loc.offset)
	binary.LittleEndian.PutUint32(b[40:], loc.length)
	binary.LittleEndian.PutUint32(b[44:], loc.raw)
	b[48] = loc.flags
}

func decodeChunkRec(b []byte) (ChunkID, location) {
	var id ChunkID
	copy(id[:], b)
	return id, location{
		pack: binary.LittleEndian.Uint32(b[32:]), offset: binary.LittleEndian.Uint32(b[36:]),
		length: binary.LittleEndian.Uint32(b[40:]), raw: binary.LittleEndian.Uint32(b[44:]), flags: b[48],
	}
}

// len is the number of chunks indexed.
func (c *chunkIndex) len() int { return c.n }

// get looks a chunk up.
func (c *chunkIndex) get(id ChunkID) (location, bool) {
	if loc, ok := c.recent[id]; ok {
		return loc, true
	}
	if _, ok := c.gone[id]; ok {
		return location{}, false
	}
	return c.inRun(id)
}

// inRun looks id up in the run: one block read when the Bloom filter lets
// it through.
func (c *chunkIndex) inRun(id ChunkID) (location, bool) {
	if c.run == nil || !c.bloom.has(id) {
		return location{}, false
	}
	// The last block whose first id is ≤ id.
	b := sort.Search(len(c.fences), func(i int) bool { return bytes.Compare(c.fences[i][:], id[:]) > 0 }) - 1
	if b < 0 {
		return location{}, false
	}
	recs := min(chunkBlockRecs, c.runN-b*chunkBlockRecs)
	buf := c.block[:recs*chunkRecSize]
	if _, err := c.run.ReadAt(buf, int64(b)*chunkBlockSize); err != nil {
		// A local temp file that cannot be read back: the disk is failing.
		// Saying "not indexed" costs a duplicate chunk or a failed read,
		// never a wrong one.
		c.log.Error("chunk index: read", zap.Error(err))
		return location{}, false
	}
	i := sort.Search(recs, func(i int) bool { return bytes.Compare(buf[i*chunkRecSize:i*chunkRecSize+32], id[:]) >= 0 })
	if i == recs || !bytes.Equal(buf[i*chunkRecSize:i*chunkRecSize+32], id[:]) {
		return location{}, false
	}
	_, loc := decodeChunkRec(buf[i*chunkRecSize:])
	return loc, true
}

// put adds a chunk or points it at a new location.
func (c *chunkIndex) put(id ChunkID, loc location) {
	if _, ok := c.get(id); !ok {
		c.n++
	}
	c.recent[id] = loc
	delete(c.gone, id)
	c.maybeMerge()
}

// delete removes a chunk.
func (c *chunkIndex) delete(id ChunkID) {
	if _, ok := c.get(id); !ok {
		return
	}
	c.n--
	delete(c.recent, id)
	if _, ok := c.inRun(id); ok {
		c.gone[id] = struct{}{}
	}
	c.maybeMerge()
}

func (c *chunkIndex) maybeMerge() {
	if c.noRun || len(c.recent)+len(c.gone) < c.mergeAt {
		return
	}
	if err := c.merge(); err != nil {
		c.log.Warn("chunk index: no temp file; keeping it in memory", zap.String("dir", c.tmpDir), zap.Error(err))
		c.noRun = true
	}
}

// each calls fn for every chunk in id order — the run with recent's puts
// and deletions laid over it — until fn returns false or an error. fn must
// not change the index. A run that cannot be read back is logged and
// returned.
func (c *chunkIndex) each(fn func(ChunkID, location) (bool, error)) error {
	keys := make([]ChunkID, 0, len(c.recent))
	for id := range c.recent {
		keys = append(keys, id)
	}
	slices.SortFunc(keys, func(a, b ChunkID) int { return bytes.Compare(a[:], b[:]) })
	var br *bufio.Reader
	if c.run != nil {
		br = bufio.NewReaderSize(io.NewSectionReader(c.run, 0, int64(c.runN)*chunkRecSize), 256<<10)
	}
	rec := make([]byte, chunkRecSize)
	k := 0
	for i := 0; i < c.runN; i++ {
		if _, err := io.ReadFull(br, rec); err != nil {
			c.log.Error("chunk index: read", zap.Error(err))
			return fmt.Errorf("read chunk index: %w", err)
		}
		id, loc := decodeChunkRec(rec)
		for ; k < len(keys) && bytes.Compare(keys[k][:], id[:]) < 0; k++ {
			if more, err := fn(keys[k], c.recent[keys[k]]); !more || err != nil {
				return err
			}
		}
		if k < len(keys) && keys[k] == id {
			loc = c.recent[id]
			k++
		} else if _, ok := c.gone[id]; ok {
			continue
		}
		if more, err := fn(id, loc); !more || err != nil {
			return err
		}
	}
	for ; k < len(keys); k++ {
		if more, err := fn(keys[k], c.recent[keys[k]]); !more || err != nil {
			return err
		}
	}
	return nil
}

// merge writes the live entries, sorted, into a new run.
func (c *chunkIndex) merge() error {
	f, err := os.CreateTemp(c.tmpDir, "chunkindex-*.tmp")
	if err != nil {
		return err
	}
	// Unlinked at once: nothing to clean up after a crash.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return err
	}
	n := 0
	fences := make([]ChunkID, 0, (c.n+chunkBlockRecs-1)/chunkBlockRecs)
	bl := newBloom(c.n)
	bw := bufio.NewWriterSize(f, 256<<10)
	rec := make([]byte, chunkRecSize)
	err = c.each(func(id ChunkID, loc location) (bool, error) {
		if n%chunkBlockRecs == 0 {
			fences = append(fences, id)
		}
		bl.add(id)
		encodeChunkRec(rec, id, loc)
		n++
		_, err := bw.Write(rec)
		return true, err
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return err
	}
	if c.run != nil {
		c.run.Close()
	}
	c.run, c.runN, c.fences, c.bloom = f, n, fences, bl
	clear(c.recent)
	clear(c.gone)
	return nil
}

// close releases the run.
func (c *chunkIndex) close() {
	if c.run != nil {
		c.run.Close()
		c.run = nil
	}
}

// bloom is a Bloom filter over chunk ids, ~10 bits an id (1 % false
// positives with 7 probes). Chunk ids are SHA-256 sums: their bytes are
// the hashes.
type bloom struct {
	bits []uint64
}

func newBloom(n int) bloom {
	words := max(1, (n*10+63)/64)
	return bloom{bits: make([]uint64, words)}
}

func (b *bloom) probes(id ChunkID, fn func(bit uint64) bool) bool {
	m := uint64(len(b.bits)) * 64
	h1 := binary.LittleEndian.Uint64(id[0:8])
	h2 := binary.LittleEndian.Uint64(id[8:16]) | 1
	for i := uint64(0); i < 7; i++ {
		if !fn((h1 + i*h2) % m) {
			return false
		}
	}
	return true
}

func (b *bloom) add(id ChunkID) {
	b.probes(id, func(bit uint64) bool { b.bits[bit/64] |= 1 << (bit % 64); return true })
}

func (b *bloom) has(id ChunkID) bool {
	if len(b.bits) == 0 {
		return false
	}
	return b.probes(id, func(bit uint64) bool { return b.bits[bit/64]&(1<<(bit%64)) != 0 })
}
