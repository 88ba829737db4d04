package repo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.uber.org/zap"
)

// S3Options configures an S3Store.
type S3Options struct {
	// Endpoint is host:port, without scheme.
	Endpoint string
	Bucket   string
	// Prefix is prepended to every key, e.g. "agents/repo1/"; a missing
	// trailing slash is added.
	Prefix               string
	AccessKey, SecretKey string
	// Secure selects https.
	Secure bool
	// CAFile is an optional PEM file of extra CAs trusted for https, on top
	// of the system ones.
	CAFile string
	// Region is the signing region; empty asks the server (one
	// GetBucketLocation, cached).
	Region string
	// TempDir is the local directory of temp files (required; created if
	// missing).
	TempDir string
	// RetryFor is how long network failures and 5xx responses are retried
	// before giving up. Default 2 minutes.
	RetryFor time.Duration
	// CreateBucket creates the bucket when it does not exist (first setup,
	// tests). Without it a missing bucket is an error: a typo must not
	// silently start a new repository.
	CreateBucket bool
	Logger       *zap.Logger
}

const (
	defaultS3RetryFor = 2 * time.Minute
	s3BackoffMin      = 100 * time.Millisecond
	s3BackoffMax      = 5 * time.Second
)

// S3Store is a Store in an S3-compatible bucket.
type S3Store struct {
	c        *minio.Client
	bucket   string
	prefix   string
	endpoint string
	tempDir  string
	retryFor time.Duration
	log      *zap.Logger
}

var _ Store = (*S3Store)(nil)

