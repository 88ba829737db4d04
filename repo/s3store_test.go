package repo

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/backup-proxy/backup-proxy/internal/s3server"
)

// s3TestBytes is n deterministic incompressible bytes.
func s3TestBytes(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// newS3TestStore opens a store on srv's bucket with a logger into t.
func newS3TestStore(t *testing.T, srv *s3server.Server, bucket, prefix string, log *zap.Logger) *S3Store {
	t.Helper()
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	st, err := NewS3Store(context.Background(), S3Options{
		Endpoint:  srv.Endpoint(),
		Bucket:    bucket,
		Prefix:    prefix,
		AccessKey: srv.AccessKey(),
		SecretKey: srv.SecretKey(),
		TempDir:   t.TempDir(),
		RetryFor:  time.Minute,
		Logger:    log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// s3Publish writes data to a temp file of st and publishes it as key.
func s3Publish(t *testing.T, st Store, key string, data []byte) {
	t.Helper()
	if err := s3TryPublish(st, key, data); err != nil {
		t.Fatal(err)
	}
}

func s3TryPublish(st Store, key string, data []byte) error {
	f, err := st.CreateTemp("obj-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return st.Publish(context.Background(), f, key)
}

// s3ReadAll reads key through Read.
func s3ReadAll(t *testing.T, st Store, key string) []byte {
	t.Helper()
	o, err := st.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

// s3Keys lists the keys under prefix, sorted.
func s3Keys(t *testing.T, st Store, prefix string) []string {
	t.Helper()
	var keys []string
	err := st.List(context.Background(), prefix, func(oi ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// s3RetrySignal is a logger into t and a channel closed at the store's
// first retry warning: the moment a test knows the store is retrying.
func s3RetrySignal(t *testing.T) (*zap.Logger, <-chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	log := zaptest.NewLogger(t, zaptest.WrapOptions(zap.Hooks(func(e zapcore.Entry) error {
		if e.Level == zapcore.WarnLevel {
			once.Do(func() { close(ch) })
		}
		return nil
	})))
	return log, ch
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func TestS3StoreNew(t *testing.T) {
	srv := s3server.ForTest(t)
	srv.NewBucket(t, "exists")
	tests := []struct {
		name    string
		edit    func(*S3Options)
		wantErr string // "" for success
	}{
		{"existing bucket", func(*S3Options) {}, ""},
		{"missing bucket", func(o *S3Options) { o.Bucket = "missing" }, `bucket "missing" does not exist`},
		{"missing bucket created", func(o *S3Options) { o.Bucket = "created"; o.CreateBucket = true }, ""},
		{"wrong secret", func(o *S3Options) { o.SecretKey = "wrong" }, "check bucket"},
		{"no temp dir", func(o *S3Options) { o.TempDir = "" }, "temp dir is required"},
		{"no bucket", func(o *S3Options) { o.Bucket = "" }, "bucket are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := S3Options{
				Endpoint:  srv.Endpoint(),
				Bucket:    "exists",
				AccessKey: srv.AccessKey(),
				SecretKey: srv.SecretKey(),
				TempDir:   t.TempDir(),
				RetryFor:  time.Minute, // a retried permanent error would time the test out
				Logger:    zaptest.NewLogger(t),
			}
			tt.edit(&o)
			start := time.Now()
			st, err := NewS3Store(context.Background(), o)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				s3Publish(t, st, "config", []byte("x"))
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("failed after %v: a permanent error was retried", d)
			}
			if strings.Contains(err.Error(), srv.SecretKey()) || strings.Contains(err.Error(), "wrong") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

func TestS3StoreRoundTrip(t *testing.T) {
	srv := s3server.ForTest(t)
	bucket := srv.NewBucket(t, "repo")
	objects := map[string][]byte{
		"config":                   []byte(`{"version":1}`),
		"empty":                    {},
		"packs/ab/ab01":            s3TestBytes(1, 3<<20+17),
		"packs/ab/ab02":            s3TestBytes(2, 1000),
		"packs/cd/cd01":            s3TestBytes(3, 64<<10),
		"index/0001":               s3TestBytes(4, 5000),
		"restorepoints/2026-11-26": []byte("manifest"),
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range objects {
			if !yield(k) {
				return
			}
		}
	})
	tests := []struct {
		prefix string // as configured
		dir    string // where the objects land in the bucket
	}{
		{"", ""},
		{"agents/repo1/", "agents/repo1/"},
		{"agents/repo2", "agents/repo2/"}, // the slash is added
	}
	for _, tt := range tests {
		t.Run("prefix="+tt.prefix, func(t *testing.T) {
			st := newS3TestStore(t, srv, bucket, tt.prefix, nil)
			ctx := context.Background()
			if want := "s3://repo/" + tt.dir + " at " + srv.Endpoint(); st.String() != want {
				t.Errorf("String() = %q, want %q", st.String(), want)
			}

			for _, k := range keys {
				f, err := st.CreateTemp("obj-*")
				if err != nil {
					t.Fatal(err)
				}
				if fi, err := f.Stat(); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("temp file mode %v, %v; want 0600", fi.Mode(), err)
				}
				if _, err := f.Write(objects[k]); err != nil {
					t.Fatal(err)
				}
				if err := st.Publish(ctx, f, k); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(f.Name()); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("temp file %s left after Publish: %v", f.Name(), err)
				}
				// The POSIX backend keeps object k of the bucket as a file.
				if _, err := os.Stat(filepath.Join(srv.DataDir(), bucket, tt.dir+k)); err != nil {
					t.Errorf("object %s is not under the prefix: %v", k, err)
				}
			}
			if ents, _ := os.ReadDir(st.TempDir()); len(ents) != 0 {
				t.Errorf("temp dir holds %d files after publishing", len(ents))
			}

			for _, k := range keys {
				want := objects[k]
				oi, err := st.Stat(ctx, k)
				if err != nil || oi.Key != k || oi.Size != int64(len(want)) || oi.ModTime.IsZero() {
					t.Errorf("Stat(%s) = %+v, %v; want size %d", k, oi, err, len(want))
				}
				if got := s3ReadAll(t, st, k); !bytes.Equal(got, want) {
					t.Errorf("Read(%s): %d bytes differ from the %d published", k, len(got), len(want))
				}
			}

			// ReadAt at the edges of the 3 MiB pack.
			o, err := st.Open(ctx, "packs/ab/ab01")
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			data := objects["packs/ab/ab01"]
			size := int64(len(data))
			if o.Size() != size {
				t.Errorf("Size() = %d, want %d", o.Size(), size)
			}
			for _, r := range []struct {
				off     int64
				n       int
				wantN   int
				wantEOF bool
			}{
				{0, 100, 100, false},
				{1 << 20, 1 << 20, 1 << 20, false},
				{size - 10, 10, 10, false},
				{size - 10, 20, 10, true},
				{size, 1, 0, true},
				{size + 5, 1, 0, true},
				{0, int(size), int(size), false},
				{7, 0, 0, false},
			} {
				p := make([]byte, r.n)
				n, err := o.ReadAt(p, r.off)
				if n != r.wantN || (err == io.EOF) != r.wantEOF || (err != nil && err != io.EOF) {
					t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, EOF %v", r.n, r.off, n, err, r.wantN, r.wantEOF)
					continue
				}
				if n > 0 && !bytes.Equal(p[:n], data[r.off:r.off+int64(n)]) {
					t.Errorf("ReadAt(%d bytes at %d): wrong bytes", r.n, r.off)
				}
			}
			// ReadAt is for concurrent use (verify reads packs in parallel).
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					off := int64(i) * (size / 8)
					p := make([]byte, size/8)
					if n, err := o.ReadAt(p, off); err != nil || !bytes.Equal(p[:n], data[off:off+int64(n)]) {
						t.Errorf("parallel ReadAt at %d: %d, %v", off, n, err)
					}
				})
			}
			wg.Wait()

			if got := s3Keys(t, st, ""); !slices.Equal(got, keys) {
				t.Errorf("List(\"\") = %q, want %q", got, keys)
			}
			if got, want := s3Keys(t, st, "packs/ab/"), []string{"packs/ab/ab01", "packs/ab/ab02"}; !slices.Equal(got, want) {
				t.Errorf("List(packs/ab/) = %q, want %q", got, want)
			}
			if got := s3Keys(t, st, "nothing/"); len(got) != 0 {
				t.Errorf("List(nothing/) = %q", got)
			}
			stop := errors.New("stop")
			calls := 0
			err = st.List(ctx, "", func(ObjectInfo) error { calls++; return stop })
			if err != stop || calls != 1 {
				t.Errorf("List with fn failing: %v after %d calls; want fn's error after 1", err, calls)
			}
			var sizes int64
			_ = st.List(ctx, "packs/", func(oi ObjectInfo) error { sizes += oi.Size; return nil })
			if want := int64(3<<20 + 17 + 1000 + 64<<10); sizes != want {
				t.Errorf("List sizes sum to %d, want %d", sizes, want)
			}

			// Replacing a key (a retried Publish does) keeps one object.
			s3Publish(t, st, "config", []byte(`{"version":2}`))
			if got := s3ReadAll(t, st, "config"); string(got) != `{"version":2}` {
				t.Errorf("replaced config reads %q", got)
			}

			if err := st.Remove(ctx, "packs/ab/ab02", "index/0001", "never/was"); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"packs/ab/ab02", "index/0001", "never/was"} {
				if _, err := st.Stat(ctx, k); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Stat(%s) after Remove: %v, want ErrNotExist", k, err)
				}
				if _, err := st.Open(ctx, k); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), k) {
					t.Errorf("Open(%s) after Remove: %v, want ErrNotExist naming it", k, err)
				}
			}
			if got, want := s3Keys(t, st, "packs/"), []string{"packs/ab/ab01", "packs/cd/cd01"}; !slices.Equal(got, want) {
				t.Errorf("List(packs/) after Remove = %q, want %q", got, want)
			}
			// An object removed under an open Object reads as missing.
			if err := st.Remove(ctx, "packs/ab/ab01"); err != nil {
				t.Fatal(err)
			}
			if _, err := o.ReadAt(make([]byte, 10), 0); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ReadAt of a removed object: %v, want ErrNotExist", err)
			}
		})
	}

	// Each prefix saw only its own objects; the bucket holds all three sets.
	all := newS3TestStore(t, srv, bucket, "", nil)
	if n := len(s3Keys(t, all, "agents/repo1/")); n != 4 {
		t.Errorf("agents/repo1/ holds %d objects, want 4", n)
	}
}

