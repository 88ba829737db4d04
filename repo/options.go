package repo

import (
	"runtime"
	"time"

	"go.uber.org/zap"
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
	// on by default: AES-256-GCM costs well under 10 % of write throughput
	// (see BenchmarkWrite*).
	DisableEncryption bool
	// KeyFile is where the 32-byte repository key lives (hex, mode 0600).
	// Default: <dir>/key. Keep a copy elsewhere: without it the data is lost.
	KeyFile string
	// PackSize is the size at which a pack file is closed. Default 32 MiB.
	PackSize int64
	// Compression: CompressionFastest (default), CompressionDefault or CompressionOff.
	Compression Compression
	// Workers bounds chunks being hashed, compressed and encrypted at once
	// across all sessions. Writes hold Workers+2 chunk slots of about
	// 16.3 MiB each (8 MiB input + its encoded form), so their memory is
	// bounded whatever the number of sessions and stream sizes (~76 MiB
	// peak heap with 2 workers). Default GOMAXPROCS.
	Workers int
	// FS is the file layer; default OSFS. Tests inject faults here.
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
	// maxChunkSize is the restic chunker's upper bound.
	maxChunkSize = 8 << 20
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
	return o
}
