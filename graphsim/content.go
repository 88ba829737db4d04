package graphsim

import (
	"encoding/binary"
	"io"
	"math/bits"
	"strings"
	"sync"

	"github.com/backup-proxy/backup-proxy/graph/quickxor"
)

// File bytes are never stored: they are a pure function of (tenant seed,
// item id, content version), generated 4 KiB block by block so any range can
// be produced without generating what precedes it.
//
// A modified version keeps most blocks of the previous one (each block
// changes with probability 1/4 per version), as real edits do, so
// content-defined chunking and deduplication have something to find.
// Text-like files (.txt, .csv, ...) are compressible; others are not.

const genBlockSize = 4096

// content identifies one version of a file's bytes.
type content struct {
	seed    uint64 // derived from tenant seed and item id
	version int    // 1-based content version
	size    int64
	text    bool
}

func mix64(x uint64) uint64 {
	// splitmix64 finaliser: cheap, well distributed.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func mix3(a, b, c uint64) uint64 {
	return mix64(a ^ mix64(b^mix64(c+0x9e3779b97f4a7c15)))
}

func stringSeed(seed uint64, s string) uint64 {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h ^ mix64(seed))
}

// blockSeed returns the seed of block k in this version: the block's seed at
// the latest version ≤ c.version in which it changed.
func (c content) blockSeed(k int64) uint64 {
	for v := c.version; v > 1; v-- {
		h := mix3(c.seed, uint64(v), uint64(k))
		if h&3 == 0 {
			return h
		}
	}
	return mix3(c.seed, 1, uint64(k))
}

// fillBlock writes block k (full genBlockSize bytes) into buf.
func (c content) fillBlock(k int64, buf *[genBlockSize]byte) {
	s := c.blockSeed(k)
	if c.text {
		fillText(s, buf)
		return
	}
	// wyrand: one 64x64→128 multiply per 8 bytes.
	for i := 0; i < genBlockSize; i += 8 {
		s += 0xa0761d6478bd642f
		hi, lo := bits.Mul64(s, s^0xe7037ed1a0b428db)
		binary.LittleEndian.PutUint64(buf[i:], hi^lo)
	}
}

var textCorpus = sync.OnceValue(func() []byte {
	words := strings.Fields(`the of and to in is for on that with as by this be are from at or an it
		project report budget quarter meeting customer invoice contract review draft final update
		team plan schedule risk status action item owner date total revenue cost forecast sales
		region north south east west product service delivery support ticket release version
		approved pending closed open summary notes agenda minutes decision follow up next steps`)
	var b strings.Builder
	s := uint64(42)
	for b.Len() < 64<<10+genBlockSize {
		s = mix64(s + 1)
		b.WriteString(words[s%uint64(len(words))])
		switch s >> 60 {
		case 0:
			b.WriteString(".\n")
		case 1:
			b.WriteString(", ")
		default:
			b.WriteByte(' ')
		}
	}
	return []byte(b.String())
})

// fillText copies a window of an English-like corpus and overwrites a few
// bytes, so blocks compress well but do not repeat across files.
func fillText(s uint64, buf *[genBlockSize]byte) {
	corpus := textCorpus()
	off := int(s % uint64(len(corpus)-genBlockSize))
	copy(buf[:], corpus[off:off+genBlockSize])
	for range 16 {
		s = mix64(s + 0x9e3779b97f4a7c15)
		buf[int(s%genBlockSize)] = byte('a' + (s>>32)%26)
	}
}

// reader returns the bytes [off, end) of the content.
func (c content) reader(off, end int64) *contentReader {
	return &contentReader{c: c, off: off, end: end, blk: -1}
}

type contentReader struct {
	c        content
	off, end int64
	blk      int64
	buf      [genBlockSize]byte
}

func (r *contentReader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.off < r.end {
		k := r.off / genBlockSize
		if k != r.blk {
			r.c.fillBlock(k, &r.buf)
			r.blk = k
		}
		in := r.off % genBlockSize
		avail := min(int64(genBlockSize)-in, r.end-r.off)
		m := copy(p[n:], r.buf[in:in+avail])
		n += m
		r.off += int64(m)
	}
	return n, nil
}

// WriteTo streams the remaining bytes to w in 64 KiB writes.
func (r *contentReader) WriteTo(w io.Writer) (int64, error) {
	var out [16 * genBlockSize]byte
	var total int64
	for r.off < r.end {
		n, _ := r.Read(out[:])
		m, err := w.Write(out[:n])
		total += int64(m)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// quickXorHash streams the whole content once through the hash.
func (c content) quickXorHash() string {
	d := quickxor.New()
	_, _ = c.reader(0, c.size).WriteTo(d)
	return d.Base64()
}

// hashCell caches the quickXorHash of one content version.
type hashCell struct {
	once  sync.Once
	value string
}

func (h *hashCell) get(c content) string {
	h.once.Do(func() { h.value = c.quickXorHash() })
	return h.value
}