// TestS3StoreSurvivesServerRestart: a Publish or a read that starts while
// the server is down completes once it is back, byte for byte.
func TestS3StoreSurvivesServerRestart(t *testing.T) {
	data := s3TestBytes(7, 24<<20+3)
	ctx := context.Background()

	t.Run("publish", func(t *testing.T) {
		srv := s3server.ForTest(t)
		log, retrying := s3RetrySignal(t)
		st := newS3TestStore(t, srv, srv.NewBucket(t, "repo"), "p/", log)
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- s3TryPublish(st, "packs/aa/big", data) }()
		s3AwaitRetry(t, retrying, errc)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("Publish across a restart: %v", err)
		}
		if got := s3ReadAll(t, st, "packs/aa/big"); !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes, differing from the %d published", len(got), len(data))
		}
	})

	t.Run("readat", func(t *testing.T) {
		srv := s3server.ForTest(t)
		log, retrying := s3RetrySignal(t)
		st := newS3TestStore(t, srv, srv.NewBucket(t, "repo"), "", log)
		s3Publish(t, st, "packs/aa/big", data)
		o, err := st.Open(ctx, "packs/aa/big")
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 8<<20)
		const off = 1 << 20
		errc := make(chan error, 1)
		go func() { _, err := o.ReadAt(p, off); errc <- err }()
		s3AwaitRetry(t, retrying, errc)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("ReadAt across a restart: %v", err)
		}
		if !bytes.Equal(p, data[off:off+len(p)]) {
			t.Fatal("ReadAt across a restart returned wrong bytes")
		}
	})

	// The server dies in the middle of a streamed GET: Read resumes from
	// where the stream broke.
	t.Run("read", func(t *testing.T) {
		srv := s3server.ForTest(t)
		log, retrying := s3RetrySignal(t)
		st := newS3TestStore(t, srv, srv.NewBucket(t, "repo"), "", log)
		s3Publish(t, st, "packs/aa/big", data)
		o, err := st.Open(ctx, "packs/aa/big")
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		got := make([]byte, 1<<20)
		if _, err := io.ReadFull(o, got); err != nil {
			t.Fatal(err)
		}
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		var rest []byte
		errc := make(chan error, 1)
		go func() { var err error; rest, err = io.ReadAll(o); errc <- err }()
		// More than the socket buffers can hold is still to come, so
		// the stream breaks and the store retries.
		s3AwaitRetry(t, retrying, errc)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("Read across a restart: %v", err)
		}
		if got = append(got, rest...); !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes across a restart, differing from the %d published", len(got), len(data))
		}
	})
}

