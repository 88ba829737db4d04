package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"reflect"
	"runtime"
	"testing"
)

// Decoders of what the repository reads from disk, fuzzed without
// encryption so that the fuzzer reaches the parsers (with a key, every
// mutation would only fail GCM authentication). Properties: no panic; the
// bytes allocated stay within a small multiple of the input (a count or
// length read from the file never sizes an allocation by itself); accepted
// values are within the bounds readers rely on; valid encodings round-trip.

// allocated returns the bytes fn allocates on the heap.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// checkAlloc runs fn (deterministic, repeatable) and fails if it allocates
// more than bound. The count is process-wide, so the fuzzing worker's own
// allocations can land in it: only a run that is over the bound three
// times in a row fails.
func checkAlloc(t *testing.T, what string, bound uint64, fn func()) {
	t.Helper()
	n := allocated(fn)
	for i := 0; i < 2 && n > bound; i++ {
		n = min(n, allocated(fn))
	}
	if n > bound {
		t.Fatalf("%s allocated %d bytes, more than %d", what, n, bound)
	}
}

// allocBound is what decoding n bytes may allocate: a few times the input
// (decoded structs are larger than their varints) plus a fixed allowance.
func allocBound(n int) uint64 { return 8*uint64(n) + 64<<10 }

func checkEntries(t *testing.T, entries []blobEntry) {
	t.Helper()
	for i, e := range entries {
		if e.length > maxStoredChunk || e.raw > maxChunkSize || e.flags&^flagZstd != 0 {
			t.Fatalf("entry %d accepted out of bounds: %+v", i, e)
		}
	}
}

func FuzzDecodeIndex(f *testing.F) {
	s := &sealer{}
	valid, _, err := encodeIndex(s, []indexedPack{
		{id: PackID{1}, size: 4096, entries: []blobEntry{
			{id: ChunkID{2}, offset: 8, length: 100, raw: 180, flags: flagZstd},
			{id: ChunkID{3}, offset: 108, length: 4000, raw: 4000},
		}},
		{id: PackID{4}, size: 8 << 20, entries: []blobEntry{}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(indexHeader))
	f.Add(append([]byte(indexHeader), 0xff, 0xff, 0xff, 0xff, 0x0f)) // a huge pack count
	f.Fuzz(func(t *testing.T, data []byte) {
		sum := sha256.Sum256(data)
		name := hex.EncodeToString(sum[:]) // the file's name: decoding starts past that check
		var packs []indexedPack
		var err error
		checkAlloc(t, fmt.Sprintf("decoding a %d-byte index", len(data)), allocBound(len(data)), func() {
			packs, err = decodeIndex(s, name, data)
		})
		if err != nil {
			return
		}
		for _, p := range packs {
			if p.size < 0 {
				t.Fatalf("pack %s of size %d", p.id, p.size)
			}
			checkEntries(t, p.entries)
		}
		again, name2, err := encodeIndex(s, packs)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeIndex(s, name2, again)
		if err != nil || !reflect.DeepEqual(back, packs) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, back, packs)
		}
	})
}

// packBytes is a pack file: header, blobs, trailer (salt and entries,
// unencrypted), footer.
func packBytes(blobs []byte, salt [16]byte, entries []blobEntry) []byte {
	trailer := appendEntries(salt[:], entries)
	out := append([]byte(packHeader), blobs...)
	out = append(out, trailer...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(trailer)))
	return append(out, packFooterTag...)
}

// trailerID is the id readTrailer expects of data: the hash of the
// trailer its footer points at, or zeros if it points nowhere.
func trailerID(data []byte) PackID {
	if len(data) < packFooterSize {
		return PackID{}
	}
	tlen := int64(binary.LittleEndian.Uint32(data[len(data)-packFooterSize:]))
	end := int64(len(data)) - packFooterSize
	if tlen > end {
		return PackID{}
	}
	return sha256.Sum256(data[end-tlen : end])
}

