package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// agentProcess is an agent running as a child process (benchmarks measure
// its memory apart from graphsim's; tests SIGKILL it).
type agentProcess struct {
	cmd  *exec.Cmd
	addr string // its gRPC address
	// how it was started, for restart
	exe  string
	env  []string
	args []string
}

var servingAt = regexp.MustCompile(`"msg":"serving","address":"([^"]+)"`)

// startAgentProcess runs exe with args (a `serve` command line listening on
// 127.0.0.1:0 with JSON logs) and waits until it serves.
func startAgentProcess(exe string, env []string, args ...string) (*agentProcess, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		sent := false
		for sc.Scan() { // keep draining: a full pipe would block the agent
			if m := servingAt.FindStringSubmatch(sc.Text()); m != nil && !sent {
				addr <- m[1]
				sent = true
			}
		}
	}()
	select {
	case a := <-addr:
		return &agentProcess{cmd: cmd, addr: a, exe: exe, env: env, args: args}, nil
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("the agent did not start serving within 30s")
	}
}

// memory returns the process's peak resident set size (VmHWM) and the
// current anonymous and file-backed parts of it (RssAnon, RssFile: mapped
// files such as the bbolt catalogue count in RSS but are reclaimable), in bytes.
func (p *agentProcess) memory() (peak, anon, file int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, 0, err
	}
	fields := map[string]*int64{"VmHWM:": &peak, "RssAnon:": &anon, "RssFile:": &file}
	for _, line := range strings.Split(string(data), "\n") {
		for name, dst := range fields {
			if v, ok := strings.CutPrefix(line, name); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					return 0, 0, 0, err
				}
				*dst = kb << 10
			}
		}
	}
	if peak == 0 {
		return 0, 0, 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
	}
	return peak, anon, file, nil
}

// exeMemory returns the resident part of the process's mappings of its
// executable: code and read-only data, page cache shared with every other
// process of the same binary (this benchmark's included), and more or less
// of it resident depending on how that page cache was filled. Part of RSS,
// but not memory the agent's work uses.
func (p *agentProcess) exeMemory() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	var total int64
	inExe := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			inExe = len(f) >= 6 && f[5] == p.exe // a mapping's header line
		case inExe && len(f) == 3 && f[0] == "Rss:":
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, err
			}
			total += kb << 10
		}
	}
	return total, nil
}

// restart stops the process as SIGTERM does and starts it again with the
// same command line (its address changes).
func (p *agentProcess) restart() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("agent stopped with %w", err)
	}
	q, err := startAgentProcess(p.exe, p.env, p.args...)
	if err != nil {
		return err
	}
	*p = *q
	return nil
}

// stop ends the process (SIGKILL: callers that want a graceful stop signal first).
func (p *agentProcess) stop() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// startSimAgent runs this executable's agent as a child process with a
// fresh data directory, serving on a free loopback port and reading sim's
// Graph and Entra; extra are more `serve` flags. done stops the agent and
// removes its directory.
func startSimAgent(sim *graphsim.Server, extra ...string) (p *agentProcess, done func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "backup-proxy-agent-")
	if err != nil {
		return nil, nil, err
	}
	ca := filepath.Join(dir, "graphsim-ca.pem")
	if err := os.WriteFile(ca, sim.CACertPEM(), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	args := append([]string{"serve", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
		"--graph-url", sim.GraphURL(), "--login-url", sim.LoginURL(), "--ca-file", ca}, extra...)
	if p, err = startAgentProcess(exe, nil, args...); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return p, func() { p.stop(); os.RemoveAll(dir) }, nil
}

// dialSimAgent connects to a plaintext agent process and adds sim's apps
// to its pool.
func dialSimAgent(ctx context.Context, p *agentProcess, sim *graphsim.Server) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	if err := addSimApps(ctx, pb.NewPoolServiceClient(conn), sim); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// listenLoopback listens on a free loopback port.
func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