// s3AwaitRetry waits until the store retries, failing t if the operation
// ends first or nothing happens for a minute.
func s3AwaitRetry(t *testing.T, retrying <-chan struct{}, errc <-chan error) {
	t.Helper()
	select {
	case <-retrying:
	case err := <-errc:
		t.Fatalf("the operation ended without a retry while the server was down: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("no retry within a minute")
	}
}

// TestS3StoreOutageIsTemporary: failures that outlast RetryFor say so, so
// that verify does not report corruption, and are not ErrNotExist.
func TestS3StoreOutageIsTemporary(t *testing.T) {
	srv := s3server.ForTest(t)
	bucket := srv.NewBucket(t, "repo")
	st, err := NewS3Store(context.Background(), S3Options{
		Endpoint: srv.Endpoint(), Bucket: bucket,
		AccessKey: srv.AccessKey(), SecretKey: srv.SecretKey(),
		TempDir: t.TempDir(), RetryFor: 300 * time.Millisecond, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s3Publish(t, st, "packs/aa/x", s3TestBytes(1, 1000))
	o, err := st.Open(ctx, "packs/aa/x")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		run  func() error
	}{
		{"ReadAt", func() error { _, err := o.ReadAt(make([]byte, 10), 0); return err }},
		{"Read", func() error { _, err := o.Read(make([]byte, 10)); return err }},
		{"Stat", func() error { _, err := st.Stat(ctx, "packs/aa/x"); return err }},
		{"Open", func() error { _, err := st.Open(ctx, "packs/aa/x"); return err }},
		{"Publish", func() error { return s3TryPublish(st, "packs/aa/y", []byte("y")) }},
		{"List", func() error { return st.List(ctx, "", func(ObjectInfo) error { return nil }) }},
		{"Remove", func() error { return st.Remove(ctx, "packs/aa/x") }},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			err := op.run()
			if err == nil || !isTemporary(err) || errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s with the server down: %v (temporary %v); want a temporary error", op.name, err, isTemporary(err))
			}
		})
	}
	if ents, _ := os.ReadDir(st.TempDir()); len(ents) != 0 {
		t.Errorf("temp dir holds %d files after a failed Publish", len(ents))
	}

	// A cancelled context ends the retries at once.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.Stat(cctx, "packs/aa/x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with a cancelled context: %v", err)
	}
}

