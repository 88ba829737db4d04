package repo

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
)

// PackID names a pack file: the SHA-256 of its stored trailer, which lists
// (and so commits to) every chunk id, offset and length in the pack.
type PackID [32]byte

func (id PackID) String() string { return hex.EncodeToString(id[:]) }

func parsePackID(s string) (PackID, bool) {
	var id PackID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// Pack file layout:
//
//	"BPPACK\x00\x01"                        8-byte header
//	blob…                                  sealed(compressed or raw chunk), AAD = chunk id
//	trailer                                sealed(salt(16) ‖ uvarint n ‖ n × entry), AAD = "pack trailer"
//	uint32 LE trailer length ‖ "BPPT"      8-byte footer
//
// entry = chunk id(32) ‖ uvarint offset ‖ uvarint length ‖ uvarint raw length ‖ flags(1).
// The salt keeps two packs with the same layout (unencrypted, concurrent
// writers of the same data) from getting the same name.
const (
	packHeader     = "BPPACK\x00\x01"
	packFooterTag  = "BPPT"
	packFooterSize = 8
	flagZstd       = 1
)

var aadTrailer = []byte("backup-proxy pack trailer")

// Entry bounds. A chunk is at most maxChunkSize bytes and is stored
// compressed only when that shrinks it, then sealed (nonce and tag), so no
// valid entry exceeds them; one that does is damage, and readers would
// allocate the length it claims.
const (
	maxStoredChunk = maxChunkSize + 4096
	// minEntrySize: chunk id, three one-byte uvarints and the flags.
	minEntrySize = 32 + 3 + 1
)

// blobEntry locates one chunk in a pack.
type blobEntry struct {
	id     ChunkID
	offset uint32
	length uint32 // stored bytes
	raw    uint32 // plaintext bytes
	flags  uint8
}

func appendEntries(b []byte, entries []blobEntry) []byte {
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = append(b, e.id[:]...)
		b = binary.AppendUvarint(b, uint64(e.offset))
		b = binary.AppendUvarint(b, uint64(e.length))
		b = binary.AppendUvarint(b, uint64(e.raw))
		b = append(b, e.flags)
	}
	return b
}

// decodeEntries parses a count-prefixed entry list and returns the rest.
func decodeEntries(b []byte) ([]blobEntry, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b))/minEntrySize {
		return nil, nil, fmt.Errorf("entry count: %w", ErrCorrupt)
	}
	b = b[k:]
	out := make([]blobEntry, n)
	for i := range out {
		if len(b) < 32 {
			return nil, nil, fmt.Errorf("entry %d: %w", i, ErrCorrupt)
		}
		copy(out[i].id[:], b)
		b = b[32:]
		var vals [3]uint64
		for j := range vals {
			v, k := binary.Uvarint(b)
			if k <= 0 || v > 1<<32-1 {
				return nil, nil, fmt.Errorf("entry %d field %d: %w", i, j, ErrCorrupt)
			}
			vals[j] = v
			b = b[k:]
		}
		if len(b) < 1 || b[0]&^flagZstd != 0 {
			return nil, nil, fmt.Errorf("entry %d flags: %w", i, ErrCorrupt)
		}
		if vals[1] > maxStoredChunk || vals[2] > maxChunkSize {
			return nil, nil, fmt.Errorf("entry %d of %d stored, %d raw bytes: %w", i, vals[1], vals[2], ErrCorrupt)
		}
		out[i].offset, out[i].length, out[i].raw, out[i].flags = uint32(vals[0]), uint32(vals[1]), uint32(vals[2]), b[0]
		b = b[1:]
	}
	return out, b, nil
}

// packKey is packs/<first byte hex>/<id hex>; 256 subdirectories keep
// directories small.
func packKey(id PackID) string {
	s := id.String()
	return "packs/" + s[:2] + "/" + s
}

// packWriter appends blobs to a temp file and finishes it as a pack.
type packWriter struct {
	f       File
	offset  int64
	entries []blobEntry
	id      PackID // set by finish
	size    int64  // set by finish
}

