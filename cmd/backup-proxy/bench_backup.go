package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// backupBenchResult is one full backup of a simulated tenant.
type backupBenchResult struct {
	Case        string  `json:"case"`
	Items       int64   `json:"items"`
	Bytes       int64   `json:"bytes"`
	WallSeconds float64 `json:"wall_seconds"`
	ItemsPerSec float64 `json:"items_per_second"`
	MBPerSec    float64 `json:"mb_per_second"`
	RU          int64   `json:"ru"`
	Throttled   int64   `json:"throttled"`
	Efficiency  float64 `json:"efficiency,omitempty"` // RU charged / (granted rate × wall time)
}

// runBenchBackup measures full backups end to end (graphsim → scheduler →
// engine → repository on disk): once with throttling off, the data path's
// own speed; once under Microsoft's default limits (time-scaled), where the
// speed should sit at the scheduler's efficiency.
func runBenchBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	users := fs.Int("users", 4, "simulated users")
	sites := fs.Int("sites", 2, "simulated sites")
	files := fs.Int("files-per-drive", 500, "files per drive")
	maxFile := fs.Int64("max-file-size", 1<<20, "largest file in bytes")
	timeScale := fs.Float64("time-scale", 20, "time scale of the throttled case")
	dir := fs.String("dir", "", "where the repositories go (default: a temporary directory)")
	if code, ok := parseOnly(fs, args, stderr, "bench backup"); !ok {
		return code
	}
	base := *dir
	if base == "" {
		var err error
		if base, err = os.MkdirTemp("", "backup-proxy-bench-"); err != nil {
			fmt.Fprintln(stderr, err)
			return exitFailure
		}
		defer os.RemoveAll(base)
	}
	opts := graphsim.Options{Seed: 3, Users: *users, Sites: *sites, FilesPerDrive: *files, Apps: 2, MaxFileSize: *maxFile,
		Faults: graphsim.Faults{UnprovisionedOneDrives: -1}}
	var results []backupBenchResult
	for _, c := range []struct {
		name      string
		throttled bool
	}{{"throttling off", false}, {"throttling on", true}} {
		o := opts
		o.NoThrottle = !c.throttled
		if c.throttled {
			o.TimeScale = *timeScale
		}
		fmt.Fprintf(stderr, "running %s ...\n", c.name)
		res, err := benchFullBackup(ctx, filepath.Join(base, strings.ReplaceAll(c.name, " ", "-")), o, c.name)
		if err != nil {
			fmt.Fprintf(stderr, "backup-proxy bench backup: %s: %v\n", c.name, err)
			return exitFailure
		}
		line, _ := json.Marshal(res)
		fmt.Fprintln(stdout, string(line))
		results = append(results, res)
	}
	for _, r := range results {
		fmt.Fprintf(stdout, "%-15s %6d items %8.1f MB in %6.2fs: %7.1f items/s %7.1f MB/s, %d RU, %d throttled",
			r.Case, r.Items, float64(r.Bytes)/1e6, r.WallSeconds, r.ItemsPerSec, r.MBPerSec, r.RU, r.Throttled)
		if r.Efficiency > 0 {
			fmt.Fprintf(stdout, ", efficiency %.3f", r.Efficiency)
		}
		fmt.Fprintln(stdout)
	}
	return exitOK
}

// benchFullBackup backs up every source of a fresh tenant with an
// in-process agent and times it from the first submission to the last end.
func benchFullBackup(ctx context.Context, dataDir string, o graphsim.Options, name string) (backupBenchResult, error) {
	sim, err := graphsim.New(o)
	if err != nil {
		return backupBenchResult{}, err
	}
	defer sim.Close()
	limits := graphsim.LimitsForLicenses(1000)
	sc := scheduler.Config{Limits: scheduler.Limits{AppPerMinute: limits.AppPerMinute, AppPer24h: limits.AppPer24h, TenantPer5Min: limits.TenantPer5Min}}
	if o.NoThrottle {
		sc.Limits = scheduler.Limits{AppPerMinute: 600_000, AppPer24h: 100_000_000, TenantPer5Min: 10_000_000}
	}
	if o.TimeScale > 1 {
		sc.Clock, sc.HeaderSecond = scheduler.Scaled(scheduler.RealClock{}, o.TimeScale), time.Duration(o.TimeScale*float64(time.Second))
	}
	a, err := assemble(zap.NewNop(), agentConfig{dataDir: dataDir, graphURL: sim.GraphURL(), loginURL: sim.LoginURL(),
		roots: sim.CertPool(), maxJobs: 4, maxQueuedJobs: 100, downloadsPerJob: 8, scheduler: sc})
	if err != nil {
		return backupBenchResult{}, err
	}
	defer a.close(context.Background())
	lis, err := listenLoopback()
	if err != nil {
		return backupBenchResult{}, err
	}
	go a.server.Serve(lis)
	defer a.server.Shutdown(context.Background())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return backupBenchResult{}, err
	}
	defer conn.Close()
	if err := addSimApps(ctx, pb.NewPoolServiceClient(conn), sim); err != nil {
		return backupBenchResult{}, err
	}
	sim.ResetStats()
	start := time.Now()
	jobs, err := runAllSources(ctx, pb.NewJobServiceClient(conn), sim, "bench")
	if err != nil {
		return backupBenchResult{}, err
	}
	wall := time.Since(start).Seconds()
	res := backupBenchResult{Case: name, WallSeconds: round(wall, 2)}
	for _, j := range jobs {
		res.Items += j.Progress.ItemsBackedUp
		res.Bytes += j.Progress.BytesDownloaded
	}
	st := sim.Stats().Tenant
	res.RU, res.Throttled = st.RU, st.Throttled429+st.Throttled503
	res.ItemsPerSec, res.MBPerSec = round(float64(res.Items)/wall, 1), round(float64(res.Bytes)/1e6/wall, 1)
	if !o.NoThrottle {
		granted := min(float64(o.Apps*limits.AppPerMinute), 0.5*float64(limits.TenantPer5Min)/5) * o.TimeScale / 60 // RU per real second
		res.Efficiency = round(float64(st.RU)/(granted*wall), 3)
	}
	return res, nil
}

