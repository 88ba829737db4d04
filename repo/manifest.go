package repo

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// Restore point manifests.
//
// Every restore point is also an object of the store,
// restorepoints/<name>: a header, the catalogue operations that made it
// (items put and deleted, drives reset and removed, deltaLinks) in the
// order they were made, and an end record with its totals. The catalogue
// is a local index of the manifests: an agent sharing the store imports
// those it has not seen (Sync), and a lost catalogue can be rebuilt.
//
// Format: "BPRP\x00\x01" ‖ frames. A frame is a 4-byte little-endian length
// ‖ sealed(flags ‖ payload ‖ SHA-256(flags ‖ payload)), sealed with the
// manifest's name and the frame's number as associated data, so that
// frames cannot be moved between or within manifests; the last frame is
// flagged, so truncation shows. The payload (zstd-compressed unless the
// repository has compression off) is records: op byte ‖ uvarint length ‖
// body. Frames hold about manifestFrameSize bytes of records, so writing
// and reading a manifest of any size takes little memory.

const (
	manifestMagic     = "BPRP\x00\x01"
	manifestPrefix    = "restorepoints/"
	manifestFrameSize = 256 << 10
	maxManifestFrame  = 8 << 20

	frameZstd = 1 << 0
	frameLast = 1 << 1
)

// Manifest record kinds.
const (
	mHeader    byte = 1 // JSON manifestHeader
	mPut       byte = 2 // catalog.MarshalItem
	mDelete    byte = 3 // drive, item
	mDeltaLink byte = 4 // drive, link
	mReset     byte = 5 // drive
	mRemove    byte = 6 // drive
	mEnd       byte = 7 // JSON manifestEnd
)

type manifestHeader struct {
	Version int            `json:"version"`
	Name    RestorePointID `json:"name"`
	Tenant  string         `json:"tenant"`
	Source  string         `json:"source"`
	Label   string         `json:"label,omitempty"`
	Base    RestorePointID `json:"base,omitempty"`
}

type manifestEnd struct {
	Time         time.Time `json:"time"`
	Items        int64     `json:"items"`
	Bytes        int64     `json:"bytes"`
	ItemsWritten int64     `json:"items_written"`
	ItemsDeleted int64     `json:"items_deleted"`
}

func manifestKey(name RestorePointID) string { return manifestPrefix + string(name) }

func manifestAAD(name RestorePointID, frame uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("backup-proxy manifest "+string(name)+" "), frame)
}

// appendStrings appends each string as uvarint length ‖ bytes.
func appendStrings(b []byte, ss ...string) []byte {
	for _, s := range ss {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func splitStrings(b []byte, n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l {
			return nil, fmt.Errorf("manifest record: %w", ErrCorrupt)
		}
		out[i], b = string(b[k:k+int(l)]), b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("manifest record: trailing bytes: %w", ErrCorrupt)
	}
	return out, nil
}

// manifestWriter writes a session's manifest to a temp file as it goes.
type manifestWriter struct {
	r    *Repository
	name RestorePointID

	mu     sync.Mutex
	f      File
	buf    []byte // records of the frame being filled
	frames uint64
	err    error
}

func (r *Repository) newManifest(h manifestHeader) (*manifestWriter, error) {
	f, err := r.store.CreateTemp("restorepoints-*.tmp")
	if err != nil {
		return nil, err
	}
	m := &manifestWriter{r: r, name: h.Name, f: f}
	if _, err := f.Write([]byte(manifestMagic)); err != nil {
		discardTemp(f)
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	h.Version = 1
	hb, _ := json.Marshal(h)
	m.addLocked(mHeader, hb)
	return m, nil
}

// record runs apply (the catalogue operation) and, if it succeeds, appends
// the record, under one lock so the manifest has the catalogue's order.
func (m *manifestWriter) record(op byte, body []byte, apply func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if err := apply(); err != nil {
		return err
	}
	m.addLocked(op, body)
	return m.err
}

func (m *manifestWriter) addLocked(op byte, body []byte) {
	m.buf = append(m.buf, op)
	m.buf = binary.AppendUvarint(m.buf, uint64(len(body)))
	m.buf = append(m.buf, body...)
	if len(m.buf) >= manifestFrameSize {
		m.flushLocked(false)
	}
}

func (m *manifestWriter) flushLocked(last bool) {
	if m.err != nil {
		return
	}
	var flags byte
	payload := m.buf
	if m.r.enc != nil {
		flags |= frameZstd
		payload = m.r.enc.EncodeAll(m.buf, nil)
	}
	if last {
		flags |= frameLast
	}
	plain := make([]byte, 0, 1+len(payload)+sha256.Size)
	plain = append(plain, flags)
	plain = append(plain, payload...)
	sum := sha256.Sum256(plain)
	plain = append(plain, sum[:]...)
	sealed, err := m.r.seal.seal(make([]byte, 4, 4+len(plain)+m.r.seal.overhead()), plain, manifestAAD(m.name, m.frames))
	if err == nil {
		binary.LittleEndian.PutUint32(sealed, uint32(len(sealed)-4))
		_, err = m.f.Write(sealed)
	}
	if err != nil {
		m.err = fmt.Errorf("write manifest: %w", err)
		return
	}
	m.frames++
	m.buf = m.buf[:0]
}

// publish writes the end record and publishes the manifest.
func (m *manifestWriter) publish(ctx context.Context, end manifestEnd) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	eb, _ := json.Marshal(end)
	m.addLocked(mEnd, eb)
	m.flushLocked(true)
	if m.err != nil {
		discardTemp(m.f)
		return m.err
	}
	m.err = fmt.Errorf("manifest: %w", ErrClosed)
	return m.r.store.Publish(ctx, m.f, manifestKey(m.name))
}

func (m *manifestWriter) abort() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil || !errors.Is(m.err, ErrClosed) {
		discardTemp(m.f)
	}
	m.err = fmt.Errorf("manifest: %w", ErrClosed)
}

