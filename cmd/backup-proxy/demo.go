package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// demoMarker marks a data directory the demo made, so a later run may wipe
// it; any other non-empty directory is refused.
const demoMarker = ".backup-proxy-demo"

type demoConfig struct {
	dataDir   string
	listen    string
	users     int
	sites     int
	files     int
	apps      int
	maxFile   int64
	timeScale float64
	regime    string
	seed      uint64
	keep      bool
}

func parseDemoFlags(args []string, stderr io.Writer) (*demoConfig, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &demoConfig{}
	fs.StringVar(&c.dataDir, "data", "backup-proxy-demo", "data directory of the demo agent (wiped if a previous demo made it)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:50051", "gRPC address of the demo agent")
	fs.IntVar(&c.users, "users", 6, "simulated users (each with a OneDrive)")
	fs.IntVar(&c.sites, "sites", 3, "simulated SharePoint sites")
	fs.IntVar(&c.files, "files-per-drive", 100, "files per OneDrive and per document library")
	fs.IntVar(&c.apps, "apps", 3, "Entra applications in the pool (the first is the organization app)")
	fs.Int64Var(&c.maxFile, "max-file-size", 1<<20, "largest simulated file in bytes")
	fs.Float64Var(&c.timeScale, "time-scale", 10, "simulated seconds per real second (Microsoft's per-minute budgets pass this much faster)")
	fs.StringVar(&c.regime, "regime", "per-app", "throttling regime: per-app or shared (all apps draw on one budget, as enforced since 2026)")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the simulated tenant")
	fs.BoolVar(&c.keep, "serve", false, "keep the agent and the simulated tenant running after the demo, until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	case !loopbackAddr(c.listen):
		return nil, fmt.Errorf("--listen: %q is not a loopback host:port; the demo agent runs without TLS, so it stays on this machine", c.listen)
	case c.users < 0 || c.sites < 0 || c.users+c.sites == 0:
		return nil, errors.New("--users and --sites: at least one source is needed")
	case c.files < 1:
		return nil, errors.New("--files-per-drive: must be at least 1")
	case c.apps < 1:
		return nil, errors.New("--apps: must be at least 1")
	case c.timeScale < 1:
		return nil, errors.New("--time-scale: must be at least 1")
	case c.regime != string(graphsim.RegimePerApp) && c.regime != string(graphsim.RegimeShared):
		return nil, fmt.Errorf("--regime: %q is not per-app or shared", c.regime)
	}
	return c, nil
}

// runDemo backs up a simulated tenant end to end through the real agent:
// graphsim in-process, the agent on a loopback gRPC port, applications added,
// a full backup of every OneDrive and site, a mutation of the tenant, an
// incremental backup, a verify, and a summary.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseDemoFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy demo: %v\n", err)
		return exitUsage
	}
	if err := demo(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "backup-proxy demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func prepareDemoDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case len(entries) == 0:
	default:
		if _, err := os.Stat(filepath.Join(dir, demoMarker)); err != nil {
			return fmt.Errorf("%s exists and was not made by the demo; choose another --data", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, demoMarker), []byte("made by backup-proxy demo; a later demo may delete this directory\n"), 0o600)
}

