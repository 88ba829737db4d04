package repo

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

// sealer authenticates and encrypts repository objects with AES-256-GCM and a
// random 96-bit nonce per object, or passes them through when the repository
// is not encrypted (integrity then rests on SHA-256 ids alone).
type sealer struct {
	aead cipher.AEAD // nil: no encryption
}

const nonceSize = 12

func newSealer(key []byte) (*sealer, error) {
	if key == nil {
		return &sealer{}, nil
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("repository key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("repository key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) overhead() int {
	if s.aead == nil {
		return 0
	}
	return nonceSize + s.aead.Overhead()
}

// seal appends nonce‖ciphertext‖tag of plain to dst. plain may be
// dst[len(dst)+nonceSize:] (in-place encryption of data placed after room
// for the nonce).
func (s *sealer) seal(dst, plain, aad []byte) ([]byte, error) {
	if s.aead == nil {
		return append(dst, plain...), nil
	}
	n := len(dst)
	dst = append(dst, make([]byte, nonceSize)...)
	nonce := dst[n : n+nonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return s.aead.Seal(dst, nonce, plain, aad), nil
}

// open authenticates and decrypts stored in place and returns the plaintext.
func (s *sealer) open(stored, aad []byte) ([]byte, error) {
	if s.aead == nil {
		return stored, nil
	}
	if len(stored) < s.overhead() {
		return nil, fmt.Errorf("sealed object of %d bytes: %w", len(stored), ErrCorrupt)
	}
	nonce, ct := stored[:nonceSize], stored[nonceSize:]
	plain, err := s.aead.Open(ct[:0], nonce, ct, aad)
	if err != nil {
		return nil, fmt.Errorf("authentication failed: %w", ErrCorrupt)
	}
	return plain, nil
}

// ---- config and key ----

const (
	// configVersion 2: FastCDC with a keyed Gear table (version 1, never
	// deployed, used restic's Rabin chunker; its chunks would not
	// deduplicate against new ones).
	configVersion  = 2
	encAESGCM      = "aes-256-gcm"
	encNone        = "none"
	configName     = "config"
	defaultKeyName = "key"
)

// config is the repository's config file. With encryption the chunker key
// is sealed (a known key would let an observer fingerprint files by their
// chunk sizes); opening the seal also proves the repository key.
type config struct {
	Version    int           `json:"version"`
	ID         string        `json:"id"`
	Created    time.Time     `json:"created"`
	Encryption string        `json:"encryption"`
	Chunker    chunkerParams `json:"chunker"`
	Sealed     string        `json:"sealed,omitempty"`      // hex of sealed secretParams
	ChunkerKey string        `json:"chunker_key,omitempty"` // hex; unencrypted repositories
}

type secretParams struct {
	ChunkerKey string `json:"chunker_key"` // hex
	ID         string `json:"id"`
}

var aadConfig = []byte("backup-proxy config")

func newRandomID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// loadKey reads and checks the key file.
func loadKey(fsys FS, path string) ([]byte, error) {
	fi, err := fsys.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("key file %s: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %o, want 0600: %w", path, fi.Mode().Perm(), ErrInsecureKey)
	}
	raw, err := readFile(fsys, path)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("key file %s is not 32 hex-encoded bytes: %w", path, ErrWrongKey)
	}
	return key, nil
}

// createKey writes a new random key, 0600, durably.
func createKey(fsys FS, path string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if err := fsys.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("key dir: %w", err)
	}
	// Written as an object of its own directory, its temp file beside it.
	dir := &DirStore{fsys: fsys, root: filepath.Dir(path), tmp: filepath.Dir(path)}
	if err := writeObject(context.Background(), dir, filepath.Base(path), []byte(hex.EncodeToString(key)+"\n")); err != nil {
		return nil, fmt.Errorf("write key file: %w", err)
	}
	return key, nil
}

// open checks the config's chunking and returns the chunker key. (Open has
// checked the version.)
func (c *config) open(s *sealer) ([]byte, error) {
	if c.Chunker != currentChunker {
		return nil, fmt.Errorf("config chunker %+v, this build chunks with %+v: %w", c.Chunker, currentChunker, ErrCorrupt)
	}
	var hexKey string
	switch c.Encryption {
	case encNone:
		hexKey = c.ChunkerKey
	case encAESGCM:
		sealed, err := hex.DecodeString(c.Sealed)
		if err != nil {
			return nil, fmt.Errorf("config seal: %w", ErrCorrupt)
		}
		plain, err := s.open(sealed, aadConfig)
		if err != nil {
			return nil, fmt.Errorf("config does not open with this key: %w", ErrWrongKey)
		}
		var sp secretParams
		if err := json.Unmarshal(plain, &sp); err != nil || sp.ID != c.ID {
			return nil, fmt.Errorf("config secret: %w", ErrCorrupt)
		}
		hexKey = sp.ChunkerKey
	default:
		return nil, fmt.Errorf("config encryption %q: %w", c.Encryption, ErrCorrupt)
	}
	key, err := hex.DecodeString(hexKey)
	if err != nil || len(key) != chunkerKeySize {
		return nil, fmt.Errorf("config chunker key: %w", ErrCorrupt)
	}
	return key, nil
}
