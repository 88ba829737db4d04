package main

import (
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/backup-proxy/backup-proxy/agent"
	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/internal/redisserver"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// Redis stops in the middle of a backup and comes back: the agent goes on
// on its fallback share, says so in health and metrics, shares again once
// Redis is back, and every job completes with every file.
func TestRedisStoppedMidBackup(t *testing.T) {
	rs := redisserver.ForTest(t)
	limits := graphsim.Limits{AppPerMinute: 200, AppPer24h: 10_000_000, TenantPer5Min: 1_000_000}
	opts := graphsim.Options{Seed: 21, Users: 2, Sites: 1, FilesPerDrive: 200, Apps: 2, MaxFileSize: 64 << 10,
		Limits: &limits, TimeScale: 30, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}}
	sim, err := graphsim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	e := &e2e{t: t, sim: sim, opts: opts, budgetRedis: rs.URL(),
		limits: &scheduler.Limits{AppPerMinute: limits.AppPerMinute, AppPer24h: limits.AppPer24h, TenantPer5Min: limits.TenantPer5Min}}
	e.start(t.TempDir())
	e.addApps()
	health := healthpb.NewHealthClient(e.conn)
	waitHealth := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: agent.SharedBudgetService})
			if err == nil && resp.Status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("shared budget health: %v, %v; want %v", resp, err, want)
			}
			time.Sleep(20 * time.Millisecond) // polling a real server
		}
	}
	requests := func() int64 { return sim.Stats().Tenant.Requests }
	waitRequests := func(n int64, what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for requests() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d requests, want %d", what, requests(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	srcs := e.sources()
	ids := map[string]string{}
	for _, s := range srcs {
		req := &pb.SubmitJobRequest{JobId: "full-" + s.name, TenantId: sim.Tenant().ID, Mode: pb.BackupMode_BACKUP_MODE_FULL}
		s.submit(req)
		if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		ids[s.name] = req.JobId
	}
	waitRequests(50, "before Redis stops")
	waitHealth(healthpb.HealthCheckResponse_SERVING)
	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	waitHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	if st, ok := e.agent.tenants.TenantStats(sim.Tenant().ID); !ok || !st.Distributed || st.DistributedUp {
		t.Errorf("tenant stats while Redis is down: distributed=%v up=%v", st.Distributed, st.DistributedUp)
	}
	// The agent's overall health does not depend on Redis.
	if resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("overall health while Redis is down: %v, %v", resp, err)
	}
	waitRequests(requests()+50, "while Redis is down")
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	waitHealth(healthpb.HealthCheckResponse_SERVING)
	for _, s := range srcs {
		j := e.wait(ids[s.name])
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%s: %v", s.name, j)
		}
		e.checkAgainstTenant(j.RestorePointId, s.drives, false)
	}
	st := sim.Stats().Tenant
	t.Logf("graphsim: %d requests, %d×429, %d×503, %d violations", st.Requests, st.Throttled429, st.Throttled503, st.RetryAfterViolations)
	if st.RetryAfterViolations != 0 {
		t.Errorf("%d Retry-After violations", st.RetryAfterViolations)
	}
}
