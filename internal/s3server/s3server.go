// Package s3server runs a throwaway S3 server for tests and benchmarks:
// versitygw with its POSIX backend, on a loopback port, its objects and log
// in a given directory, root keys generated per server, and a Stop/Start
// pair that keeps the port and the objects so that clients reconnect.
package s3server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/backup-proxy/backup-proxy/internal/serverproc"
)

// ErrNotInstalled: versitygw is not on PATH.
var ErrNotInstalled = errors.New("versitygw is not installed (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0, and put $(go env GOPATH)/bin on PATH)")

// Server is a versitygw child process.
type Server struct {
	dir            string // the log
	data           string // the POSIX backend's root: a directory per bucket
	port           int
	access, secret string
	proc           *serverproc.Proc // nil while stopped
}

// Start starts versitygw on a free loopback port, its files in dir.
func Start(dir string) (*Server, error) {
	if _, err := exec.LookPath("versitygw"); err != nil {
		return nil, ErrNotInstalled
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{dir: dir, data: data, port: port, access: randomKey(10), secret: randomKey(20)}
	return s, s.Start()
}

func randomKey(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// Endpoint is host:port, for http.
func (s *Server) Endpoint() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// AccessKey is the root access key.
func (s *Server) AccessKey() string { return s.access }

// SecretKey is the root secret key.
func (s *Server) SecretKey() string { return s.secret }

// DataDir is the POSIX backend's root: bucket b's object k is DataDir/b/k.
func (s *Server) DataDir() string { return s.data }

// Start (re)starts the server on its port and data and waits until it
// accepts connections. The log (request lines, errors) is appended to
// versitygw-<port>.log in the directory.
func (s *Server) Start() error {
	if s.proc != nil {
		return errors.New("s3server: already running")
	}
	cmd := exec.Command("versitygw", "--port", s.Endpoint(), "posix", s.data)
	// The keys go in the environment, not on the command line (ps shows
	// that); inherited settings of versitygw's are dropped so that the
	// server is the same everywhere (ROOT_ACCESS_KEY_ID would win over
	// ROOT_ACCESS_KEY).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ROOT_") && !strings.HasPrefix(kv, "VGW_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "ROOT_ACCESS_KEY="+s.access, "ROOT_SECRET_KEY="+s.secret)
	p, err := serverproc.Start(cmd, filepath.Join(s.dir, fmt.Sprintf("versitygw-%d.log", s.port)), s.Endpoint())
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}

// Stop kills the server (as a crash would) and waits for it to exit.
func (s *Server) Stop() error {
	if s.proc != nil {
		s.proc.Stop()
		s.proc = nil
	}
	return nil
}

// Client is a minio-go client of the server as root, for test setup.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint(), &minio.Options{
		Creds:  credentials.NewStaticV4(s.access, s.secret, ""),
		Region: "us-east-1", // versitygw's default
	})
}

// NewBucket creates the bucket name, failing t if it cannot.
func (s *Server) NewBucket(t testing.TB, name string) string {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// ForTest starts a server for t and stops it at the end. Without versitygw
// it skips the test, except under CI (CI set), where a missing server is a
// broken environment and fails it.
func ForTest(t testing.TB) *Server {
	t.Helper()
	s, err := Start(t.TempDir())
	serverproc.Check(t, err, ErrNotInstalled)
	t.Cleanup(func() { _ = s.Stop() })
	return s
}