func FuzzPackTrailer(f *testing.F) {
	f.Add(packBytes(bytes.Repeat([]byte{0xaa}, 64), [16]byte{9}, []blobEntry{
		{id: ChunkID{1}, offset: 8, length: 40, raw: 40},
		{id: ChunkID{2}, offset: 48, length: 24, raw: 100, flags: flagZstd},
	}))
	f.Add(packBytes(nil, [16]byte{}, nil))
	f.Add([]byte(packHeader + "\xff\xff\xff\x7f" + packFooterTag)) // a trailer longer than the pack
	s := &sealer{}
	f.Fuzz(func(t *testing.T, data []byte) {
		id := trailerID(data)
		var entries []blobEntry
		var err error
		checkAlloc(t, fmt.Sprintf("reading the trailer of a %d-byte pack", len(data)), allocBound(len(data)), func() {
			entries, err = readTrailer(bytes.NewReader(data), int64(len(data)), id, s)
		})
		if err != nil {
			return
		}
		checkEntries(t, entries)
		tlen := int64(binary.LittleEndian.Uint32(data[len(data)-packFooterSize:]))
		limit := int64(len(data)) - packFooterSize - tlen
		for _, e := range entries {
			if int64(e.offset) < int64(len(packHeader)) || int64(e.offset)+int64(e.length) > limit {
				t.Fatalf("entry %+v outside the blobs [%d, %d)", e, len(packHeader), limit)
			}
		}
		var salt [16]byte
		copy(salt[:], data[limit:])
		again := packBytes(data[len(packHeader):limit], salt, entries)
		back, err := readTrailer(bytes.NewReader(again), int64(len(again)), trailerID(again), s)
		if err != nil || !reflect.DeepEqual(back, entries) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, back, entries)
		}
	})
}

// FuzzChunkCodec: a stored blob from disk decodes (decompresses, checks
// its hash) within bounded memory or fails, and any plaintext round-trips
// through encodeChunk and decodeChunk, encrypted or not.
func FuzzChunkCodec(f *testing.F) {
	f.Add([]byte("hello, hello, hello, hello, hello, hello, hello, hello, hello, hello"), []byte{}, uint8(0))
	f.Add([]byte{}, []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0x11, 0x00, 0x00, 'a'}, uint8(flagZstd))
	// A zstd frame header that announces 2^40 bytes of content.
	f.Add([]byte{0}, []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, uint8(flagZstd))
	var plainRepo, sealedRepo Repository
	for _, r := range []*Repository{&plainRepo, &sealedRepo} {
		r.opts = Options{Workers: 1}
		if err := r.setupCodecs(); err != nil {
			f.Fatal(err)
		}
	}
	plainRepo.seal = &sealer{}
	var err error
	if sealedRepo.seal, err = newSealer(bytes.Repeat([]byte{7}, 32)); err != nil {
		f.Fatal(err)
	}
	bufs := map[*Repository]*[]byte{&plainRepo: new([]byte), &sealedRepo: new([]byte)} // 8 MiB each: reused
	f.Fuzz(func(t *testing.T, plain, stored []byte, flags uint8) {
		if len(plain) > maxChunkSize || len(stored) > maxStoredChunk {
			return
		}
		// Arbitrary stored bytes, named by the hash of what an
		// uncompressed blob would hold so that one path can succeed.
		id := ChunkID(sha256.Sum256(stored))
		loc := location{length: uint32(len(stored)), raw: uint32(len(stored)), flags: flags & flagZstd}
		var out []byte
		var err error
		dst := make([]byte, 0, 64)
		checkAlloc(t, fmt.Sprintf("decoding a %d-byte blob", len(stored)), allocBound(len(stored))+2*maxChunkSize, func() {
			out, err = plainRepo.decodeChunk(id, loc, bytes.Clone(stored), dst)
		})
		if err == nil && (sha256.Sum256(out) != id || uint32(len(out)) != loc.raw) {
			t.Fatalf("decoded %d bytes that do not hash to the chunk id", len(out))
		}
		for _, r := range []*Repository{&plainRepo, &sealedRepo} {
			id := ChunkID(sha256.Sum256(plain))
			enc, fl, err := r.encodeChunk(id, plain, bufs[r])
			if err != nil {
				t.Fatal(err)
			}
			loc := location{length: uint32(len(enc)), raw: uint32(len(plain)), flags: fl}
			if loc.length > maxStoredChunk {
				t.Fatalf("%d bytes stored as %d, beyond maxStoredChunk", len(plain), loc.length)
			}
			got, err := r.decodeChunk(id, loc, bytes.Clone(enc), nil)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("round trip of %d bytes (flags %d, encrypted %v): %v", len(plain), fl, r.seal.aead != nil, err)
			}
		}
	})
}
