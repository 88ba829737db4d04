// Package serverproc runs a test server (redis-server, versitygw) as a
// child process: started with its output in a log file, ready once its
// port accepts connections, stopped with SIGKILL as a crash would.
package serverproc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Proc is a running server.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs cmd with its output appended to logPath and waits up to 10 s
// until addr accepts connections.
func Start(cmd *exec.Cmd, logPath, addr string) (*Proc, error) {
	name := cmd.Args[0]
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); log.Close(); close(p.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start; see %s", name, logPath)
		default:
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s did not listen on %s within 10 s; see %s", name, addr, logPath)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server and waits for it to exit.
func (p *Proc) Stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Check fails or skips t when a server did not start: err wrapping
// notInstalled (the program is not on PATH) skips the test, except under CI
// (CI set), where a missing server is a broken environment and fails it.
func Check(t testing.TB, err, notInstalled error) {
	t.Helper()
	if errors.Is(err, notInstalled) {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %v", err)
		}
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}
