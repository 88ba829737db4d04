// Package quickxor implements quickXorHash, the content hash SharePoint
// Online and OneDrive for Business report for every file
// (driveItem.file.hashes.quickXorHash).
//
// The hash keeps a 160-bit state; the byte at index i of the stream is XORed
// into the state rotated left by (11*i) mod 160 bits; the final 20 bytes are
// the state little-endian with the 64-bit little-endian stream length XORed
// into bytes 12..19.
//
// Because 11*160 ≡ 0 (mod 160), every byte whose index has the same residue
// mod 160 lands on the same bit offset. The implementation therefore XORs the
// input into a 160-byte accumulator indexed by that residue, eight bytes at a
// time, and only places the 160 accumulated bytes at their bit offsets when
// Sum is called. That keeps Write at memory-bandwidth speed.
package quickxor

import (
	"encoding/base64"
	"encoding/binary"
	"hash"
)

const (
	// Size is the size of a quickXorHash checksum in bytes.
	Size = 20
	// BlockSize is the period of the algorithm in bytes: bytes 160 apart
	// share a bit offset.
	BlockSize = 160

	shift     = 11
	widthBits = 8 * Size
	words     = BlockSize / 8
)

// Digest is a streaming quickXorHash. The zero value is ready to use.
type Digest struct {
	acc    [words]uint64 // acc byte k (little-endian) = XOR of input bytes with index ≡ k (mod 160)
	length uint64        // total bytes written
}

var _ hash.Hash = (*Digest)(nil)

// New returns a new quickXorHash hash.Hash.
func New() *Digest { return &Digest{} }

// Size returns Size.
func (d *Digest) Size() int { return Size }

// BlockSize returns BlockSize.
func (d *Digest) BlockSize() int { return BlockSize }

// Reset clears the state.
func (d *Digest) Reset() { *d = Digest{} }

// Write adds p to the hash. It never fails.
func (d *Digest) Write(p []byte) (int, error) {
	n := len(p)
	pos := int(d.length % BlockSize)
	d.length += uint64(n)

	// Bring the accumulator position to a word boundary byte by byte.
	for len(p) > 0 && pos%8 != 0 {
		d.acc[pos/8] ^= uint64(p[0]) << (8 * (pos % 8))
		p = p[1:]
		pos = (pos + 1) % BlockSize
	}
	// Word-aligned part up to the end of the current 160-byte period.
	for len(p) >= 8 && pos != 0 {
		d.acc[pos/8] ^= binary.LittleEndian.Uint64(p)
		p = p[8:]
		pos = (pos + 8) % BlockSize
	}
	// Whole periods: 20 words XORed straight into the accumulator.
	if pos == 0 {
		a := &d.acc
		for len(p) >= BlockSize {
			b := p[:BlockSize:BlockSize]
			a[0] ^= binary.LittleEndian.Uint64(b[0:])
			a[1] ^= binary.LittleEndian.Uint64(b[8:])
			a[2] ^= binary.LittleEndian.Uint64(b[16:])
			a[3] ^= binary.LittleEndian.Uint64(b[24:])
			a[4] ^= binary.LittleEndian.Uint64(b[32:])
			a[5] ^= binary.LittleEndian.Uint64(b[40:])
			a[6] ^= binary.LittleEndian.Uint64(b[48:])
			a[7] ^= binary.LittleEndian.Uint64(b[56:])
			a[8] ^= binary.LittleEndian.Uint64(b[64:])
			a[9] ^= binary.LittleEndian.Uint64(b[72:])
			a[10] ^= binary.LittleEndian.Uint64(b[80:])
			a[11] ^= binary.LittleEndian.Uint64(b[88:])
			a[12] ^= binary.LittleEndian.Uint64(b[96:])
			a[13] ^= binary.LittleEndian.Uint64(b[104:])
			a[14] ^= binary.LittleEndian.Uint64(b[112:])
			a[15] ^= binary.LittleEndian.Uint64(b[120:])
			a[16] ^= binary.LittleEndian.Uint64(b[128:])
			a[17] ^= binary.LittleEndian.Uint64(b[136:])
			a[18] ^= binary.LittleEndian.Uint64(b[144:])
			a[19] ^= binary.LittleEndian.Uint64(b[152:])
			p = p[BlockSize:]
		}
		for len(p) >= 8 {
			d.acc[pos/8] ^= binary.LittleEndian.Uint64(p)
			p = p[8:]
			pos += 8
		}
	}
	// Tail shorter than a word.
	for _, b := range p {
		d.acc[pos/8] ^= uint64(b) << (8 * (pos % 8))
		pos = (pos + 1) % BlockSize
	}
	return n, nil
}

// Sum appends the current checksum to b without changing the state.
func (d *Digest) Sum(b []byte) []byte {
	var state [Size]byte
	for k := range BlockSize {
		v := byte(d.acc[k/8] >> (8 * (k % 8)))
		if v == 0 {
			continue
		}
		off := (shift * k) % widthBits
		i, s := off/8, off%8
		state[i] ^= v << s
		if s != 0 {
			state[(i+1)%Size] ^= v >> (8 - s)
		}
	}
	var l [8]byte
	binary.LittleEndian.PutUint64(l[:], d.length)
	for i := range l {
		state[Size-8+i] ^= l[i]
	}
	return append(b, state[:]...)
}

// Base64 returns the checksum in the form Graph reports it: standard,
// padded base64.
func (d *Digest) Base64() string {
	return base64.StdEncoding.EncodeToString(d.Sum(nil))
}

// Sum returns the quickXorHash checksum of data.
func Sum(data []byte) [Size]byte {
	var d Digest
	_, _ = d.Write(data)
	var out [Size]byte
	copy(out[:], d.Sum(nil))
	return out
}

// Base64 returns the quickXorHash of data as Graph reports it.
func Base64(data []byte) string {
	s := Sum(data)
	return base64.StdEncoding.EncodeToString(s[:])
}
