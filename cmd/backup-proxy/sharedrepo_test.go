package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/internal/redisserver"
	"github.com/backup-proxy/backup-proxy/internal/s3server"
	"github.com/backup-proxy/backup-proxy/lease"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler/redisbudget"
)

// s3Env points the agent's S3 credentials at srv.
func s3Env(srv *s3server.Server) []string {
	return []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey(), "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey()}
}

// s3Agent starts an in-process agent on a fresh graphsim tenant (opts)
// with its repository in srv's bucket "backups" (created here), leases in
// leaseRedis if not empty, and its Warn log observed.
func s3Agent(t *testing.T, srv *s3server.Server, opts graphsim.Options, leaseTTL time.Duration, leaseRedis string) (*e2e, *observer.ObservedLogs) {
	t.Helper()
	srv.NewBucket(t, "backups")
	for _, kv := range s3Env(srv) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	sim, err := graphsim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	core, logs := observer.New(zap.WarnLevel)
	e := &e2e{t: t, sim: sim, opts: opts, logs: core,
		repo: repoConfig{s3: "s3://backups/agents", endpoint: srv.Endpoint(), plaintext: true, leaseTTL: leaseTTL, leaseRedis: leaseRedis}}
	if err := e.repo.parse(); err != nil {
		t.Fatal(err)
	}
	e.start(t.TempDir())
	e.addApps()
	return e, logs
}

// The S3 server stops in the middle of a backup, while packs are being
// uploaded, and comes back: the uploads are retried, the job succeeds with
// the tenant's exact content and verify is clean.
func TestS3StoppedMidUpload(t *testing.T) {
	srv := s3server.ForTest(t)
	// About 200 MB in files of up to 1 MiB, a few ms a request: several
	// packs (32 MiB) are uploaded while the job runs, so stopping the
	// server after the first leaves the job uploads it cannot do without.
	e, logs := s3Agent(t, srv, graphsim.Options{Seed: 31, Users: 1, Sites: -1, FilesPerDrive: 400, Apps: 1, MaxFileSize: 1 << 20,
		Limits: &generous, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}, Latency: 5 * time.Millisecond}, time.Minute, "")
	sim := e.sim
	src := e.sources()[0]
	req := &pb.SubmitJobRequest{JobId: "s3-1", TenantId: sim.Tenant().ID}
	src.submit(req)
	if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	// Stop the server once the first pack is in the bucket: the job cannot
	// finish without uploading more.
	client, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "a pack in the bucket", func() bool {
		n := 0
		for range client.ListObjectsIter(t.Context(), "backups", minio.ListObjectsOptions{Prefix: "agents/packs/", Recursive: true}) {
			n++
		}
		return n > 0
	})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "an upload retried while S3 is down", func() bool {
		if resp, err := e.jobs.GetJob(t.Context(), &pb.GetJobRequest{JobId: "s3-1"}); err == nil && resp.Job.State != pb.JobState_JOB_STATE_RUNNING {
			for _, l := range logs.All() {
				t.Logf("%s %v", l.Message, l.ContextMap())
			}
			t.Fatalf("job ended while S3 was down: %v", resp.Job)
		}
		for _, e := range logs.FilterMessage("s3 request failed, retrying").All() {
			if e.ContextMap()["op"] == "put" {
				return true
			}
		}
		return false
	})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	final := e.wait("s3-1")
	if final.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("after the S3 restart: %v", final)
	}
	e.checkAgainstTenant(final.RestorePointId, src.drives, true)
	verify, err := e.catalog.VerifyRepository(t.Context(), &pb.VerifyRepositoryRequest{ReadData: true})
	if err != nil || len(verify.Errors) != 0 {
		t.Fatalf("verify after the S3 restart: %v, %v", verify, err)
	}
	t.Logf("%d s3 retries logged", logs.FilterMessage("s3 request failed, retrying").Len())
}