// NewS3Store connects to the bucket and checks that it exists.
func NewS3Store(ctx context.Context, o S3Options) (*S3Store, error) {
	if o.Endpoint == "" || o.Bucket == "" {
		return nil, errors.New("s3 store: endpoint and bucket are required")
	}
	if o.TempDir == "" {
		return nil, errors.New("s3 store: a local temp dir is required")
	}
	if err := os.MkdirAll(o.TempDir, 0o700); err != nil {
		return nil, fmt.Errorf("s3 store: temp dir: %w", err)
	}
	prefix := strings.TrimPrefix(o.Prefix, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &S3Store{
		bucket:   o.Bucket,
		prefix:   prefix,
		endpoint: o.Endpoint,
		tempDir:  o.TempDir,
		retryFor: o.RetryFor,
		log:      log,
	}
	if s.retryFor <= 0 {
		s.retryFor = defaultS3RetryFor
	}
	s.log = log.With(zap.String("store", s.String()))

	tr, err := minio.DefaultTransport(o.Secure)
	if err != nil {
		return nil, fmt.Errorf("%s: transport: %w", s, err)
	}
	if o.Secure && o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: CA file: %w", s, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: CA file %s: no PEM certificate in it", s, o.CAFile)
		}
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	c, err := minio.New(o.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure:    o.Secure,
		Transport: tr,
		Region:    o.Region,
		// One attempt per call: retries are ours (s3Retry), bounded by
		// RetryFor and logged, rather than minio-go's silent ten.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s, err)
	}
	s.c = c

	var exists bool
	err = s.retry(ctx, "bucket exists", "", func() error {
		var err error
		exists, err = c.BucketExists(ctx, o.Bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: check bucket: %w", s, err)
	}
	if !exists {
		if !o.CreateBucket {
			return nil, fmt.Errorf("%s: bucket %q does not exist (create it, or set CreateBucket for a first setup)", s, o.Bucket)
		}
		err := s.retry(ctx, "make bucket", "", func() error {
			err := c.MakeBucket(ctx, o.Bucket, minio.MakeBucketOptions{Region: o.Region})
			// A retry after a lost response finds it made.
			if s3Code(err) == "BucketAlreadyOwnedByYou" {
				return nil
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%s: create bucket: %w", s, err)
		}
		s.log.Info("created bucket")
	}
	return s, nil
}

// String names the store: s3://bucket/prefix at endpoint.
func (s *S3Store) String() string {
	return fmt.Sprintf("s3://%s/%s at %s", s.bucket, s.prefix, s.endpoint)
}

// TempDir implements Store.
func (s *S3Store) TempDir() string { return s.tempDir }

// CreateTemp implements Store: a local file (os.CreateTemp makes it 0600).
func (s *S3Store) CreateTemp(pattern string) (File, error) {
	f, err := os.CreateTemp(s.tempDir, pattern)
	if err != nil {
		return nil, fmt.Errorf("%s: create temp file: %w", s, err)
	}
	return f, nil
}

// Publish implements Store with one PUT, which S3 makes visible only when
// complete. The temp file needs no fsync: the upload reads it back.
func (s *S3Store) Publish(ctx context.Context, f File, key string) (err error) {
	defer func() {
		cerr := f.Close()
		rerr := os.Remove(f.Name())
		if err == nil && cerr != nil {
			err = fmt.Errorf("%s: publish %s: close temp file: %w", s, key, cerr)
		}
		if err == nil && rerr != nil {
			err = fmt.Errorf("%s: publish %s: remove temp file: %w", s, key, rerr)
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: publish %s: %w", s, key, err)
	}
	size := fi.Size()
	err = s.retry(ctx, "put", key, func() error {
		// A fresh section reader per attempt reads from offset 0 whatever
		// the file's position; it is a Seeker, as minio-go wants.
		_, err := s.c.PutObject(ctx, s.bucket, s.prefix+key, io.NewSectionReader(f, 0, size), size,
			minio.PutObjectOptions{
				ContentType: "application/octet-stream",
				// A single PUT: atomic, and a failed attempt leaves no
				// multipart upload behind (packs are far below 5 GiB).
				DisableMultipart: true,
				// The server checks the bytes it got (over https the
				// payload is not signed).
				SendContentMd5: true,
			})
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: publish %s: %w", s, key, err)
	}
	return nil
}

// Stat implements Store.
func (s *S3Store) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var oi minio.ObjectInfo
	err := s.retry(ctx, "stat", key, func() error {
		var err error
		oi, err = s.c.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return ObjectInfo{}, s.keyErr("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Open implements Store. The object is stat'ed now, so that a missing key
// fails here; reads are ranged GETs. Reads run under ctx (io.ReaderAt has
// none of its own), so ctx must last as long as the Object is read.
func (s *S3Store) Open(ctx context.Context, key string) (Object, error) {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	return &s3Object{s: s, ctx: ctx, key: key, size: oi.Size}, nil
}

// List implements Store. Listing is in key order, so a listing broken by a
// transient failure resumes after the last key delivered.
func (s *S3Store) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	after := ""
	err := s.retry(ctx, "list", prefix, func() error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel() // stops minio-go's listing when fn stops early
		fetchOwner := false
		for oi := range s.c.ListObjectsIter(lctx, s.bucket, minio.ListObjectsOptions{
			Prefix:     s.prefix + prefix,
			Recursive:  true,
			StartAfter: after,
			FetchOwner: &fetchOwner,
		}) {
			if oi.Err != nil {
				return oi.Err
			}
			key, ok := strings.CutPrefix(oi.Key, s.prefix)
			if !ok || strings.HasSuffix(key, "/") {
				continue // not ours, or a directory marker
			}
			after = oi.Key
			if err := fn(ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
				return &s3StopError{err}
			}
		}
		return nil
	})
	var stop *s3StopError
	if errors.As(err, &stop) {
		return stop.err
	}
	if err != nil {
		return fmt.Errorf("%s: list %q: %w", s, prefix, err)
	}
	return nil
}

// s3StopError carries fn's error out of List's retry loop unretried and
// unwrapped.
type s3StopError struct{ err error }

func (e *s3StopError) Error() string { return e.err.Error() }

// Remove implements Store. A DELETE that succeeded is durable.
func (s *S3Store) Remove(ctx context.Context, keys ...string) error {
	for _, key := range keys {
		err := s.retry(ctx, "remove", key, func() error {
			err := s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
			if s3Code(err) == "NoSuchKey" {
				return nil
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: remove %s: %w", s, key, err)
		}
	}
	return nil
}

// keyErr wraps an error about key, as fs.ErrNotExist when S3 says the key
// does not exist.
func (s *S3Store) keyErr(op, key string, err error) error {
	if s3Code(err) == "NoSuchKey" {
		return fmt.Errorf("%s: %s %s: %w", s, op, key, fs.ErrNotExist)
	}
	return fmt.Errorf("%s: %s %s: %w", s, op, key, err)
}

// retry calls fn until it succeeds, fails permanently, ctx is done or
// RetryFor has passed since the first failure, backing off exponentially.
// An error still transient at the end is marked Temporary, so that verify
// does not take an outage for corruption.
func (s *S3Store) retry(ctx context.Context, op, key string, fn func() error) error {
	var deadline time.Time
	wait := s3BackoffMin
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || ctx.Err() != nil || !s3Transient(err) {
			return err
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(s.retryFor)
		}
		left := deadline.Sub(now)
		if left <= 0 {
			return &s3TransientError{fmt.Errorf("%d attempts over %v: %w", attempt, s.retryFor, err)}
		}
		d := min(wait, left)
		s.log.Warn("s3 request failed, retrying", zap.String("op", op), zap.String("key", key),
			zap.Int("attempt", attempt), zap.Duration("backoff", d), zap.Error(err))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return &s3TransientError{fmt.Errorf("%w (retries cut short: %w)", err, ctx.Err())}
		case <-t.C:
		}
		wait = min(2*wait, s3BackoffMax)
	}
}

// s3TransientError is a failure that may go away: the server was down or
// overloaded for longer than RetryFor.
type s3TransientError struct{ err error }

func (e *s3TransientError) Error() string   { return e.err.Error() }
func (e *s3TransientError) Unwrap() error   { return e.err }
func (e *s3TransientError) Temporary() bool { return true }

// s3Code is the S3 error code of err ("NoSuchKey", …), or "".
func s3Code(err error) string {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r.Code
	}
	return ""
}

// s3Transient reports whether an S3 call's error may go away when retried:
// 5xx, throttling and request timeouts, and network failures short of a
// certificate or protocol mismatch. 4xx (access denied, no such bucket or
// key, bad request) are permanent.
//
// The caller's ctx being done is retry's test, so a deadline here is the
// HTTP client's own timeout.
func s3Transient(err error) bool {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		switch r.Code {
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "ServiceUnavailable", "InternalError",
			"RequestTimeout", "Throttling", "ThrottlingException",
			"RequestLimitExceeded", "RequestThrottled":
			return true
		}
		return r.StatusCode >= 500 && r.StatusCode != http.StatusNotImplemented ||
			r.StatusCode == http.StatusRequestTimeout || r.StatusCode == http.StatusTooManyRequests
	}
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidCert x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	if errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) ||
		errors.As(err, &invalidCert) || errors.As(err, &recordErr) {
		return false // configuration, not an outage
	}
	if errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// The HTTP client failed to get a response: minio-go flattens a
	// connection closed mid-request into a plain message inside *url.Error.
	var ue *url.Error
	if errors.As(err, &ue) {
		msg := ue.Err.Error()
		return !strings.Contains(msg, "server gave HTTP response to HTTPS client") &&
			!strings.Contains(msg, "Client sent an HTTP request to an HTTPS server")
	}
	return false
}

// s3Object is an open object: ReadAt issues ranged GETs; Read streams one
// GET from the current offset, resumed there after a failure.
type s3Object struct {
	s    *S3Store
	ctx  context.Context
	key  string
	size int64

	off  int64         // Read's position
	body io.ReadCloser // Read's open GET, from off
}

func (o *s3Object) Size() int64 { return o.size }

// get opens a GET of [off, end) (end ≤ size, off < end).
func (o *s3Object) get(off, end int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, end-1); err != nil {
		return nil, err
	}
	// Core's GetObject makes the request now and returns its body, where
	// Client's defers it to the first read.
	body, oi, _, err := minio.Core{Client: o.s.c}.GetObject(o.ctx, o.s.bucket, o.s.prefix+o.key, opts)
	if err != nil {
		return nil, err
	}
	// A body cut short is an outage, retried; an answer shorter than asked
	// for is an object that changed size, which no retry mends.
	if oi.Size >= 0 && oi.Size != end-off {
		body.Close()
		return nil, fmt.Errorf("bytes %d-%d of %d answered with %d: the object changed", off, end-1, o.size, oi.Size)
	}
	return body, nil
}

// ReadAt implements io.ReaderAt; it is safe for concurrent use. A failure
// part way resumes from the bytes already read.
func (o *s3Object) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read %s: negative offset", o.s, o.key)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	want := p
	if rest := o.size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	if len(want) == 0 {
		return 0, nil
	}
	n := 0
	err := o.s.retry(o.ctx, "get", o.key, func() error {
		body, err := o.get(off+int64(n), off+int64(len(want)))
		if err != nil {
			return err
		}
		defer body.Close()
		m, err := io.ReadFull(body, want[n:])
		n += m
		return err
	})
	if err != nil {
		return n, o.s.keyErr("read", o.key, err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Read implements io.Reader.
func (o *s3Object) Read(p []byte) (int, error) {
	if o.off >= o.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	err := o.s.retry(o.ctx, "get", o.key, func() error {
		if o.body == nil {
			body, err := o.get(o.off, o.size)
			if err != nil {
				return err
			}
			o.body = body
		}
		m, err := o.body.Read(p)
		o.off += int64(m)
		n = m
		if err == io.EOF && o.off < o.size {
			err = io.ErrUnexpectedEOF // cut short: resume
		}
		if err != nil && err != io.EOF {
			o.body.Close()
			o.body = nil
			if m > 0 {
				return nil // deliver what came; the next Read resumes
			}
			return err
		}
		return nil
	})
	if err != nil {
		return n, o.s.keyErr("read", o.key, err)
	}
	if o.off >= o.size {
		return n, io.EOF
	}
	return n, nil
}

// Close implements io.Closer.
func (o *s3Object) Close() error {
	if o.body != nil {
		err := o.body.Close()
		o.body = nil
		return err
	}
	return nil
}
