package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	khttp "github.com/microsoft/kiota-http-go"
	msgraph "github.com/microsoftgraph/msgraph-sdk-go"
	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// The throttling benchmark backs up the same simulated tenant with three
// clients and reports how well each used the budget Microsoft (graphsim)
// really granted:
//
//	kiota-default  one app, msgraph-sdk-go's default client (kiota RetryHandler)
//	naive-pool     N apps round-robin, each under a rate.Limiter at the
//	               documented per-app limit, no other throttle awareness
//	scheduler      this product's scheduler
//
// The workload is the same for all: enumerate every drive with delta and
// download every file, with the same parallelism, discarding the bytes (the
// repository is not what is measured here).

type benchConfig struct {
	timeScale  float64
	users      int
	sites      int
	files      int
	parallel   int
	share      float64
	production float64 // share of the tenant bucket used by production users
	clients    []string
	regimes    []string
	apps       []int
	seed       uint64
}

// benchResult is one case; its JSON keys are fixed (scripts read them).
type benchResult struct {
	Client              string  `json:"client"`
	Regime              string  `json:"regime"`
	Apps                int     `json:"apps"`
	WallSeconds         float64 `json:"wall_seconds"`
	RU                  int64   `json:"ru"`
	Efficiency          float64 `json:"efficiency"`
	Requests            int64   `json:"requests"`
	Throttled           int64   `json:"throttled"`
	ThrottledShare      float64 `json:"throttled_share"`
	Violations          int64   `json:"violations"`
	ProductionThrottled int64   `json:"production_throttled"`
	Files               int64   `json:"files"`
	FailedFiles         int64   `json:"failed_files"`
	GrantedRUPerMinute  float64 `json:"granted_ru_per_minute"`
}

func parseBenchFlags(args []string, stderr io.Writer) (*benchConfig, error) {
	fs := flag.NewFlagSet("bench throttle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &benchConfig{}
	var clients, regimes, apps string
	// Runs must last many simulated minutes: over a short run a client that
	// bursts into the empty windows seems to beat the budget.
	fs.Float64Var(&c.timeScale, "time-scale", 30, "simulated seconds per real second")
	fs.IntVar(&c.users, "users", 8, "simulated users")
	fs.IntVar(&c.sites, "sites", 4, "simulated sites")
	fs.IntVar(&c.files, "files-per-drive", 1000, "files per drive")
	fs.IntVar(&c.parallel, "parallel", 32, "downloads in flight, for every client")
	fs.Float64Var(&c.share, "tenant-share", 0.5, "share of the tenant bucket the backup may use")
	fs.Float64Var(&c.production, "production-load", 0.3, "share of the tenant bucket production users consume")
	fs.StringVar(&clients, "clients", "kiota-default,naive-pool,scheduler", "clients to run")
	fs.StringVar(&regimes, "regimes", "per-app,shared", "throttling regimes")
	fs.StringVar(&apps, "apps", "1,4", "application counts")
	fs.Uint64Var(&c.seed, "seed", 1, "tenant seed")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.clients, c.regimes = strings.Split(clients, ","), strings.Split(regimes, ",")
	for _, cl := range c.clients {
		if cl != "kiota-default" && cl != "naive-pool" && cl != "scheduler" {
			return nil, fmt.Errorf("--clients: unknown client %q", cl)
		}
	}
	for _, r := range c.regimes {
		if r != string(graphsim.RegimePerApp) && r != string(graphsim.RegimeShared) {
			return nil, fmt.Errorf("--regimes: unknown regime %q", r)
		}
	}
	for _, a := range strings.Split(apps, ",") {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--apps: %q is not a positive number", a)
		}
		c.apps = append(c.apps, n)
	}
	if c.timeScale < 1 || c.parallel < 1 || c.files < 1 || c.share <= 0 || c.share > 1 || c.production < 0 || c.production >= 1 {
		return nil, errors.New("--time-scale ≥ 1, --parallel ≥ 1, --files-per-drive ≥ 1, 0 < --tenant-share ≤ 1, 0 ≤ --production-load < 1")
	}
	return c, nil
}