func newPackWriter(st Store) (*packWriter, error) {
	f, err := st.CreateTemp("pack-*.tmp")
	if err != nil {
		return nil, err
	}
	p := &packWriter{f: f, offset: int64(len(packHeader))}
	if err := p.write([]byte(packHeader)); err != nil {
		p.abort()
		return nil, err
	}
	return p, nil
}

func (p *packWriter) write(b []byte) error {
	if _, err := p.f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", p.f.Name(), err)
	}
	return nil
}

// abort removes the unfinished pack.
func (p *packWriter) abort() { discardTemp(p.f) }

func (p *packWriter) add(id ChunkID, stored []byte, raw int, flags uint8) error {
	if err := p.write(stored); err != nil {
		return err
	}
	p.entries = append(p.entries, blobEntry{id: id, offset: uint32(p.offset), length: uint32(len(stored)), raw: uint32(raw), flags: flags})
	p.offset += int64(len(stored))
	return nil
}

// finish writes the trailer and footer and returns the pack's id and size;
// the caller then publishes the file under packKey.
func (p *packWriter) finish(s *sealer) (PackID, int64, error) {
	plain := make([]byte, 16, 16+len(p.entries)*48)
	if _, err := rand.Read(plain); err != nil {
		return PackID{}, 0, err
	}
	plain = appendEntries(plain, p.entries)
	trailer, err := s.seal(nil, plain, aadTrailer)
	if err != nil {
		return PackID{}, 0, err
	}
	footer := binary.LittleEndian.AppendUint32(nil, uint32(len(trailer)))
	footer = append(footer, packFooterTag...)
	if err := p.write(append(trailer, footer...)); err != nil {
		return PackID{}, 0, err
	}
	p.id, p.size = sha256.Sum256(trailer), p.offset+int64(len(trailer))+packFooterSize
	return p.id, p.size, nil
}

// readTrailer reads and checks the trailer of a pack of the given size.
func readTrailer(f io.ReaderAt, size int64, id PackID, s *sealer) ([]blobEntry, error) {
	if size < int64(len(packHeader))+packFooterSize {
		return nil, fmt.Errorf("pack of %d bytes: %w", size, ErrCorrupt)
	}
	var footer [packFooterSize]byte
	if _, err := f.ReadAt(footer[:], size-packFooterSize); err != nil {
		return nil, fmt.Errorf("read pack footer: %w", err)
	}
	if string(footer[4:]) != packFooterTag {
		return nil, fmt.Errorf("pack footer tag: %w", ErrCorrupt)
	}
	tlen := int64(binary.LittleEndian.Uint32(footer[:4]))
	if tlen > size-packFooterSize-int64(len(packHeader)) {
		return nil, fmt.Errorf("pack trailer length %d: %w", tlen, ErrCorrupt)
	}
	trailer := make([]byte, tlen)
	if _, err := f.ReadAt(trailer, size-packFooterSize-tlen); err != nil {
		return nil, fmt.Errorf("read pack trailer: %w", err)
	}
	if sha256.Sum256(trailer) != id {
		return nil, fmt.Errorf("pack trailer does not hash to the pack id: %w", ErrCorrupt)
	}
	plain, err := s.open(trailer, aadTrailer)
	if err != nil {
		return nil, fmt.Errorf("pack trailer: %w", err)
	}
	if len(plain) < 16 {
		return nil, fmt.Errorf("pack trailer: %w", ErrCorrupt)
	}
	entries, rest, err := decodeEntries(plain[16:])
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("pack trailer entries: %w", ErrCorrupt)
	}
	limit := size - packFooterSize - tlen
	for _, e := range entries {
		if int64(e.offset) < int64(len(packHeader)) || int64(e.offset)+int64(e.length) > limit {
			return nil, fmt.Errorf("pack trailer entry %s outside blobs: %w", e.id, ErrCorrupt)
		}
	}
	return entries, nil
}
