package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// runBenchLoad calls GetJob and ListJobs at a fixed rate with ghz against an
// agent process serving mutual TLS while it runs a backup, and reports
// ghz's figures and the agent's RSS before and after. scripts/loadtest
// installs ghz and makes the certificates.
func runBenchLoad(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadConfig
	fs.StringVar(&cfg.ghz, "ghz", "", "path of the ghz binary")
	fs.StringVar(&cfg.pki, "pki", "", "directory with ca.pem, server.pem, server-key.pem, operator.pem, operator-key.pem, reader.pem and reader-key.pem (README: Running with mutual TLS)")
	fs.UintVar(&cfg.rps, "rps", 50, "calls per second of each of GetJob and ListJobs")
	fs.DurationVar(&cfg.duration, "duration", 30*time.Second, "how long ghz calls")
	if code, ok := parseOnly(fs, args, stderr, "bench load"); !ok {
		return code
	}
	if cfg.ghz == "" || cfg.pki == "" {
		fmt.Fprintln(stderr, "backup-proxy bench load: --ghz and --pki are required (scripts/loadtest provides both)")
		return exitUsage
	}
	if cfg.rps == 0 || cfg.duration <= 0 {
		fmt.Fprintln(stderr, "backup-proxy bench load: --rps and --duration must be positive")
		return exitUsage
	}
	res, err := benchLoad(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy bench load: %v\n", err)
		return exitFailure
	}
	out, _ := json.MarshalIndent(res, "", "  ")
	fmt.Fprintln(stdout, string(out))
	for _, c := range res.Calls {
		if c.Errors > 0 {
			fmt.Fprintf(stderr, "backup-proxy bench load: %s had %d errors\n", c.Method, c.Errors)
			return exitFailure
		}
	}
	return exitOK
}

type loadConfig struct {
	ghz, pki string
	rps      uint
	duration time.Duration
}

// loadCall is ghz's report of one method, reduced to what the issue asks.
type loadCall struct {
	Method    string         `json:"method"`
	Count     uint64         `json:"count"`
	RPS       float64        `json:"rps"`
	P50Millis float64        `json:"p50_ms"`
	P99Millis float64        `json:"p99_ms"`
	Errors    int            `json:"errors"`
	Statuses  map[string]int `json:"statuses"`
	Failures  map[string]int `json:"failures,omitempty"` // error messages
}

type loadResult struct {
	Calls []loadCall `json:"calls"`
	// The agent's anonymous resident memory a window before ghz started,
	// when it started and when it ended, and its peak RSS (VmHWM, all of
	// it) over the whole run; the backup runs throughout.
	RSSStartMiB          float64 `json:"rss_anon_start_mib"`
	RSSBeforeMiB         float64 `json:"rss_anon_before_mib"`
	RSSAfterMiB          float64 `json:"rss_anon_after_mib"`
	PeakRSSMiB           float64 `json:"peak_rss_mib"`
	GrowthWithoutLoadMiB float64 `json:"rss_anon_growth_without_load_mib"`
	GrowthWithLoadMiB    float64 `json:"rss_anon_growth_with_load_mib"`
	// ItemsDuringLoad are the items the backup stored while ghz called.
	ItemsDuringLoad int64 `json:"items_during_load"`
	// What graphsim served the backup meanwhile.
	GraphRequestsDuringLoad int64  `json:"graph_requests_during_load"`
	GraphRUDuringLoad       int64  `json:"graph_ru_during_load"`
	JobStateAfter           string `json:"job_state_after"`
}