// addSimApps adds every graphsim app to the pool, organization app first.
func addSimApps(ctx context.Context, pool pb.PoolServiceClient, sim *graphsim.Server) error {
	for _, app := range sim.Tenant().Apps {
		c := app.Credentials[0]
		if _, err := pool.AddApplication(ctx, &pb.AddApplicationRequest{
			TenantId: sim.Tenant().ID, ClientId: app.ClientID, DisplayName: app.DisplayName,
			Certificate: append(append([]byte{}, c.CertPEM...), c.KeyPEM...), OrganizationApp: app.OrganizationApp,
		}); err != nil {
			return fmt.Errorf("add application %s: %w", app.ClientID, err)
		}
	}
	return nil
}

// simJobRequests returns a job request (without id) for every OneDrive and
// every site of the simulated tenant.
func simJobRequests(sim *graphsim.Server) []*pb.SubmitJobRequest {
	var out []*pb.SubmitJobRequest
	tenant := sim.Tenant()
	for _, u := range tenant.Users {
		if u.HasOneDrive {
			out = append(out, &pb.SubmitJobRequest{TenantId: tenant.ID,
				Source: &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: u.UserPrincipalName}}})
		}
	}
	for _, s := range tenant.Sites {
		out = append(out, &pb.SubmitJobRequest{TenantId: tenant.ID,
			Source: &pb.SubmitJobRequest_SharepointSite{SharepointSite: &pb.SharePointSiteSource{Site: s.WebURL}}})
	}
	return out
}

// runAllSources backs up every OneDrive and site of the tenant, one job each,
// and waits for all of them.
func runAllSources(ctx context.Context, jobs pb.JobServiceClient, sim *graphsim.Server, prefix string) ([]*pb.Job, error) {
	var ids []string
	for i, r := range simJobRequests(sim) {
		r.JobId = fmt.Sprintf("%s-%d", prefix, i+1)
		if _, err := jobs.SubmitJob(ctx, r); err != nil {
			return nil, err
		}
		ids = append(ids, r.JobId)
	}
	var out []*pb.Job
	for _, id := range ids {
		j, err := watchToEnd(ctx, jobs, id)
		if err != nil {
			return nil, err
		}
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			return nil, fmt.Errorf("job %s ended %v: %s", id, j.State, j.Error)
		}
		out = append(out, j)
	}
	return out, nil
}

func watchToEnd(ctx context.Context, jobs pb.JobServiceClient, id string) (*pb.Job, error) {
	stream, err := jobs.WatchJob(ctx, &pb.WatchJobRequest{JobId: id})
	if err != nil {
		return nil, err
	}
	var last *pb.Job
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return nil, err
		}
		last = resp.Job
	}
}

