package backup

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/graph/quickxor"
)

// resumingReader streams one file from Microsoft 365. When the stream breaks
// (connection reset, an expired download URL, a short body) it asks again
// from the byte it got to, with Range, so a large file is never downloaded
// twice. It hashes what it reads with quickXorHash for verification.
type resumingReader struct {
	ctx      context.Context
	client   *graph.Client
	driveID  string
	itemID   string
	size     int64
	maxOpens int

	body    io.ReadCloser
	opens   int
	read    int64
	hash    *quickxor.Digest
	lastErr error
}

func newResumingReader(ctx context.Context, c *graph.Client, driveID, itemID string, size int64, maxOpens int) *resumingReader {
	return &resumingReader{ctx: ctx, client: c, driveID: driveID, itemID: itemID, size: size, maxOpens: maxOpens, hash: quickxor.New()}
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		if r.body == nil {
			if r.opens >= r.maxOpens {
				return 0, fmt.Errorf("%w after %d attempts: %v", errSourceRead, r.opens, r.lastErr)
			}
			r.opens++
			body, err := r.client.Download(r.ctx, r.driveID, r.itemID, r.read)
			switch {
			case errors.Is(err, graph.ErrNotFound), r.ctx.Err() != nil:
				return 0, err
			case err != nil:
				r.lastErr = err // e.g. an expired download URL: the next attempt gets a fresh one
				continue
			}
			r.body = body
		}
		n, err := r.body.Read(p)
		r.read += int64(n)
		r.hash.Write(p[:n])
		if r.read > r.size {
			return n, fmt.Errorf("%w: more than the %d bytes Graph announced", errContentMismatch, r.size)
		}
		switch {
		case err == io.EOF && r.read == r.size:
			return n, io.EOF
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			r.body.Close()
			r.body = nil
			r.lastErr = err
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, nil
	}
}

// Close releases the current response body.
func (r *resumingReader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

// verify compares what was read with Graph's size and quickXorHash.
func (r *resumingReader) verify(quickXorHash string) error {
	if r.read != r.size {
		return fmt.Errorf("%w: %d bytes read, Graph announced %d", errContentMismatch, r.read, r.size)
	}
	if quickXorHash == "" {
		return nil // Graph gives no hash for some items; size is all we can check
	}
	if got := r.hash.Base64(); got != quickXorHash {
		return fmt.Errorf("%w: quickXorHash %s, Graph announced %s", errContentMismatch, got, quickXorHash)
	}
	return nil
}