// An agent is SIGKILLed in the middle of a backup while it holds the
// source's lease. The same job given to a second agent waits for the lease
// to expire and completes there; the first
// agent, restarted, resumes its job on top of the second's restore point.
// Both restore points hold exactly the tenant's files, and both agents
// verify clean.
func TestAgentKilledHoldingLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts agent processes")
	}
	rs := redisserver.ForTest(t)
	srv := s3server.ForTest(t)
	srv.NewBucket(t, "backups")
	sim, dir, caFile := killableSim(t, 22)
	args := func(data string) []string {
		return []string{"serve", "--data", filepath.Join(dir, data), "--listen", "127.0.0.1:0",
			"--graph-url", sim.GraphURL(), "--login-url", sim.LoginURL(), "--ca-file", caFile,
			"--licenses", "100000", "--downloads-per-job", "2", "--rpc-rate", "0",
			"--repo-s3", "s3://backups/shared", "--repo-s3-endpoint", srv.Endpoint(), "--repo-s3-plaintext",
			"--repo-key-file", filepath.Join(dir, "repo.key"), "--lease-redis", rs.URL(), "--repo-lease-ttl", "3s"}
	}
	start := func(data string) (*agentProcess, *e2e) {
		p, err := startAgentProcess(os.Args[0], append(s3Env(srv), childArgs+"="+string(must(json.Marshal(args(data))))), "-test.run=^$")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.stop)
		return p, dialChild(t, sim, p.addr)
	}
	a, ea := start("a")
	ea.addApps()
	src := ea.sources()[0]
	submit := func(e *e2e, id string) {
		req := &pb.SubmitJobRequest{JobId: id, TenantId: sim.Tenant().ID}
		src.submit(req)
		if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	submit(ea, "job-a")
	if err := waitForItems(t.Context(), ea.jobs, "job-a", 120); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	killed := time.Now()
	// The dead agent's lease on the source is still there: b must wait it out.
	rc, err := redisbudget.Client(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	held, err := lease.NewRedis(rc, "", "test", zap.NewNop()).Held(t.Context(), "source/")
	if err != nil || len(held) != 1 {
		t.Fatalf("source leases after the kill: %v, %v; want the dead agent's", held, err)
	}
	t.Logf("the dead agent's lease: %s held by %s for another %s", held[0].Name, held[0].Owner, held[0].Remaining)

	_, eb := start("b")
	eb.addApps()
	submit(eb, "job-b")
	jb := eb.wait("job-b")
	if jb.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("agent b: %v", jb)
	}
	t.Logf("agent b finished %.1fs after the kill (lease ttl 3s)", time.Since(killed).Seconds())
	eb.checkAgainstTenant(jb.RestorePointId, src.drives, true)

	// Agent a comes back and resumes its job: incremental on b's.
	_, ea = start("a")
	ja := ea.wait("job-a")
	if ja.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("agent a after restart: %v", ja)
	}
	ea.checkAgainstTenant(ja.RestorePointId, src.drives, true)
	rps, err := ea.catalog.ListRestorePoints(t.Context(), &pb.ListRestorePointsRequest{TenantId: sim.Tenant().ID})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{} // id → base
	for _, rp := range rps.RestorePoints {
		got[rp.RestorePointId] = rp.BaseRestorePointId
	}
	if base, ok := got[ja.RestorePointId]; len(got) != 2 || !ok || base != jb.RestorePointId || got[jb.RestorePointId] != "" {
		t.Fatalf("restore points on agent a: %v; want b's full %s and a's %s based on it", rps.RestorePoints, jb.RestorePointId, ja.RestorePointId)
	}
	for name, e := range map[string]*e2e{"a": ea, "b": eb} {
		verify, err := e.catalog.VerifyRepository(t.Context(), &pb.VerifyRepositoryRequest{ReadData: true})
		if err != nil || len(verify.Errors) != 0 {
			t.Fatalf("verify on agent %s: %v, %v", name, verify, err)
		}
	}
}

