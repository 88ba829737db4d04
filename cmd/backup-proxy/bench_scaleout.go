package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/internal/redisserver"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// scaleoutResult is one backup of a tenant by several agents at once.
type scaleoutResult struct {
	Regime              string  `json:"regime"`
	Budget              string  `json:"budget"` // "redis": shared; "alone": each agent on its own limits
	Agents              int     `json:"agents"`
	Apps                int     `json:"apps"`
	WallSeconds         float64 `json:"wall_seconds"`
	Items               int64   `json:"items"`
	Requests            int64   `json:"requests"`
	RU                  int64   `json:"ru"`
	GrantedRUPerMinute  float64 `json:"granted_ru_per_minute"`
	Efficiency          float64 `json:"efficiency"` // RU charged / (granted rate × wall time), all agents together
	Throttled           int64   `json:"throttled"`  // 429 + 503
	ThrottledShare      float64 `json:"throttled_share"`
	Violations          int64   `json:"retry_after_violations"`
	ProductionThrottled int64   `json:"production_throttled"`
}

// runBenchScaleout backs up one simulated tenant with several agent
// processes splitting its sources, in both throttling regimes: once sharing
// one budget in Redis (--budget-redis), once each on its own limits (the
// baseline: what the shared budget prevents).
func runBenchScaleout(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench scaleout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agents := fs.Int("agents", 3, "agent processes")
	apps := fs.Int("apps", 2, "applications of the tenant (the first is the organization app)")
	users := fs.Int("users", 6, "simulated users")
	sites := fs.Int("sites", 3, "simulated sites")
	files := fs.Int("files-per-drive", 1500, "files per drive: enough that the run spans several budget windows, so that their initial allowance does not flatter the efficiency")
	timeScale := fs.Float64("time-scale", 20, "simulated seconds per real second")
	// With the whole tenant bucket the app budgets bind (2 × 1250 RU/min
	// against 3750): the case where agents each alone overrun them.
	share := fs.Float64("tenant-share", 1, "share of the tenant bucket the agents may use together")
	production := fs.Float64("production-load", 0.1, "simulated production users' traffic, as a share of the tenant bucket")
	regimes := fs.String("regimes", "per-app,shared", "graphsim regimes, comma separated")
	budgets := fs.String("budgets", "redis,alone", "cases: redis (shared budget), alone (baseline)")
	if code, ok := parseOnly(fs, args, stderr, "bench scaleout"); !ok {
		return code
	}
	if *agents < 1 || *apps < 1 || *timeScale < 1 || *share <= 0 || *share > 1 || *production < 0 || *production >= 1 {
		fmt.Fprintln(stderr, "backup-proxy bench scaleout: --agents ≥ 1, --apps ≥ 1, --time-scale ≥ 1, 0 < --tenant-share ≤ 1, 0 ≤ --production-load < 1")
		return exitUsage
	}
	var results []scaleoutResult
	for _, regime := range strings.Split(*regimes, ",") {
		for _, budget := range strings.Split(*budgets, ",") {
			if budget != "redis" && budget != "alone" {
				fmt.Fprintf(stderr, "backup-proxy bench scaleout: --budgets: %q is not redis or alone\n", budget)
				return exitUsage
			}
			o := graphsim.Options{Seed: 11, Users: *users, Sites: *sites, FilesPerDrive: *files, Apps: *apps,
				Regime: graphsim.Regime(regime), TimeScale: *timeScale,
				ProductionLoad: *production * float64(graphsim.LimitsForLicenses(1000).TenantPer5Min) / 5,
				// Small files: the backup is bound by the RU budget, not by bandwidth.
				SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 512, Max: 8 << 10}}, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}}
			fmt.Fprintf(stderr, "running %s, %s budget, %d agents ...\n", regime, budget, *agents)
			res, err := benchScaleout(ctx, o, *agents, *share, budget == "redis")
			if err != nil {
				fmt.Fprintf(stderr, "backup-proxy bench scaleout: %s/%s: %v\n", regime, budget, err)
				return exitFailure
			}
			line, _ := json.Marshal(res)
			fmt.Fprintln(stdout, string(line))
			results = append(results, res)
		}
	}
	fmt.Fprintf(stdout, "\n%-8s %-6s %7s %9s %10s %9s %9s %10s %11s\n", "regime", "budget", "wall_s", "RU", "efficiency", "throttled", "share", "violations", "prod_thrott")
	for _, r := range results {
		fmt.Fprintf(stdout, "%-8s %-6s %7.1f %9d %10.3f %9d %8.2f%% %10d %11d\n", r.Regime, r.Budget, r.WallSeconds, r.RU,
			r.Efficiency, r.Throttled, 100*r.ThrottledShare, r.Violations, r.ProductionThrottled)
	}
	return exitOK
}

