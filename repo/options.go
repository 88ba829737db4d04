package repo

import (
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/lease"
)

// Options configure Open. The zero value opens an existing repository with
// the defaults below.
type Options struct {
	// Create initialises a new repository in dir when it has none.
	Create bool
	// ReadOnly opens without taking the writer lock (verify, listing, reading).
	ReadOnly bool
	// DisableEncryption creates the repository without encryption. Only used
	// when creating; an existing repository keeps its setting. Encryption is
	// on by default: AES-256-GCM costs about 8 % of the write throughput of
	// incompressible data on 2 cores (7–11 % in BenchmarkWrite runs; less
	// for compressible data, which is sealed after compression).
	DisableEncryption bool
	// KeyFile is where the 32-byte repository key lives (hex, mode 0600).
	// Default: <dir>/key. Keep a copy elsewhere: without it the data is lost.
	KeyFile string
	// PackSize is the size at which a pack file is closed. Default 32 MiB.
	PackSize int64
	// Compression: CompressionFastest (default), CompressionDefault or CompressionOff.
	Compression Compression
	// Workers bounds the work of writes across all sessions: Workers+2
	// chunk slots of about 16.3 MiB each (8 MiB input + its encoded form)
	// for chunks being hashed, compressed, encrypted and written, and
	// Workers scanners of 16 MiB for streams over 512 KiB being chunked.
	// Write memory is so bounded whatever the number of sessions and
	// stream sizes (at most ~97 MiB with 2 workers, a single stream using
	// one scanner, plus 512 KiB per Store in progress). Default GOMAXPROCS.
	Workers int
	// Store keeps the repository's objects (config, packs, index files,
	// restore point manifests). Default: a DirStore of the repository
	// directory, whose other contents (catalogue, key, temp files) are
	// local in every case.
	Store Store
	// Leases keep agents that share a store from writing one source at
	// once and from pruning while others write (see AcquireSource).
	// Default: in-process leases, enough for one agent.
	Leases lease.Manager
	// LeaseTTL is how long a lease outlives its holder's last renewal
	// (renewed every third of it): after an agent dies, its sources wait
	// this long. Default 1 minute.
	LeaseTTL time.Duration
	// FS is the local file layer; default OSFS. Tests inject faults here.
	FS FS
	// Clock stamps restore points and drives retention; default time.Now.
	Clock func() time.Time
	// Logger; default zap.NewNop().
	Logger *zap.Logger
}

// Compression selects the zstd level for chunks.
type Compression int

// Compression levels.
const (
	CompressionFastest Compression = iota
	CompressionDefault
	CompressionOff
)

const (
	defaultPackSize = 32 << 20
	minPackSize     = 64 << 10
)

func (o Options) withDefaults() Options {
	if o.PackSize == 0 {
		o.PackSize = defaultPackSize
	}
	if o.PackSize < minPackSize {
		o.PackSize = minPackSize
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.FS == nil {
		o.FS = OSFS{}
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Leases == nil {
		// Real time, not Clock: tests move Clock by days.
		o.Leases = lease.NewLocal("repo", time.Now)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = defaultLeaseTTL
	}
	return o
}
