package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
)

// ---- catalogue pass-throughs ----

// ListRestorePoints returns the restore points of tenant and source ("" = all), oldest first.
func (r *Repository) ListRestorePoints(ctx context.Context, tenant, source string) ([]RestorePoint, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	return r.cat.ListRestorePoints(ctx, tenant, source)
}

// RestorePoint returns one restore point.
func (r *Repository) RestorePoint(ctx context.Context, id RestorePointID) (RestorePoint, error) {
	if err := r.check(); err != nil {
		return RestorePoint{}, err
	}
	return r.cat.RestorePoint(ctx, id)
}

// LatestRestorePoint returns the newest restore point of (tenant, source):
// the base of the next incremental job.
func (r *Repository) LatestRestorePoint(ctx context.Context, tenant, source string) (RestorePoint, error) {
	if err := r.check(); err != nil {
		return RestorePoint{}, err
	}
	return r.cat.Latest(ctx, tenant, source)
}

// DeltaLink returns the last committed deltaLink of (tenant, source, drive)
// and the restore point that carries it; ErrNotFound when there is none
// (the job then crawls the drive in full).
func (r *Repository) DeltaLink(ctx context.Context, tenant, source, driveID string) (string, RestorePointID, error) {
	if err := r.check(); err != nil {
		return "", "", err
	}
	return r.cat.DeltaLink(ctx, tenant, source, driveID)
}

// ListItems lists items of a restore point by path prefix, a page at a time,
// in a stable (drive, path, item id) order.
func (r *Repository) ListItems(ctx context.Context, req ListItemsRequest) ([]Item, string, error) {
	if err := r.check(); err != nil {
		return nil, "", err
	}
	return r.cat.ListItems(ctx, req)
}

// Item returns an item of a restore point by item id.
func (r *Repository) Item(ctx context.Context, rp RestorePointID, itemID string) (Item, error) {
	if err := r.check(); err != nil {
		return Item{}, err
	}
	return r.cat.Item(ctx, rp, itemID)
}

// ItemInDrive returns item (driveID, itemID) of restore point rp.
func (r *Repository) ItemInDrive(ctx context.Context, rp RestorePointID, driveID, itemID string) (Item, error) {
	if err := r.check(); err != nil {
		return Item{}, err
	}
	return r.cat.ItemInDrive(ctx, rp, driveID, itemID)
}

// LookupVersion finds a stored version of (driveID, itemID) by cTag or
// quickXorHash, as catalog.LookupVersion. Writers should use
// Session.LookupVersion, which also protects the chunks from prune.
func (r *Repository) LookupVersion(ctx context.Context, tenant, driveID, itemID, cTag, quickXorHash string) (Item, bool, error) {
	if err := r.check(); err != nil {
		return Item{}, false, err
	}
	return r.cat.LookupVersion(ctx, tenant, driveID, itemID, cTag, quickXorHash)
}

// ---- reading content ----

// ItemReader streams one item's content, one chunk in memory at a time.
// It implements io.Reader and io.WriterTo. Every chunk is authenticated and
// checked against its SHA-256 id; a mismatch fails with ErrCorrupt.
type ItemReader struct {
	r     *Repository
	ctx   context.Context
	item  Item
	next  int    // next chunk index
	cur   []byte // unread part of the current chunk
	buf   *[]byte
	stbuf *[]byte
	pf    packFile
	n     int64
	err   error
}

// OpenItem opens the content of itemID in restore point rp.
func (r *Repository) OpenItem(ctx context.Context, rp RestorePointID, itemID string) (*ItemReader, error) {
	return r.OpenItemInDrive(ctx, rp, "", itemID)
}

// OpenItemInDrive is OpenItem for an item id that several drives may hold.
func (r *Repository) OpenItemInDrive(ctx context.Context, rp RestorePointID, driveID, itemID string) (*ItemReader, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	it, err := r.cat.ItemInDrive(ctx, rp, driveID, itemID)
	if err != nil {
		return nil, err
	}
	return r.OpenContent(ctx, it), nil
}

// OpenContent streams the content an Item describes (e.g. one returned by
// ListItems).
func (r *Repository) OpenContent(ctx context.Context, it Item) *ItemReader {
	return &ItemReader{r: r, ctx: ctx, item: it}
}

// Item returns the item being read.
func (ir *ItemReader) Item() Item { return ir.item }

