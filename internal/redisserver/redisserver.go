// Package redisserver runs a throwaway redis-server on a loopback port for
// tests and benchmarks: no persistence, its files in a given directory, and
// a Stop/Start pair that keeps the port so that clients reconnect.
package redisserver

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/backup-proxy/backup-proxy/internal/serverproc"
)

// ErrNotInstalled: redis-server is not on PATH.
var ErrNotInstalled = errors.New("redis-server is not installed (Debian: apt-get install redis-server)")

// Server is a redis-server child process.
type Server struct {
	dir  string
	port int
	proc *serverproc.Proc // nil while stopped
}

// Start starts redis-server on a free loopback port, its files in dir.
func Start(dir string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNotInstalled
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{dir: dir, port: port}
	return s, s.Start()
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Start (re)starts the server on its port and waits until it accepts
// connections.
func (s *Server) Start() error {
	if s.proc != nil {
		return errors.New("redisserver: already running")
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--daemonize", "no")
	p, err := serverproc.Start(cmd, filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", s.port)), s.Addr())
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

// ForTest starts a server for t and stops it at the end. Without
// redis-server it skips the test, except under CI (CI set), where a missing
// server is a broken environment and fails it.
func ForTest(t testing.TB) *Server {
	t.Helper()
	s, err := Start(t.TempDir())
	serverproc.Check(t, err, ErrNotInstalled)
	t.Cleanup(func() { _ = s.Stop() })
	return s
}