func benchLoad(ctx context.Context, cfg loadConfig, stderr io.Writer) (res loadResult, err error) {
	pki := func(name string) string { return filepath.Join(cfg.pki, name) }
	// One OneDrive large enough to outlast the load: the agent paces two
	// apps at 600 RU a minute each, a few files a second, a steady pace
	// whose own memory growth the window without load measures.
	sim, err := graphsim.New(graphsim.Options{Seed: 8, Users: 1, Sites: -1, FilesPerDrive: 20000, Apps: 2,
		SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 1 << 10, Max: 256 << 10}}, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}})
	if err != nil {
		return res, err
	}
	defer sim.Close()
	p, done, err := startSimAgent(sim,
		"--tls-cert", pki("server.pem"), "--tls-key", pki("server-key.pem"), "--client-ca", pki("ca.pem"),
		"--app-ru-per-minute", "600")
	if err != nil {
		return res, err
	}
	defer done()

	creds, err := clientTLS(pki("ca.pem"), pki("operator.pem"), pki("operator-key.pem"))
	if err != nil {
		return res, err
	}
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	if err := addSimApps(ctx, pb.NewPoolServiceClient(conn), sim); err != nil {
		return res, err
	}
	jobs := pb.NewJobServiceClient(conn)
	req := simJobRequests(sim)[0]
	req.JobId = "load-1"
	if _, err := jobs.SubmitJob(ctx, req); err != nil {
		return res, err
	}
	defer jobs.CancelJob(context.Background(), &pb.CancelJobRequest{JobId: req.JobId}) //nolint:errcheck // best effort at the end
	if err := waitForItems(ctx, jobs, req.JobId, 1); err != nil {
		return res, err
	}
	// Anonymous memory only: the file-backed part is mostly the catalogue's
	// mapped page cache, which comes and goes with its commits. The
	// backup's own growth over a window without load is the noise the
	// window with load is compared with.
	rss := func() (float64, error) {
		_, anon, _, err := p.memory()
		return mib(anon), err
	}
	if res.RSSStartMiB, err = rss(); err != nil {
		return res, err
	}
	fmt.Fprintf(stderr, "backup running; %s without load ...\n", cfg.duration)
	select {
	case <-time.After(cfg.duration):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	if res.RSSBeforeMiB, err = rss(); err != nil {
		return res, err
	}

	simBefore := sim.Stats().Tenant
	atStart, err := jobs.GetJob(ctx, &pb.GetJobRequest{JobId: req.JobId})
	if err != nil {
		return res, err
	}
	fmt.Fprintf(stderr, "calling GetJob and ListJobs at %d/s each for %s while the backup runs ...\n", cfg.rps, cfg.duration)
	calls := []struct{ method, data string }{
		{"backupproxy.v1.JobService.GetJob", `{"job_id":"load-1"}`},
		{"backupproxy.v1.JobService.ListJobs", `{"page_size":50}`},
	}
	res.Calls = make([]loadCall, len(calls))
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() { res.Calls[i], errs[i] = runGHZ(ctx, cfg, pki, p.addr, c.method, c.data) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	peak, anon, _, err := p.memory()
	if err != nil {
		return res, err
	}
	res.RSSAfterMiB, res.PeakRSSMiB = mib(anon), mib(peak)
	res.GrowthWithoutLoadMiB = round(res.RSSBeforeMiB-res.RSSStartMiB, 1)
	res.GrowthWithLoadMiB = round(res.RSSAfterMiB-res.RSSBeforeMiB, 1)
	got, err := jobs.GetJob(ctx, &pb.GetJobRequest{JobId: req.JobId})
	if err != nil {
		return res, err
	}
	j := got.Job
	res.ItemsDuringLoad = j.Progress.GetItemsBackedUp() - atStart.Job.Progress.GetItemsBackedUp()
	simAfter := sim.Stats().Tenant
	res.GraphRequestsDuringLoad, res.GraphRUDuringLoad = simAfter.Requests-simBefore.Requests, simAfter.RU-simBefore.RU
	res.JobStateAfter = j.State.String()
	if j.State != pb.JobState_JOB_STATE_RUNNING {
		return res, fmt.Errorf("the backup was %s when the load ended, not running: lengthen the drive or shorten --duration", j.State)
	}
	return res, nil
}

func mib(b int64) float64 { return round(float64(b)/(1<<20), 1) }

// waitForItems waits until job id has backed up n items and fails if the
// job ends first: what comes next (load, a kill, an outage) must meet a
// backup in full flight.
func waitForItems(ctx context.Context, jobs pb.JobServiceClient, id string, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := jobs.WatchJob(ctx, &pb.WatchJobRequest{JobId: id})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("waiting for job %s to back up %d items: %w", id, n, err)
		}
		if resp.Job.GetProgress().GetItemsBackedUp() >= n {
			return nil
		}
		if s := resp.Job.GetState(); s != pb.JobState_JOB_STATE_RUNNING && s != pb.JobState_JOB_STATE_QUEUED {
			return fmt.Errorf("job %s ended (%v) before backing up %d items", id, s, n)
		}
	}
}

// clientTLS is a client's mutual-TLS credentials.
func clientTLS(caFile, certFile, keyFile string) (credentials.TransportCredentials, error) {
	roots, err := loadRoots(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}), nil
}

// runGHZ runs ghz for one method with the read-only client certificate and
// reduces its JSON report.
func runGHZ(ctx context.Context, cfg loadConfig, pki func(string) string, addr, method, data string) (loadCall, error) {
	cmd := exec.CommandContext(ctx, cfg.ghz, "--cacert", pki("ca.pem"), "--cert", pki("reader.pem"), "--key", pki("reader-key.pem"),
		"--call", method, "--data", data, "--rps", fmt.Sprint(cfg.rps), "--duration", cfg.duration.String(),
		"--concurrency", "10", "--connections", "1",
		// Calls in flight at the end finish: they are not failures.
		"--duration-stop", "wait", "--format", "json", addr)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return loadCall{}, fmt.Errorf("ghz %s: %w: %s", method, err, bytes.TrimSpace(errOut.Bytes()))
	}
	var rep struct {
		Count   uint64         `json:"count"`
		RPS     float64        `json:"rps"`
		Errors  map[string]int `json:"errorDistribution"`
		Status  map[string]int `json:"statusCodeDistribution"`
		Latency []struct {
			Percentage int           `json:"percentage"`
			Latency    time.Duration `json:"latency"`
		} `json:"latencyDistribution"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return loadCall{}, fmt.Errorf("ghz %s report: %w", method, err)
	}
	// Every call has a status code, failures included (their messages are
	// in errorDistribution too): the errors are the calls not OK.
	c := loadCall{Method: method, Count: rep.Count, RPS: round(rep.RPS, 1), Statuses: rep.Status,
		Errors: int(rep.Count) - rep.Status["OK"], Failures: rep.Errors}
	for _, l := range rep.Latency {
		switch l.Percentage {
		case 50:
			c.P50Millis = round(float64(l.Latency)/1e6, 2)
		case 99:
			c.P99Millis = round(float64(l.Latency)/1e6, 2)
		}
	}
	return c, nil
}