// Redis restarts in the middle of a backup into a shared repository and
// loses the source's lease: the job stops its attempt without committing,
// takes the lease again and completes with the tenant's exact content.
func TestRedisRestartLosesLease(t *testing.T) {
	rs := redisserver.ForTest(t)
	e, logs := s3Agent(t, s3server.ForTest(t), graphsim.Options{Seed: 23, Users: 1, Sites: -1, FilesPerDrive: 400, Apps: 1, MaxFileSize: 256 << 10,
		Limits: &generous, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}, Latency: 5 * time.Millisecond}, 3*time.Second, rs.URL())
	sim := e.sim
	src := e.sources()[0]
	req := &pb.SubmitJobRequest{JobId: "r-1", TenantId: sim.Tenant().ID}
	src.submit(req)
	if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if err := waitForItems(t.Context(), e.jobs, "r-1", 100); err != nil {
		t.Fatal(err)
	}
	// A restart without persistence: the lease's key is gone.
	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	final := e.wait("r-1")
	if final.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("after the Redis restart: %v", final)
	}
	if logs.FilterMessage("lost the source's lease; taking it again and starting over").Len() == 0 {
		t.Fatal("the job never lost its lease: the test did not test that")
	}
	e.checkAgainstTenant(final.RestorePointId, src.drives, true)
	rps, err := e.catalog.ListRestorePoints(t.Context(), &pb.ListRestorePointsRequest{TenantId: sim.Tenant().ID})
	if err != nil || len(rps.RestorePoints) != 1 {
		t.Fatalf("restore points: %v, %v; want the one", rps, err)
	}
	verify, err := e.catalog.VerifyRepository(t.Context(), &pb.VerifyRepositoryRequest{ReadData: true})
	if err != nil || len(verify.Errors) != 0 {
		t.Fatalf("verify: %v, %v", verify, err)
	}
}

// waitFor polls cond (a real process or server: there is no clock to
// inject) until it holds, failing t after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// verify and prune run on a stopped agent's repository, in its directory
// or in S3 (where the leases in Redis keep prune apart from other agents).
func TestVerifyAndPruneCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		s3   bool
	}{{"directory", false}, {"s3", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var rc repoConfig
			var flags []string
			if tc.s3 {
				rs, srv := redisserver.ForTest(t), s3server.ForTest(t)
				srv.NewBucket(t, "backups")
				for _, kv := range s3Env(srv) {
					k, v, _ := strings.Cut(kv, "=")
					t.Setenv(k, v)
				}
				rc = repoConfig{s3: "s3://backups/cmd", endpoint: srv.Endpoint(), plaintext: true, leaseTTL: time.Minute, leaseRedis: rs.URL()}
				if err := rc.parse(); err != nil {
					t.Fatal(err)
				}
				flags = []string{"--repo-s3", rc.s3, "--repo-s3-endpoint", rc.endpoint, "--repo-s3-plaintext", "--lease-redis", rs.URL()}
			}
			opts := graphsim.Options{Seed: 24, Users: 1, Sites: -1, FilesPerDrive: 30, Apps: 1, MaxFileSize: 64 << 10,
				Limits: &generous, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}}
			sim, err := graphsim.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sim.Close() })
			data := t.TempDir()
			e := &e2e{t: t, sim: sim, opts: opts, repo: rc}
			e.start(data)
			e.addApps()
			src := e.sources()
			e.runJobs("one", src, pb.BackupMode_BACKUP_MODE_FULL)
			e.runJobs("two", src, pb.BackupMode_BACKUP_MODE_FULL)
			e.stop()

			run := func(fn func(context.Context, []string, io.Writer, io.Writer) int, args ...string) string {
				t.Helper()
				var out, errs bytes.Buffer
				if code := fn(t.Context(), append(append([]string{"--data", data}, flags...), args...), &out, &errs); code != exitOK {
					t.Fatalf("%v: exit %d: %s %s", args, code, out.String(), errs.String())
				}
				return out.String()
			}
			if out := run(runVerify, "--read-data"); !strings.Contains(out, "the repository is sound") {
				t.Fatalf("verify: %s", out)
			}
			out := run(runPrune, "--keep-last", "1")
			if !strings.Contains(out, "forget rp-") || !strings.Contains(out, "removed") {
				t.Fatalf("prune: %s", out)
			}
			if out := run(runVerify, "--read-data"); !strings.Contains(out, "the repository is sound") {
				t.Fatalf("verify after prune: %s", out)
			}
		})
	}
}
