package repo

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// ChunkID identifies a chunk: the SHA-256 of its plaintext.
type ChunkID = catalog.ChunkID

// Index file layout: "BPINDX\x00\x01" ‖ sealed(body), AAD = "index"; the
// file is named by the hex SHA-256 of its bytes, so any damaged byte is
// detected when it is loaded.
//
//	body = uvarint packs ‖ per pack: pack id(32) ‖ uvarint size ‖ entries (as in a pack trailer)
//
// Index files are immutable. A writer adds one per pack it finishes (after
// the pack is durable); prune merges them.
const indexHeader = "BPINDX\x00\x01"

var aadIndex = []byte("backup-proxy index")

type indexedPack struct {
	id      PackID
	size    int64
	entries []blobEntry
}

func encodeIndex(s *sealer, packs []indexedPack) ([]byte, string, error) {
	var body []byte
	body = binary.AppendUvarint(body, uint64(len(packs)))
	for _, p := range packs {
		body = append(body, p.id[:]...)
		body = binary.AppendUvarint(body, uint64(p.size))
		body = appendEntries(body, p.entries)
	}
	out, err := s.seal([]byte(indexHeader), body, aadIndex)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(out)
	return out, hex.EncodeToString(sum[:]), nil
}

func decodeIndex(s *sealer, name string, data []byte) ([]indexedPack, error) {
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != name {
		return nil, fmt.Errorf("index file %s does not hash to its name: %w", name, ErrCorrupt)
	}
	if len(data) < len(indexHeader) || string(data[:len(indexHeader)]) != indexHeader {
		return nil, fmt.Errorf("index file %s header: %w", name, ErrCorrupt)
	}
	body, err := s.open(data[len(indexHeader):], aadIndex)
	if err != nil {
		return nil, fmt.Errorf("index file %s: %w", name, err)
	}
	// A pack takes at least its id, a size and an entry count: a larger
	// count is damage, and would size the allocation below.
	n, k := binary.Uvarint(body)
	if k <= 0 || n > uint64(len(body))/(32+1+1) {
		return nil, fmt.Errorf("index file %s pack count: %w", name, ErrCorrupt)
	}
	body = body[k:]
	packs := make([]indexedPack, 0, n)
	for i := uint64(0); i < n; i++ {
		if len(body) < 32 {
			return nil, fmt.Errorf("index file %s pack %d: %w", name, i, ErrCorrupt)
		}
		var p indexedPack
		copy(p.id[:], body)
		size, k := binary.Uvarint(body[32:])
		if k <= 0 || size > math.MaxInt64 {
			return nil, fmt.Errorf("index file %s pack %d size: %w", name, i, ErrCorrupt)
		}
		p.size = int64(size)
		p.entries, body, err = decodeEntries(body[32+k:])
		if err != nil {
			return nil, fmt.Errorf("index file %s pack %d: %w", name, i, err)
		}
		packs = append(packs, p)
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("index file %s trailing bytes: %w", name, ErrCorrupt)
	}
	return packs, nil
}

// location is where a chunk lives; pack is a slot in memIndex.packs.
type location struct {
	pack   uint32
	offset uint32
	length uint32
	raw    uint32
	flags  uint8
}

type packMeta struct {
	id     PackID
	size   int64
	chunks int // entries its index lists
	live   bool
}

// memIndex is the process's index of the index files: packs in memory,
// chunks in a chunkIndex (mostly in a local temp file). It holds one
// location per chunk (duplicates, written by concurrent writers, are
// counted as dead space by prune). Callers lock Repository.mu.
type memIndex struct {
	packs    []packMeta
	packSlot map[PackID]uint32
	chunks   *chunkIndex
	files    map[string][]PackID // index file name → packs it lists
	stored   int64               // sum of stored blob lengths (canonical copies)
	raw      int64
}

func newMemIndex(log *zap.Logger, tmpDir string) *memIndex {
	return &memIndex{packSlot: map[PackID]uint32{}, chunks: newChunkIndex(log, tmpDir), files: map[string][]PackID{}}
}

func (m *memIndex) addPack(p indexedPack) {
	slot, ok := m.packSlot[p.id]
	if !ok {
		slot = uint32(len(m.packs))
		m.packs = append(m.packs, packMeta{id: p.id, size: p.size, chunks: len(p.entries), live: true})
		m.packSlot[p.id] = slot
	}
	for _, e := range p.entries {
		if _, dup := m.chunks.get(e.id); dup {
			continue
		}
		m.chunks.put(e.id, location{pack: slot, offset: e.offset, length: e.length, raw: e.raw, flags: e.flags})
		m.stored += int64(e.length)
		m.raw += int64(e.raw)
	}
}

func (m *memIndex) addFile(name string, packs []indexedPack) {
	ids := make([]PackID, len(packs))
	for i, p := range packs {
		m.addPack(p)
		ids[i] = p.id
	}
	m.files[name] = ids
}

// removeChunk drops a chunk so that no writer deduplicates against it.
func (m *memIndex) removeChunk(id ChunkID) {
	if loc, ok := m.chunks.get(id); ok {
		m.stored -= int64(loc.length)
		m.raw -= int64(loc.raw)
		m.chunks.delete(id)
	}
}

func (m *memIndex) removePack(id PackID) {
	if slot, ok := m.packSlot[id]; ok {
		m.packs[slot].live = false
		delete(m.packSlot, id)
	}
}

func (m *memIndex) livePacks() int {
	return len(m.packSlot)
}

func indexKey(name string) string { return "index/" + name }