// fill decodes the next chunk; io.EOF after the last one.
func (ir *ItemReader) fill() error {
	if ir.err != nil {
		return ir.err
	}
	if ir.next == len(ir.item.Chunks) {
		if ir.n != ir.item.Size {
			ir.err = fmt.Errorf("item %s: content is %d bytes, catalogue says %d: %w", ir.item.ItemID, ir.n, ir.item.Size, ErrCorrupt)
			return ir.err
		}
		ir.err = io.EOF
		return ir.err
	}
	if err := ir.ctx.Err(); err != nil {
		ir.err = err
		return err
	}
	if ir.buf == nil {
		ir.buf, ir.stbuf = getBuf(maxChunkSize), getBuf(maxChunkSize+4096)
	}
	id := ir.item.Chunks[ir.next]
	plain, err := ir.r.readChunk(id, &ir.pf, ir.stbuf, ir.buf)
	if err != nil {
		ir.err = fmt.Errorf("item %s (%s) chunk %d: %w", ir.item.ItemID, ir.item.Path, ir.next, err)
		return ir.err
	}
	ir.next++
	ir.n += int64(len(plain))
	ir.cur = plain
	return nil
}

// Read implements io.Reader.
func (ir *ItemReader) Read(p []byte) (int, error) {
	for len(ir.cur) == 0 {
		if err := ir.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, ir.cur)
	ir.cur = ir.cur[n:]
	return n, nil
}

// WriteTo implements io.WriterTo: whole chunks, no extra copy.
func (ir *ItemReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(ir.cur) == 0 {
			if err := ir.fill(); err != nil {
				if errors.Is(err, io.EOF) {
					return total, nil
				}
				return total, err
			}
		}
		n, err := w.Write(ir.cur)
		total += int64(n)
		ir.cur = ir.cur[n:]
		if err != nil {
			return total, err
		}
	}
}

// Close releases the reader's buffers and file.
func (ir *ItemReader) Close() error {
	ir.pf.close()
	if ir.buf != nil {
		putBuf(ir.buf)
		putBuf(ir.stbuf)
		ir.buf, ir.stbuf, ir.cur = nil, nil, nil
	}
	if ir.err == nil {
		ir.err = fmt.Errorf("item reader: %w", ErrClosed)
	}
	return nil
}

// packFile caches the open pack a reader reads from.
type packFile struct {
	id PackID
	f  Object
}

func (p *packFile) close() {
	if p.f != nil {
		_ = p.f.Close()
		p.f = nil
	}
}

func (r *Repository) locate(id ChunkID) (location, PackID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	loc, ok := r.idx.chunks.get(id)
	if !ok {
		return location{}, PackID{}, false
	}
	return loc, r.idx.packs[loc.pack].id, true
}

// readChunk reads, authenticates, decompresses and checks one chunk.
func (r *Repository) readChunk(id ChunkID, pf *packFile, stbuf, dst *[]byte) ([]byte, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		loc, pack, ok := r.locate(id)
		if !ok {
			return nil, fmt.Errorf("chunk %s not in the index: %w", id, ErrCorrupt)
		}
		if pf.f == nil || pf.id != pack {
			pf.close()
			err := retryTransient(func() error {
				f, err := r.store.Open(context.Background(), packKey(pack))
				if err == nil {
					pf.f, pf.id = f, pack
				}
				return err
			})
			if errors.Is(err, fs.ErrNotExist) {
				// Prune may have just moved the chunk to a new pack: look again.
				lastErr = fmt.Errorf("pack %s of chunk %s is missing: %w", pack, id, ErrCorrupt)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("open pack %s: %w", pack, err)
			}
		}
		if cap(*stbuf) < int(loc.length) {
			*stbuf = make([]byte, loc.length)
		}
		stored := (*stbuf)[:loc.length]
		err := retryTransient(func() error {
			_, err := pf.f.ReadAt(stored, int64(loc.offset))
			return err
		})
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("chunk %s beyond the end of pack %s: %w", id, pack, ErrCorrupt)
		}
		if err != nil {
			return nil, fmt.Errorf("read chunk %s from pack %s: %w", id, pack, err)
		}
		if cap(*dst) < int(loc.raw) {
			*dst = make([]byte, 0, loc.raw)
		}
		return r.decodeChunk(id, loc, stored, *dst)
	}
	return nil, lastErr
}