func demo(ctx context.Context, cfg *demoConfig, stdout, stderr io.Writer) error {
	start := time.Now()
	if err := prepareDemoDir(cfg.dataDir); err != nil {
		return err
	}
	// Logs go to a file: the terminal shows progress.
	logFile, err := os.OpenFile(filepath.Join(cfg.dataDir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logFile), zap.InfoLevel))

	sim, err := graphsim.New(graphsim.Options{
		Seed: cfg.seed, Users: noneIfZero(cfg.users), Sites: noneIfZero(cfg.sites), FilesPerDrive: cfg.files, Apps: cfg.apps,
		MaxFileSize: cfg.maxFile, TimeScale: cfg.timeScale, Regime: graphsim.Regime(cfg.regime),
		// Production users keep using the tenant: a fifth of its budget.
		ProductionLoad: 0.2 * float64(graphsim.LimitsForLicenses(1000).TenantPer5Min) / 5,
		Faults:         graphsim.Faults{UnprovisionedOneDrives: -1},
		Logger:         log.Named("graphsim"),
	})
	if err != nil {
		return fmt.Errorf("start graphsim: %w", err)
	}
	defer sim.Close()
	tenant := sim.Tenant()

	// The scheduler counts in the simulator's time; Retry-After comes in
	// real seconds, each worth timeScale simulated seconds.
	a, err := assemble(log, agentConfig{
		dataDir: cfg.dataDir, graphURL: sim.GraphURL(), loginURL: sim.LoginURL(), roots: sim.CertPool(),
		maxJobs: 4, maxQueuedJobs: 100, downloadsPerJob: 8,
		scheduler: scheduler.Config{
			Company:      "backup-proxy-demo",
			Clock:        scheduler.Scaled(scheduler.RealClock{}, cfg.timeScale),
			HeaderSecond: time.Duration(cfg.timeScale * float64(time.Second)),
		},
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		a.close(context.Background())
		return fmt.Errorf("listen on %s (use --listen to choose another address): %w", cfg.listen, err)
	}
	go a.server.Serve(lis)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.server.Shutdown(sctx)
		a.close(sctx)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	c := demoClient{pool: pb.NewPoolServiceClient(conn), jobs: pb.NewJobServiceClient(conn), catalog: pb.NewCatalogServiceClient(conn)}

	fmt.Fprintf(stdout, "backup-proxy demo\n")
	fmt.Fprintf(stdout, "  simulated tenant %s: %d users, %d sites, %d files per drive, %d apps, %s regime, time x%g\n",
		tenant.Domain, len(tenant.Users), len(tenant.Sites), cfg.files, len(tenant.Apps), cfg.regime, cfg.timeScale)
	fmt.Fprintf(stdout, "  agent on %s, data in %s (log: agent.log)\n\n", lis.Addr(), cfg.dataDir)

	if err := addSimApps(ctx, c.pool, sim); err != nil {
		return err
	}
	list, err := c.pool.ListApplications(ctx, &pb.ListApplicationsRequest{TenantId: tenant.ID})
	if err != nil {
		return err
	}
	for _, app := range list.Applications {
		fmt.Fprintf(stdout, "  added application %-34s %s  thumbprint %s\n", app.DisplayName, app.ClientId, app.Thumbprint)
	}
	requests := simJobRequests(sim)

	var all []*pb.Job
	full, err := c.runPhase(ctx, stdout, a, sim, "full backup", "full", requests)
	if err != nil {
		return err
	}
	all = append(all, full...)

	mut := sim.Mutate(graphsim.MutationRequest{Create: 10, Modify: 10, Rename: 5, Delete: 5})
	fmt.Fprintf(stdout, "\n  the users changed the tenant: %d items created, modified, renamed or deleted\n", len(mut.Changes))
	inc, err := c.runPhase(ctx, stdout, a, sim, "incremental backup", "incremental", requests)
	if err != nil {
		return err
	}
	all = append(all, inc...)

	verify, err := c.catalog.VerifyRepository(ctx, &pb.VerifyRepositoryRequest{ReadData: true})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}

	printSummary(stdout, a, sim, tenant.ID, all)
	verdict := "clean"
	if len(verify.Errors) > 0 {
		verdict = fmt.Sprintf("%d PROBLEMS: %s", len(verify.Errors), verify.Errors[0].Message)
	}
	fmt.Fprintf(stdout, "\n  verify (every chunk read back and hashed): %d chunks, %s\n", verify.ChunksChecked, verdict)
	fmt.Fprintf(stdout, "  demo finished in %s\n", time.Since(start).Round(100*time.Millisecond))
	printExplore(stdout, cfg, tenant.ID, full, lis.Addr().String())

	if cfg.keep {
		fmt.Fprintf(stdout, "\n  serving on %s until Ctrl-C\n", lis.Addr())
		<-ctx.Done()
	}
	if len(verify.Errors) > 0 {
		return errors.New("the repository did not verify clean")
	}
	return nil
}

