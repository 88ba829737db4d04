package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// childArgs, when set, makes the test binary run backup-proxy with these
// (JSON-encoded) arguments instead of the tests: the crash test's agent is a
// real process that can be SIGKILLed.
const childArgs = "BACKUP_PROXY_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if raw := os.Getenv(childArgs); raw != "" {
		var args []string
		if err := json.Unmarshal([]byte(raw), &args); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(exitUsage)
		}
		main2(args)
	}
	os.Exit(m.Run())
}

// main2 is main with given arguments.
func main2(args []string) {
	os.Args = append([]string{"backup-proxy"}, args...)
	main()
}

// startChild starts an agent process (this test binary running main) and
// returns it with its gRPC address.
func startChild(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	raw, _ := json.Marshal(args)
	p, err := startAgentProcess(os.Args[0], []string{childArgs + "=" + string(raw)}, "-test.run=^$")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p.cmd, p.addr
}

// killableSim starts a one-OneDrive tenant whose backup lasts long enough
// to kill its agent in the middle, and writes its CA to dir/ca.pem.
func killableSim(t *testing.T, seed uint64) (sim *graphsim.Server, dir, caFile string) {
	t.Helper()
	sim, err := graphsim.New(graphsim.Options{
		Seed: seed, Users: 1, Sites: -1, FilesPerDrive: 400, Apps: 1, MaxFileSize: 256 << 10,
		Limits: &generous, Faults: graphsim.Faults{UnprovisionedOneDrives: -1},
		Latency: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	dir = t.TempDir()
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, sim.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return sim, dir, caFile
}

// dialChild connects to an agent process serving sim's tenant.
func dialChild(t *testing.T, sim *graphsim.Server, addr string) *e2e {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &e2e{t: t, sim: sim, conn: conn, pool: pb.NewPoolServiceClient(conn), jobs: pb.NewJobServiceClient(conn), catalog: pb.NewCatalogServiceClient(conn)}
}

// TestAgentKilledMidJobResumes SIGKILLs a real agent process in the middle
// of a backup, starts it again on the same data directory and expects the
// job to finish with exactly the tenant's content, once, and a clean verify.
func TestAgentKilledMidJobResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts agent processes")
	}
	sim, dir, caFile := killableSim(t, 21)
	// No per-client rate limit: the test reads every item back at once.
	args := []string{"serve", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
		"--graph-url", sim.GraphURL(), "--login-url", sim.LoginURL(), "--ca-file", caFile,
		"--licenses", "100000", "--downloads-per-job", "2", "--rpc-rate", "0"}

	child, addr := startChild(t, args...)
	e := dialChild(t, sim, addr)
	e.addApps()
	src := e.sources()[0]
	req := &pb.SubmitJobRequest{JobId: "crash-1", TenantId: sim.Tenant().ID}
	src.submit(req)
	if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	// Kill it once a good part, but not all, of the files are stored.
	if err := waitForItems(t.Context(), e.jobs, "crash-1", 120); err != nil {
		t.Fatal(err)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()

	_, addr = startChild(t, args...)
	e = dialChild(t, sim, addr)
	final := e.wait("crash-1")
	if final.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("after restart: %v", final)
	}
	rps, err := e.catalog.ListRestorePoints(t.Context(), &pb.ListRestorePointsRequest{TenantId: sim.Tenant().ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(rps.RestorePoints) != 1 || rps.RestorePoints[0].RestorePointId != final.RestorePointId || rps.RestorePoints[0].JobId != "crash-1" {
		t.Fatalf("restore points after the crash: %v", rps.RestorePoints)
	}
	e.checkAgainstTenant(final.RestorePointId, src.drives, true)
	verify, err := e.catalog.VerifyRepository(t.Context(), &pb.VerifyRepositoryRequest{ReadData: true})
	if err != nil || len(verify.Errors) != 0 {
		t.Fatalf("verify after the crash: %v, %v", verify, err)
	}
	info, err := pb.NewAgentServiceClient(e.conn).GetAgentInfo(context.Background(), &pb.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the crash: %d chunks in %d packs, %d bytes on disk", info.Repository.Chunks, info.Repository.Packs, info.Repository.BytesOnDisk)
	if !strings.HasSuffix(info.Repository.Path, "repository") {
		t.Errorf("repository path %q", info.Repository.Path)
	}
}
