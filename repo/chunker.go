package repo

import (
	"crypto/rand"
	"fmt"
	"io"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	// Registers the FastCDC algorithms with the chunkers package.
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc"
)

// Content-defined chunking. The parameters are part of the repository format
// (recorded in the config): chunks cut differently never deduplicate against
// each other.
//
// FastCDC (Xia et al., USENIX ATC 2016) with normalised chunking, as
// implemented by the Plakar backup project: a Gear rolling hash over a
// 256-entry table that is derived from a per-repository random key, so chunk
// sizes do not let an observer of an encrypted repository recognise known
// files (the role restic's random Rabin polynomial played). It is about three
// times as fast as restic's Rabin chunker (~1.6 GB/s against ~0.55 GB/s on
// one core here), which was the bottleneck of writes.
const (
	chunkerAlgorithm = "fastcdc-v1.0.0"
	// minChunkSize: no cut before it, so a stream up to this size is one
	// chunk (the chunker returns such a stream whole; Store relies on it).
	minChunkSize = 512 << 10
	// normalChunkSize: the cut probability rises past it (FastCDC's
	// normalisation); chunks of random data average ~1.2 MiB.
	normalChunkSize = 1 << 20
	// maxChunkSize bounds every chunk and so every buffer of a write.
	maxChunkSize = 8 << 20
	// scanBufferSize: the chunker needs maxChunkSize bytes of lookahead; a
	// buffer twice that size lets it refill in long strides instead of
	// sliding its window down after nearly every chunk (measured ~25 %
	// faster than a buffer of exactly maxChunkSize).
	scanBufferSize = 2 * maxChunkSize
	chunkerKeySize = 32
)

// chunkerParams is the chunking recorded in the config.
type chunkerParams struct {
	Algorithm string `json:"algorithm"`
	MinSize   int    `json:"min_size"`
	Normal    int    `json:"normal_size"`
	MaxSize   int    `json:"max_size"`
}

// currentChunker is the only chunking this build writes and accepts.
var currentChunker = chunkerParams{Algorithm: chunkerAlgorithm, MinSize: minChunkSize, Normal: normalChunkSize, MaxSize: maxChunkSize}

func newChunkerKey() ([]byte, error) {
	key := make([]byte, chunkerKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("chunker key: %w", err)
	}
	return key, nil
}

// scanner is a chunker with its 16 MiB scan buffer. The repository keeps a
// bounded set of them (Repository.scanners) so that the memory of writes
// stays bounded whatever the number of concurrent streams; ch is created on
// first use.
type scanner struct {
	ch *chunkers.Chunker
}

// reset points the scanner at a new stream (nil: let go of the last one).
func (sc *scanner) reset(key []byte, rd io.Reader) error {
	if sc.ch != nil {
		sc.ch.Reset(rd)
		return nil
	}
	ch, err := chunkers.NewChunkerBuffer(chunkerAlgorithm, rd, &chunkers.ChunkerOpts{
		MinSize: minChunkSize, NormalSize: normalChunkSize, MaxSize: maxChunkSize, Key: key,
	}, make([]byte, scanBufferSize))
	if err != nil {
		return fmt.Errorf("chunker: %w", err)
	}
	sc.ch = ch
	return nil
}

// next returns the next chunk, which stays valid until the following call,
// and io.EOF after the last one. Unlike the chunkers package it never returns
// a chunk together with an error.
func (sc *scanner) next() ([]byte, error) {
	c, err := sc.ch.Next()
	if len(c) > 0 {
		// The package returns the last chunk with io.EOF when it is shorter
		// than the minimum; the following call returns io.EOF alone.
		return c, nil
	}
	if err == nil {
		err = io.ErrNoProgress // an empty chunk mid-stream would loop forever
	}
	return nil, err
}
