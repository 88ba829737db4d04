package repo

import (
	"errors"

	"github.com/backup-proxy/backup-proxy/repo/catalog"
)

// Domain errors, for errors.Is at the gRPC edge. The catalogue's sentinels
// are the same values, so errors from either layer match.
var (
	// ErrNotFound: restore point, item, deltaLink or repository does not exist.
	ErrNotFound = catalog.ErrNotFound
	// ErrInvalidArgument: malformed request (empty ids, bad page token, unknown chunk, …).
	ErrInvalidArgument = catalog.ErrInvalidArgument
	// ErrClosed: the repository or session was closed, committed or aborted.
	ErrClosed = catalog.ErrClosed
	// ErrLocked: another process has the repository open.
	ErrLocked = catalog.ErrLocked
	// ErrInUse: the restore point is the base of a running job.
	ErrInUse = catalog.ErrInUse
	// ErrCorrupt: stored data failed an integrity check (hash, authentication, format).
	ErrCorrupt = errors.New("repository data corrupt")
	// ErrWrongKey: the key file does not open this repository.
	ErrWrongKey = errors.New("wrong repository key")
	// ErrInsecureKey: the key file is readable by group or others.
	ErrInsecureKey = errors.New("key file permissions too open")
	// ErrReadOnly: a write was attempted on a repository opened read-only.
	ErrReadOnly = errors.New("repository opened read-only")
)
