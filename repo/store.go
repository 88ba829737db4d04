package repo

import (
	"context"
	"io"
	"time"
)

// Store is where a repository keeps its objects: the config, packs, index
// files and restore point manifests. Keys are slash-separated paths
// ("config", "packs/ab/ab…", "index/…", "restorepoints/…"). Two stores
// exist: a local directory (DirStore) and an S3-compatible bucket
// (S3Store). The catalogue and temporary files always stay on local disk.
//
// Every object is written once and never changed: a writer fills a local
// temp file and publishes it under its key in one step, so that a reader —
// in this process or another agent — sees the whole object or nothing.
// A missing object is reported as an error satisfying
// errors.Is(err, fs.ErrNotExist).
type Store interface {
	// CreateTemp creates a local temporary file (mode 0600) for an object
	// being written; pattern is as os.CreateTemp's.
	CreateTemp(pattern string) (File, error)
	// Publish makes the written temp file f the object key, atomically and
	// durably. f is closed and removed whatever the outcome. Publishing a
	// key that exists replaces it (keys are content hashes or unique names,
	// so a replacement has the same content).
	Publish(ctx context.Context, f File, key string) error
	// Open opens an object for reading.
	Open(ctx context.Context, key string) (Object, error)
	// Stat describes an object.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix, in no
	// particular order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Remove removes objects; a missing one is not an error. When Remove
	// returns nil the removals are durable, so that a later step may
	// depend on them (Prune drops index files before the packs they list).
	Remove(ctx context.Context, keys ...string) error
	// TempDir is the local directory of temp files, cleaned at Open.
	TempDir() string
	// String names the store for logs and errors, without credentials.
	String() string
}

// Object is an open stored object.
type Object interface {
	io.ReaderAt
	io.Reader
	io.Closer
	Size() int64
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}