// runBenchMemory backs up one drive of N items with the agent in a child
// process and reports the child's peak RSS, for several N in one run: the
// engine's memory must stay flat in the item count. It then restarts the
// agent and runs an incremental, and reports that process's peak too.
func runBenchMemory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench memory", flag.ContinueOnError)
	fs.SetOutput(stderr)
	counts := fs.String("items", "20000,200000", "item counts of the drive, comma separated")
	if code, ok := parseOnly(fs, args, stderr, "bench memory"); !ok {
		return code
	}
	for _, c := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fmt.Fprintf(stderr, "backup-proxy bench memory: --items: %q is not a positive number\n", c)
			return exitUsage
		}
		fmt.Fprintf(stderr, "backing up a drive of %d items ...\n", n)
		m, err := benchMemory(ctx, n)
		if err != nil {
			fmt.Fprintf(stderr, "backup-proxy bench memory: %v\n", err)
			return exitFailure
		}

		line, _ := json.Marshal(map[string]any{"items": m.items, "wall_seconds": round(m.wall, 1), "peak_rss_mib": mib(m.peak),
			"end_rss_anon_mib": mib(m.anon), "end_rss_file_mib": mib(m.file),
			"max_rss_anon_mib": mib(m.maxAnon), "max_rss_file_mib": mib(m.maxFile), "max_rss_executable_mib": mib(m.maxExe),
			"restarted_peak_rss_mib": mib(m.restartPeak), "restarted_max_rss_anon_mib": mib(m.restartAnon),
			"restarted_max_rss_file_mib": mib(m.restartFile), "restarted_max_rss_executable_mib": mib(m.restartExe),
			"incremental_wall_seconds": round(m.incWall, 1)})
		fmt.Fprintln(stdout, string(line))
	}
	return exitOK
}

type memoryResult struct {
	items            int64
	wall             float64
	peak, anon, file int64
	// maxAnon and maxFile are the largest anonymous and file-backed
	// (mapped catalogue) parts seen, sampled every 50 ms: which one the
	// peak is made of.
	maxAnon, maxFile int64
	// maxExe is the largest resident part of the executable's mappings
	// (see exeMemory), which the file-backed part includes.
	maxExe int64
	// restartPeak is the peak of the agent restarted on the repository
	// and running an incremental of 1 % changes, which took incWall.
	restartPeak, restartAnon, restartFile, restartExe int64
	incWall                                           float64
}

func benchMemory(ctx context.Context, items int) (res memoryResult, err error) {
	sim, err := graphsim.New(graphsim.Options{Seed: 5, Users: 1, Sites: -1, FilesPerDrive: items, Apps: 1, NoThrottle: true,
		SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 256, Max: 4 << 10}}, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}})
	if err != nil {
		return res, err
	}
	defer sim.Close()
	p, done, err := startSimAgent(sim, "--log-level", "info",
		// graphsim does not throttle here: nor should the scheduler pace.
		"--app-ru-per-minute", "1000000000", "--app-ru-per-day", "1000000000000", "--tenant-ru-per-5min", "1000000000")
	if err != nil {
		return res, err
	}
	defer done()
	conn, err := dialSimAgent(ctx, p, sim)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	start := time.Now()
	sampled := sampleMemory(p)
	jobs, err := runAllSources(ctx, pb.NewJobServiceClient(conn), sim, "memory")
	res.maxAnon, res.maxFile, res.maxExe = sampled()
	if err != nil {
		return res, err
	}
	res.wall, res.items = time.Since(start).Seconds(), jobs[0].Progress.ItemsBackedUp
	if res.peak, res.anon, res.file, err = p.memory(); err != nil {
		return res, err
	}

	// The agent's life goes on: restarted on that repository, it opens the
	// catalogue and backs up 1 % of the files changed. Neither may cost
	// memory in proportion to the drive.
	n := max(1, items/400)
	sim.Mutate(graphsim.MutationRequest{Create: n, Modify: n, Rename: n, Delete: n})
	if err := p.restart(); err != nil {
		return res, fmt.Errorf("restart: %w", err)
	}
	conn2, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn2.Close()
	start = time.Now()
	sampled = sampleMemory(p)
	_, err = runAllSources(ctx, pb.NewJobServiceClient(conn2), sim, "memory-incremental")
	res.restartAnon, res.restartFile, res.restartExe = sampled()
	if err != nil {
		return res, fmt.Errorf("incremental after restart: %w", err)
	}
	res.incWall = time.Since(start).Seconds()
	res.restartPeak, _, _, err = p.memory()
	return res, err
}

// sampleMemory samples p's anonymous and file-backed RSS every 50 ms, and
// the resident part of its executable every 500 ms (reading smaps costs the
// agent more, and that part changes slowly), until the returned function is
// called, which returns the largest of each.
func sampleMemory(p *agentProcess) func() (maxAnon, maxFile, maxExe int64) {
	stop := make(chan struct{})
	done := make(chan struct{})
	var maxAnon, maxFile, maxExe int64
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			if _, anon, file, err := p.memory(); err == nil {
				maxAnon, maxFile = max(maxAnon, anon), max(maxFile, file)
			}
			if i%10 == 0 {
				if exe, err := p.exeMemory(); err == nil {
					maxExe = max(maxExe, exe)
				}
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() (int64, int64, int64) {
		close(stop)
		<-done
		return maxAnon, maxFile, maxExe
	}
}
