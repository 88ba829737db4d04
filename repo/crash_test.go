package repo_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/repo"
)

const (
	crashEnvDir  = "BACKUP_PROXY_REPO_CRASH_DIR"
	crashSeed    = 77
	crashBaseLen = 3 << 20
	crashJobLen  = 64 << 20
	// crashDurableLen is the part of the job the rerun expects to find
	// durable. The child slows down only once it has read that much plus
	// the chunker's lookahead (its 8 MiB maximum chunk: it cuts a chunk
	// only when it sees that far ahead or the stream's end) plus what the
	// pipeline may still be encoding and fsyncing (a few chunk slots): a
	// kill right as the slow phase begins must find the first part durable.
	crashDurableLen = 12 << 20
	crashLookahead  = 8 << 20
	crashInFlight   = 8 << 20
)

// slowReader paces a stream after `after` bytes so the parent can kill the
// process in the middle of the write, and says on stdout when it got there.
type slowReader struct {
	r       io.Reader
	n       int64
	after   int64
	started bool
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n >= s.after {
		if !s.started {
			s.started = true
			fmt.Println("WRITING")
		}
		time.Sleep(2 * time.Millisecond)
		if len(p) > 64<<10 {
			p = p[:64<<10]
		}
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}

// crashChild is the writer process: it commits a base restore point, then
// stores a long stream in a second session until it is killed.
func crashChild(dir string) {
	ctx := context.Background()
	r, err := repo.Open(dir, repo.Options{Create: true, PackSize: 512 << 10})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if rps, _ := r.ListRestorePoints(ctx, "t1", "onedrive:crash"); len(rps) == 0 {
		s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:crash"})
		base := file{id: "base", path: "/base", data: randomData(crashSeed, crashBaseLen)}
		if _, err := s.StoreItem(ctx, itemMeta(base), bytes.NewReader(base.data)); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		if _, err := s.Commit(ctx); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
	}
	latest, _ := r.LatestRestorePoint(ctx, "t1", "onedrive:crash")
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:crash", Base: latest.ID})
	job := file{id: "job", path: "/job"}
	_, err = s.StoreItem(ctx, itemMeta(job), &slowReader{r: randomReader(crashSeed+1, crashJobLen), after: crashDurableLen + crashLookahead + crashInFlight})
	fmt.Println("FINISHED", err) // not reached when killed in time
	_, _ = s.Commit(ctx)
	os.Exit(0)
}

// TestSIGKILLedWriter kills a real writer process with SIGKILL in the middle
// of a job, several times at different instants, and checks after each kill:
// the repository opens and verifies clean (data included), the committed
// restore point reads back, the killed job left no restore point, and the
// rerun deduplicates what the killed process had made durable.
func TestSIGKILLedWriter(t *testing.T) {
	dirStoreOnly(t, "its child process opens the directory store")
	if dir := os.Getenv(crashEnvDir); dir != "" {
		crashChild(dir)
		return
	}
	ctx := context.Background()
	dir := t.TempDir()
	for round, delay := range []time.Duration{0, 37 * time.Millisecond, 150 * time.Millisecond} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILLedWriter$")
		cmd.Env = append(os.Environ(), crashEnvDir+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(stdout)
		writing := false
		for lines.Scan() {
			line := lines.Text()
			if strings.HasPrefix(line, "ERROR") || strings.HasPrefix(line, "FINISHED") {
				_ = cmd.Process.Kill()
				t.Fatalf("child: %s", line)
			}
			if line == "WRITING" {
				writing = true
				break
			}
		}
		if !writing {
			_ = cmd.Process.Kill()
			t.Fatalf("child ended before writing: %v", lines.Err())
		}
		time.Sleep(delay)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child was not killed by SIGKILL: %v", cmd.ProcessState)
		}

		r, err := repo.Open(dir, repo.Options{PackSize: 512 << 10})
		if err != nil {
			t.Fatalf("round %d: open after SIGKILL: %v", round, err)
		}
		rep := verifyClean(t, r, true)
		rps, _ := r.ListRestorePoints(ctx, "t1", "onedrive:crash")
		if len(rps) != 1 {
			t.Fatalf("round %d: %d restore points, want only the base", round, len(rps))
		}
		if got := readItem(t, r, rps[0].ID, "base"); !bytes.Equal(got, randomData(crashSeed, crashBaseLen)) {
			t.Fatalf("round %d: base restore point damaged", round)
		}
		// Rerun the first part of the job: what the killed process made
		// durable is deduplicated.
		s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:crash", Base: rps[0].ID})
		st, err := s.Store(ctx, randomReader(crashSeed+1, crashDurableLen))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Abort()
		shared := len(st.Chunks) - st.NewChunks
		t.Logf("round %d (kill %v after the slow phase began): %d orphan packs, rerun shares %d of %d chunks",
			round, delay, rep.OrphanPacks, shared, len(st.Chunks))
		if shared < len(st.Chunks)/2 {
			t.Fatalf("round %d: rerun shares only %d of %d chunks", round, shared, len(st.Chunks))
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// The debris of three killed jobs is pruned away.
	r := openRepo(t, dir, repo.Options{})
	if _, err := r.Prune(ctx, repo.PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	rep := verifyClean(t, r, true)
	if st, _ := r.Stats(ctx); rep.OrphanPacks != 0 || st.RawBytes != crashBaseLen {
		t.Fatalf("after prune: %d orphans, %+v", rep.OrphanPacks, st)
	}
}