const benchUsage = `usage:
  backup-proxy bench throttle [flags]   three clients against graphsim's throttling (issue: the scheduler)
  backup-proxy bench backup [flags]     full backups end to end, throttling off and on
  backup-proxy bench memory [flags]     peak RSS of an agent process backing up one large drive
  backup-proxy bench load [flags]       GetJob/ListJobs with ghz over mutual TLS during a backup (scripts/loadtest)
  backup-proxy bench scaleout [flags]   three agent processes on one tenant, with a shared Redis budget and without
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, benchUsage)
		return exitUsage
	}
	switch args[0] {
	case "throttle":
		return runBenchThrottle(ctx, args[1:], stdout, stderr)
	case "backup":
		return runBenchBackup(ctx, args[1:], stdout, stderr)
	case "memory":
		return runBenchMemory(ctx, args[1:], stdout, stderr)
	case "load":
		return runBenchLoad(ctx, args[1:], stdout, stderr)
	case "scaleout":
		return runBenchScaleout(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, benchUsage)
	return exitUsage
}

func runBenchThrottle(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseBenchFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy bench throttle: %v\n", err)
		return exitUsage
	}
	var results []benchResult
	for _, regime := range cfg.regimes {
		for _, apps := range cfg.apps {
			for _, client := range cfg.clients {
				if client == "kiota-default" && apps > 1 {
					continue // the naive single-app tool uses one app by definition
				}
				fmt.Fprintf(stderr, "running %s, %s regime, %d apps ...\n", client, regime, apps)
				res, err := benchCase(ctx, cfg, client, graphsim.Regime(regime), apps)
				if err != nil {
					fmt.Fprintf(stderr, "backup-proxy bench throttle: %s/%s/%d: %v\n", client, regime, apps, err)
					return exitFailure
				}
				line, _ := json.Marshal(res)
				fmt.Fprintln(stdout, string(line))
				results = append(results, res)
			}
		}
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\tregime\tapps\twall s\tRU\tgranted RU/min\tefficiency\trequests\t429+503\tshare\tviolations\tprod. throttled\tfailed files\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%d\t%.0f\t%.3f\t%d\t%d\t%.2f%%\t%d\t%d\t%d\t\n", r.Client, r.Regime, r.Apps, r.WallSeconds, r.RU,
			r.GrantedRUPerMinute, r.Efficiency, r.Requests, r.Throttled, 100*r.ThrottledShare, r.Violations, r.ProductionThrottled, r.FailedFiles)
	}
	tw.Flush()
	return exitOK
}

// benchCase runs one client against a fresh graphsim tenant.
func benchCase(ctx context.Context, cfg *benchConfig, client string, regime graphsim.Regime, apps int) (benchResult, error) {
	limits := graphsim.LimitsForLicenses(1000)
	sim, err := graphsim.New(graphsim.Options{
		Seed: cfg.seed, Users: cfg.users, Sites: cfg.sites, FilesPerDrive: cfg.files, Apps: apps,
		SizeMix:        []graphsim.SizeClass{{Weight: 1, Min: 1 << 10, Max: 16 << 10}},
		Regime:         regime,
		TimeScale:      cfg.timeScale,
		ProductionLoad: cfg.production * float64(limits.TenantPer5Min) / 5,
		Faults:         graphsim.Faults{UnprovisionedOneDrives: -1},
	})
	if err != nil {
		return benchResult{}, err
	}
	defer sim.Close()
	tenant := sim.Tenant()
	dir, err := os.MkdirTemp("", "backup-proxy-bench-")
	if err != nil {
		return benchResult{}, err
	}
	defer os.RemoveAll(dir)
	p, err := pool.Open(zap.NewNop(), pool.Config{Dir: dir, LoginURL: sim.LoginURL(), HTTPClient: sim.HTTPClient()})
	if err != nil {
		return benchResult{}, err
	}
	for _, app := range tenant.Apps {
		c := app.Credentials[0]
		if _, err := p.Add(ctx, pool.AddRequest{TenantID: tenant.ID, ClientID: app.ClientID, Organization: app.OrganizationApp,
			Certificate: append(append([]byte{}, c.CertPEM...), c.KeyPEM...)}); err != nil {
			return benchResult{}, err
		}
	}
	pooled := p.Apps(tenant.ID)

	var hc *http.Client
	switch client {
	case "kiota-default":
		opts := msgraph.GetDefaultClientOptions()
		hc = &http.Client{Transport: khttp.NewCustomTransportWithParentTransport(
			&appToken{app: pooled[0], base: sim.Transport()}, msgraphcore.GetDefaultMiddlewaresWithOptions(&opts)...)}
	case "naive-pool":
		hc = &http.Client{Transport: newNaivePool(pooled, sim.Transport(), float64(limits.AppPerMinute)/60*cfg.timeScale)}
	case "scheduler":
		sched := scheduler.New(zap.NewNop(), scheduler.Config{
			Company:      "backup-proxy-bench",
			Limits:       scheduler.Limits{AppPerMinute: limits.AppPerMinute, AppPer24h: limits.AppPer24h, TenantPer5Min: limits.TenantPer5Min},
			TenantShare:  cfg.share,
			Clock:        scheduler.Scaled(scheduler.RealClock{}, cfg.timeScale),
			HeaderSecond: time.Duration(cfg.timeScale * float64(time.Second)),
		}, scheduler.PoolApps(p, tenant.ID), sim.Transport())
		hc = &http.Client{Transport: sched, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	gc, err := graph.New(hc, sim.GraphURL())
	if err != nil {
		return benchResult{}, err
	}
	var drives []string
	for _, d := range tenant.Drives {
		drives = append(drives, d.ID)
	}
	sim.ResetStats()
	start := time.Now()
	files, failed, err := crawlAll(ctx, gc, drives, cfg.parallel)
	wall := time.Since(start).Seconds()
	if err != nil {
		return benchResult{}, err
	}
	st := sim.Stats().Tenant

	effectiveApps := apps
	if regime == graphsim.RegimeShared {
		effectiveApps = 1
	}
	granted := min(float64(effectiveApps*limits.AppPerMinute), cfg.share*float64(limits.TenantPer5Min)/5) // RU per simulated minute
	ideal := float64(st.RU) / (granted * cfg.timeScale / 60)                                              // real seconds
	throttled := st.Throttled429 + st.Throttled503
	return benchResult{
		Client: client, Regime: string(regime), Apps: apps, WallSeconds: round(wall, 2), RU: st.RU,
		Efficiency: round(ideal/wall, 3), Requests: st.Requests, Throttled: throttled,
		ThrottledShare: round(float64(throttled)/float64(max(st.Requests, 1)), 4), Violations: st.RetryAfterViolations,
		ProductionThrottled: st.ProductionThrottled, Files: files, FailedFiles: failed, GrantedRUPerMinute: granted,
	}, nil
}

func round(v float64, digits int) float64 {
	p, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', digits, 64), 64)
	return p
}

// crawlAll enumerates every drive with delta and downloads every file, with
// `parallel` downloads in flight. A naive client's failures are retried
// after a pause (as a tool would rerun failed items) up to 20 times.
func crawlAll(ctx context.Context, gc *graph.Client, drives []string, parallel int) (files, failed int64, err error) {
	ctx = scheduler.WithJob(ctx, "bench")
	g, gctx := errgroup.WithContext(ctx)
	sem := make(chan struct{}, parallel)
	var nFiles, nFailed atomic.Int64
	retry := func(f func() error) error {
		var err error
		for range 20 {
			if err = f(); err == nil || gctx.Err() != nil {
				return err
			}
			time.Sleep(time.Second)
		}
		return err
	}
	for _, d := range drives {
		g.Go(func() error {
			link := gc.DeltaStart(d)
			for link != "" {
				var page graph.DeltaPage
				if err := retry(func() (err error) { page, err = gc.Delta(gctx, link); return err }); err != nil {
					return fmt.Errorf("delta of %s: %w", d, err)
				}
				for _, it := range page.Items {
					if !it.File || it.Deleted {
						continue
					}
					nFiles.Add(1)
					select {
					case sem <- struct{}{}:
					case <-gctx.Done():
						return gctx.Err()
					}
					g.Go(func() error {
						defer func() { <-sem }()
						err := retry(func() error {
							rc, err := gc.Download(gctx, d, it.ID, 0)
							if err != nil {
								return err
							}
							defer rc.Close()
							n, err := io.Copy(io.Discard, rc)
							if err == nil && n != it.Size {
								err = fmt.Errorf("%d bytes, want %d", n, it.Size)
							}
							return err
						})
						if err != nil {
							nFailed.Add(1)
						}
						return nil
					})
				}
				link = page.NextLink
			}
			return nil
		})
	}
	err = g.Wait()
	return nFiles.Load(), nFailed.Load(), err
}

// naivePool spreads requests round-robin over apps, each under a
// rate.Limiter at the documented per-app limit (in RU), and knows nothing
// else about throttling: a 429/503 is waited out (Retry-After) by that
// request alone and retried on the next app.
type naivePool struct {
	apps     []*pool.App
	limiters []*rate.Limiter
	base     http.RoundTripper
	next     atomic.Uint64
}

func newNaivePool(apps []*pool.App, base http.RoundTripper, ruPerSecond float64) *naivePool {
	n := &naivePool{apps: apps, base: base}
	for range apps {
		n.limiters = append(n.limiters, rate.NewLimiter(rate.Limit(ruPerSecond), 10))
	}
	return n
}

func (n *naivePool) RoundTrip(req *http.Request) (*http.Response, error) {
	cost := 1
	if p, ok := strings.CutPrefix(req.URL.Path, "/v1.0"); ok {
		_, cost = scheduler.Cost(req.Method, p, req.URL.RawQuery)
	}
	for attempt := 0; ; attempt++ {
		i := int(n.next.Add(1)-1) % len(n.apps)
		if err := n.limiters[i].WaitN(req.Context(), cost); err != nil {
			return nil, err
		}
		r := req.Clone(req.Context())
		if strings.HasPrefix(req.URL.Path, "/v1.0/") {
			tok, err := n.apps[i].Token(req.Context())
			if err != nil {
				return nil, err
			}
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := n.base.RoundTrip(r)
		if err != nil || (resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable) || attempt == 9 {
			return resp, err
		}
		wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		select {
		case <-time.After(time.Duration(max(wait, 1)) * time.Second):
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
}

// appToken authenticates every request as one app: what an SDK's
// authentication provider does for a single-app tool.
type appToken struct {
	app  *pool.App
	base http.RoundTripper
}

func (a *appToken) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := a.app.Token(req.Context())
	if err != nil {
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+tok)
	return a.base.RoundTrip(req)
}