// TestS3StorePublishToMissingBucket: a bucket removed under the store is a
// permanent error, reported at once and not retried.
func TestS3StorePublishToMissingBucket(t *testing.T) {
	srv := s3server.ForTest(t)
	log, retrying := s3RetrySignal(t)
	st := newS3TestStore(t, srv, srv.NewBucket(t, "gone"), "", log)
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveBucket(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s3TryPublish(st, "packs/aa/x", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "bucket does not exist") || isTemporary(err) {
		t.Fatalf("Publish to a removed bucket: %v; want a permanent no-such-bucket error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Publish failed after %v", d)
	}
	select {
	case <-retrying:
		t.Error("Publish to a removed bucket was retried")
	default:
	}
	if ents, _ := os.ReadDir(st.TempDir()); len(ents) != 0 {
		t.Errorf("temp dir holds %d files after a failed Publish", len(ents))
	}
}

// TestS3StoreObjectChangedUnderReader: an object that shrank after Open
// (which a repository never does) fails reads at once, as a permanent
// error rather than an outage retried for RetryFor.
func TestS3StoreObjectChangedUnderReader(t *testing.T) {
	srv := s3server.ForTest(t)
	st := newS3TestStore(t, srv, srv.NewBucket(t, "repo"), "", nil)
	s3Publish(t, st, "packs/aa/x", s3TestBytes(1, 1000))
	o, err := st.Open(context.Background(), "packs/aa/x")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	s3Publish(t, st, "packs/aa/x", s3TestBytes(1, 500))
	for _, off := range []int64{450, 600} { // across the new end, beyond it
		start := time.Now()
		_, err := o.ReadAt(make([]byte, 100), off)
		if err == nil || isTemporary(err) || time.Since(start) > 5*time.Second {
			t.Errorf("ReadAt(100 bytes at %d) of a shrunk object: %v after %v; want a prompt permanent error", off, err, time.Since(start))
		}
	}
}

func TestS3TransientClassification(t *testing.T) {
	urlErr := func(err error) error { return &url.Error{Op: "Put", URL: "http://127.0.0.1:1/b/k", Err: err} }
	s3Err := func(status int, code string) error { return minio.ErrorResponse{StatusCode: status, Code: code} }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"503 SlowDown", s3Err(503, "SlowDown"), true},
		{"500 InternalError", s3Err(500, "InternalError"), true},
		{"502 from a proxy", s3Err(502, "502 Bad Gateway"), true},
		{"429", s3Err(429, "TooManyRequests"), true},
		{"wrapped 503", fmt.Errorf("put: %w", s3Err(503, "ServiceUnavailable")), true},
		{"501 NotImplemented", s3Err(501, "NotImplemented"), false},
		{"403 AccessDenied", s3Err(403, "AccessDenied"), false},
		{"404 NoSuchBucket", s3Err(404, "NoSuchBucket"), false},
		{"404 NoSuchKey", s3Err(404, "NoSuchKey"), false},
		{"400 BadDigest", s3Err(400, "BadDigest"), false},
		{"connection refused", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), true},
		{"connection reset", urlErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), true},
		{"closed by foreign host", urlErr(errors.New("Connection closed by foreign host http://127.0.0.1:1/b/k. Retry again.")), true},
		{"body cut short", io.ErrUnexpectedEOF, true},
		{"unknown CA", urlErr(x509.UnknownAuthorityError{}), false},
		{"http to https", urlErr(errors.New("http: server gave HTTP response to HTTPS client")), false},
		{"other", errors.New("object changed"), false},
	}
	for _, tt := range tests {
		if got := s3Transient(tt.err); got != tt.want {
			t.Errorf("s3Transient(%s: %v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