// noneIfZero maps a flag's 0 ("none") to graphsim's negative count: for
// graphsim.Options zero means the default.
func noneIfZero(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

type demoClient struct {
	pool    pb.PoolServiceClient
	jobs    pb.JobServiceClient
	catalog pb.CatalogServiceClient
}

// runPhase submits one job per source and shows live progress until all end.
func (c demoClient) runPhase(ctx context.Context, stdout io.Writer, a *assembled, sim *graphsim.Server, title, prefix string, requests []*pb.SubmitJobRequest) ([]*pb.Job, error) {
	fmt.Fprintf(stdout, "\n  %s of %d sources\n", title, len(requests))
	ids := make([]string, len(requests))
	for i, r := range requests {
		r.JobId = fmt.Sprintf("demo-%s-%d", prefix, i+1)
		if _, err := c.jobs.SubmitJob(ctx, r); err != nil {
			return nil, fmt.Errorf("submit %s: %w", r.JobId, err)
		}
		ids[i] = r.JobId
	}
	started := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		jobs := make([]*pb.Job, len(ids))
		done := 0
		var p pb.JobProgress
		for i, id := range ids {
			resp, err := c.jobs.GetJob(ctx, &pb.GetJobRequest{JobId: id})
			if err != nil {
				return nil, err
			}
			jobs[i] = resp.Job
			if isEnded(resp.Job.State) {
				done++
			}
			q := resp.Job.Progress
			p.ItemsDiscovered += q.ItemsDiscovered
			p.ItemsBackedUp += q.ItemsBackedUp
			p.BytesDownloaded += q.BytesDownloaded
			p.ThrottledRequests += q.ThrottledRequests
		}
		st, _ := a.tenants.TenantStats(sim.Tenant().ID)
		var rates []string
		for _, id := range sortedKeys(st.Apps) {
			rates = append(rates, fmt.Sprintf("%.0f", float64(st.Apps[id].RULastMinute)))
		}
		fmt.Fprintf(stdout, "  [%5.1fs] jobs %d/%d  items %d/%d  %.1f MB  RU/min per app [%s]  throttled %d\n",
			time.Since(started).Seconds(), done, len(ids), p.ItemsBackedUp, p.ItemsDiscovered,
			float64(p.BytesDownloaded)/1e6, strings.Join(rates, " "), p.ThrottledRequests)
		if done == len(ids) {
			for _, j := range jobs {
				if j.State == pb.JobState_JOB_STATE_FAILED {
					return nil, fmt.Errorf("job %s failed: %s", j.JobId, j.Error)
				}
			}
			return jobs, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func isEnded(s pb.JobState) bool {
	switch s {
	case pb.JobState_JOB_STATE_SUCCEEDED, pb.JobState_JOB_STATE_PARTIALLY_SUCCEEDED,
		pb.JobState_JOB_STATE_FAILED, pb.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func printSummary(w io.Writer, a *assembled, sim *graphsim.Server, tenantID string, jobs []*pb.Job) {
	fmt.Fprintf(w, "\n  applications: what the agent's scheduler counted, and graphsim's truth\n")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  app\tsent\tthrottled\t\tgraphsim: requests\tRU\t429\t503\tRetry-After violations\t")
	st, _ := a.tenants.TenantStats(tenantID)
	truth := sim.Stats()
	var sent, throttled int64
	for _, app := range truth.Apps {
		s := st.Apps[app.ClientID]
		sent, throttled = sent+s.Requests, throttled+s.Throttled
		fmt.Fprintf(tw, "  %s\t%d\t%d\t\t%d\t%d\t%d\t%d\t%d\t\n", app.ClientID[:8], s.Requests, s.Throttled,
			app.Requests, app.RU, app.Throttled429, app.Throttled503, app.RetryAfterViolations)
	}
	tt := truth.Tenant
	fmt.Fprintf(tw, "  all apps\t%d\t%d\t\t%d\t%d\t%d\t%d\t%d\t\n", sent, throttled, tt.Requests, tt.RU, tt.Throttled429, tt.Throttled503, tt.RetryAfterViolations)
	tw.Flush()
	fmt.Fprintf(w, "  production requests throttled by the backup: %d\n", tt.ProductionThrottled)

	fmt.Fprintf(w, "\n  jobs\n")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  job\tsource\tstate\titems\tfailed\tdeleted\tMB down\tMB stored\tthrottled\ttime")
	for _, j := range jobs {
		src := j.GetOnedrive().GetUser()
		if src == "" {
			src = j.GetSharepointSite().GetSite()
		}
		p := j.Progress
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%.1f\t%.1f\t%d\t%s\n", j.JobId, src,
			strings.TrimPrefix(j.State.String(), "JOB_STATE_"), p.ItemsBackedUp, p.ItemsFailed, p.ItemsDeleted,
			float64(p.BytesDownloaded)/1e6, float64(p.BytesStored)/1e6, p.ThrottledRequests,
			j.EndTime.AsTime().Sub(j.StartTime.AsTime()).Round(10*time.Millisecond))
	}
	tw.Flush()
}

func printExplore(w io.Writer, cfg *demoConfig, tenantID string, full []*pb.Job, addr string) {
	rp := ""
	if len(full) > 0 {
		rp = full[0].RestorePointId
	}
	fmt.Fprintf(w, `
  explore the result with grpcurl (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest)
  while an agent serves the demo's data directory:
    go run ./cmd/backup-proxy serve --data %[1]s &
    grpcurl -plaintext -d '{"tenant_id":"%[2]s"}' %[3]s backupproxy.v1.CatalogService/ListRestorePoints
    grpcurl -plaintext -d '{"restore_point_id":"%[4]s","page_size":10}' %[3]s backupproxy.v1.CatalogService/ListItems
    grpcurl -plaintext -d '{"tenant_id":"%[2]s","page_size":5}' %[3]s backupproxy.v1.JobService/ListJobs
    grpcurl -plaintext -d '{"read_data":true}' %[3]s backupproxy.v1.CatalogService/VerifyRepository
  (or run the demo with --serve to keep this agent and the simulated tenant running)
`, cfg.dataDir, tenantID, addr, rp)
}