// readManifest calls fn for every record of a manifest, in order, and
// checks that the manifest is complete.
func (r *Repository) readManifest(ctx context.Context, name RestorePointID, fn func(op byte, body []byte) error) error {
	o, err := r.store.Open(ctx, manifestKey(name))
	if err != nil {
		return err
	}
	defer o.Close()
	br := bufio.NewReaderSize(io.NewSectionReader(o, 0, o.Size()), 1<<20)
	magic := make([]byte, len(manifestMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != manifestMagic {
		return fmt.Errorf("manifest %s: bad magic: %w", name, ErrCorrupt)
	}
	for frame := uint64(0); ; frame++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var lb [4]byte
		if _, err := io.ReadFull(br, lb[:]); err != nil {
			return fmt.Errorf("manifest %s: truncated before its last frame: %w", name, ErrCorrupt)
		}
		n := binary.LittleEndian.Uint32(lb[:])
		if n > maxManifestFrame {
			return fmt.Errorf("manifest %s: frame of %d bytes: %w", name, n, ErrCorrupt)
		}
		sealed := make([]byte, n)
		if _, err := io.ReadFull(br, sealed); err != nil {
			return fmt.Errorf("manifest %s: truncated frame: %w", name, ErrCorrupt)
		}
		plain, err := r.seal.open(sealed, manifestAAD(name, frame))
		if err != nil {
			return fmt.Errorf("manifest %s frame %d: %w", name, frame, err)
		}
		if len(plain) < 1+sha256.Size {
			return fmt.Errorf("manifest %s frame %d: %w", name, frame, ErrCorrupt)
		}
		body, sum := plain[:len(plain)-sha256.Size], plain[len(plain)-sha256.Size:]
		if got := sha256.Sum256(body); string(got[:]) != string(sum) {
			return fmt.Errorf("manifest %s frame %d: checksum: %w", name, frame, ErrCorrupt)
		}
		flags, payload := body[0], body[1:]
		if flags&^(frameZstd|frameLast) != 0 {
			return fmt.Errorf("manifest %s frame %d: flags %x: %w", name, frame, flags, ErrCorrupt)
		}
		if flags&frameZstd != 0 {
			if payload, err = r.dec.DecodeAll(payload, nil); err != nil {
				return fmt.Errorf("manifest %s frame %d: %v: %w", name, frame, err, ErrCorrupt)
			}
		}
		for len(payload) > 0 {
			op := payload[0]
			l, k := binary.Uvarint(payload[1:])
			if k <= 0 || uint64(len(payload)-1-k) < l {
				return fmt.Errorf("manifest %s frame %d: record: %w", name, frame, ErrCorrupt)
			}
			rec := payload[1+k : 1+k+int(l)]
			payload = payload[1+k+int(l):]
			if err := fn(op, rec); err != nil {
				return err
			}
		}
		if flags&frameLast != 0 {
			if _, err := br.ReadByte(); err != io.EOF {
				return fmt.Errorf("manifest %s: data after the last frame: %w", name, ErrCorrupt)
			}
			return nil
		}
	}
}

// importManifest replays a manifest into the local catalogue. Its base, if
// any, must have been imported first.
func (r *Repository) importManifest(ctx context.Context, name RestorePointID) (RestorePoint, error) {
	var (
		txn *catalog.Txn
		end *manifestEnd
	)
	err := r.readManifest(ctx, name, func(op byte, body []byte) error {
		if txn == nil && op != mHeader || end != nil {
			return fmt.Errorf("manifest %s: record %d out of place: %w", name, op, ErrCorrupt)
		}
		switch op {
		case mHeader:
			h, err := decodeHeader(name, body)
			if err != nil {
				return err
			}
			txn, err = r.cat.Begin(ctx, catalog.BeginOptions{Tenant: h.Tenant, Source: h.Source, Base: h.Base, Label: h.Label, Name: name})
			return err
		case mPut:
			it, err := catalog.UnmarshalItem(body)
			if err != nil {
				return fmt.Errorf("manifest %s: %w", name, err)
			}
			return txn.Put(ctx, it)
		case mDelete:
			f, err := splitStrings(body, 2)
			if err != nil {
				return err
			}
			return txn.Delete(ctx, f[0], f[1])
		case mDeltaLink:
			f, err := splitStrings(body, 2)
			if err != nil {
				return err
			}
			return txn.SetDeltaLink(f[0], f[1])
		case mReset, mRemove:
			f, err := splitStrings(body, 1)
			if err != nil {
				return err
			}
			if op == mReset {
				return txn.ResetDrive(f[0])
			}
			return txn.RemoveDrive(f[0])
		case mEnd:
			end = &manifestEnd{}
			if err := json.Unmarshal(body, end); err != nil {
				return fmt.Errorf("manifest %s: end: %w", name, ErrCorrupt)
			}
			return nil
		default:
			return fmt.Errorf("manifest %s: record kind %d: %w", name, op, ErrCorrupt)
		}
	})
	if err == nil && end == nil {
		err = fmt.Errorf("manifest %s: no end record: %w", name, ErrCorrupt)
	}
	if err != nil {
		if txn != nil {
			_ = txn.Abort()
		}
		return RestorePoint{}, err
	}
	txn.SetTime(end.Time)
	rp, err := txn.Commit(ctx)
	if err != nil {
		return RestorePoint{}, err
	}
	if rp.Items != end.Items || rp.Bytes != end.Bytes {
		// The replay disagrees with what the writer committed: do not
		// keep a wrong restore point.
		_ = r.cat.ForgetRestorePoint(ctx, rp.ID)
		return RestorePoint{}, fmt.Errorf("manifest %s: replay gives %d items, %d bytes; the writer had %d, %d: %w",
			name, rp.Items, rp.Bytes, end.Items, end.Bytes, ErrCorrupt)
	}
	return rp, nil
}

// isManifestKey reports whether key names a restore point manifest.
func isManifestKey(key string) (RestorePointID, bool) {
	name, ok := strings.CutPrefix(key, manifestPrefix)
	return RestorePointID(name), ok && catalog.ValidName(RestorePointID(name))
}

var errStopReading = errors.New("stop")

// readManifestHeader reads the header of a manifest (its first record).
func (r *Repository) readManifestHeader(ctx context.Context, name RestorePointID) (manifestHeader, error) {
	var h manifestHeader
	err := r.readManifest(ctx, name, func(op byte, body []byte) error {
		if op != mHeader {
			return fmt.Errorf("manifest %s: no header: %w", name, ErrCorrupt)
		}
		var err error
		if h, err = decodeHeader(name, body); err != nil {
			return err
		}
		return errStopReading
	})
	if errors.Is(err, errStopReading) {
		err = nil
	}
	return h, err
}

func decodeHeader(name RestorePointID, body []byte) (manifestHeader, error) {
	var h manifestHeader
	if err := json.Unmarshal(body, &h); err != nil || h.Version != 1 || h.Name != name {
		return manifestHeader{}, fmt.Errorf("manifest %s: header: %w", name, ErrCorrupt)
	}
	return h, nil
}