func benchScaleout(ctx context.Context, o graphsim.Options, agents int, share float64, shared bool) (res scaleoutResult, err error) {
	sim, err := graphsim.New(o)
	if err != nil {
		return res, err
	}
	defer sim.Close()
	dir, err := os.MkdirTemp("", "backup-proxy-scaleout-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	args := []string{"--log-level", "info", // startAgentProcess reads the "serving" line
		"--sim-time-scale", strconv.FormatFloat(o.TimeScale, 'f', -1, 64),
		"--tenant-share", strconv.FormatFloat(share, 'f', -1, 64)}
	if shared {
		rs, err := redisserver.Start(dir)
		if err != nil {
			return res, fmt.Errorf("redis-server for the shared budget: %w", err)
		}
		defer rs.Stop()
		args = append(args, "--budget-redis", rs.URL())
	}
	var conns []*grpc.ClientConn
	for i := range agents {
		p, done, err := startSimAgent(sim, args...)
		if err != nil {
			return res, fmt.Errorf("agent %d: %w", i, err)
		}
		defer done()
		conn, err := dialSimAgent(ctx, p, sim)
		if err != nil {
			return res, err
		}
		defer conn.Close()
		conns = append(conns, conn)
	}

	// The sources are dealt round-robin: each agent backs up a part.
	reqs := simJobRequests(sim)
	sim.ResetStats()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i, r := range reqs {
		r.JobId = fmt.Sprintf("scaleout-%d", i+1)
		jobs := pb.NewJobServiceClient(conns[i%agents])
		if _, err := jobs.SubmitJob(ctx, r); err != nil {
			return res, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := watchToEnd(ctx, jobs, r.JobId)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case j.State != pb.JobState_JOB_STATE_SUCCEEDED:
				errs = append(errs, fmt.Errorf("job %s ended %v: %s", r.JobId, j.State, j.Error))
			default:
				res.Items += j.Progress.ItemsBackedUp
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	st := sim.Stats().Tenant
	limits := graphsim.LimitsForLicenses(1000)
	effectiveApps := o.Apps
	if o.Regime == graphsim.RegimeShared {
		effectiveApps = 1
	}
	// What the tenant grants the backups together, whatever the number of
	// agents: the app budgets, within the tenant share.
	granted := min(float64(effectiveApps*limits.AppPerMinute), share*float64(limits.TenantPer5Min)/5) // RU per simulated minute
	throttled := st.Throttled429 + st.Throttled503
	budget := "alone"
	if shared {
		budget = "redis"
	}
	return scaleoutResult{
		Regime: string(o.Regime), Budget: budget, Agents: agents, Apps: o.Apps, WallSeconds: round(wall, 2), Items: res.Items,
		Requests: st.Requests, RU: st.RU, GrantedRUPerMinute: granted,
		Efficiency: round(float64(st.RU)/(granted*o.TimeScale/60*wall), 3),
		Throttled:  throttled, ThrottledShare: round(float64(throttled)/float64(max(st.Requests, 1)), 4),
		Violations: st.RetryAfterViolations, ProductionThrottled: st.ProductionThrottled,
	}, nil
}
