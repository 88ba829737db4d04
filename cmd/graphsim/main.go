// Command graphsim runs the Microsoft Graph / Entra simulator as a
// standalone HTTPS server for demos and scripts.
//
//	graphsim --listen 127.0.0.1:0 --state DIR [--seed N --users N --sites N
//	  --files-per-drive N --apps N --licenses N --regime per-app|shared
//	  --time-scale F --no-throttle ...]
//
// On start it writes DIR/ca.pem, DIR/tenant.json and the apps' certificate
// and key PEM files, then prints exactly one line
// "graphsim listening on https://HOST:PORT". SIGINT or SIGTERM stop it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "graphsim:", err)
		os.Exit(1)
	}
}

// run serves until ctx is done.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("graphsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o        graphsim.Options
		state    = fs.String("state", "", "directory for ca.pem, tenant.json and app PEM files (required)")
		seed     = fs.Uint64("seed", 1, "seed of the generated tenant")
		regime   = fs.String("regime", "per-app", "per-app: each app has its own RU budget; shared: all apps share one")
		verbose  = fs.Bool("verbose", false, "log to stderr")
		prodLoad = fs.Float64("production-load", 0, "simulated production traffic on the tenant bucket, RU per simulated minute")
	)
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:0", "TCP address to listen on")
	fs.IntVar(&o.Users, "users", 10, "number of users")
	fs.IntVar(&o.Sites, "sites", 5, "number of SharePoint sites")
	fs.IntVar(&o.LibrariesPerSite, "libraries-per-site", 1, "document libraries per site")
	fs.IntVar(&o.FilesPerDrive, "files-per-drive", 100, "files per drive")
	fs.IntVar(&o.FoldersPerDrive, "folders-per-drive", 0, "folders per drive (default files/8)")
	fs.Int64Var(&o.MaxFileSize, "max-file-size", 0, "cap on generated file sizes in bytes (0: realistic mix up to 128 MiB)")
	fs.IntVar(&o.Apps, "apps", 1, "pre-registered apps; the first is the organization app")
	fs.IntVar(&o.Licenses, "licenses", 1000, "licence count, selects Microsoft's limits tier")
	fs.Float64Var(&o.TimeScale, "time-scale", 1, "simulated seconds per real second for throttling windows and Retry-After")
	fs.BoolVar(&o.NoThrottle, "no-throttle", false, "meter requests but never throttle")
	fs.Float64Var(&o.Throttle503Rate, "throttle-503-rate", 0.1, "share of throttled responses sent as 503 instead of 429")
	fs.DurationVar(&o.TokenLifetime, "token-lifetime", 0, "bearer token lifetime (default random 60-90m like Entra)")
	fs.DurationVar(&o.DownloadURLLifetime, "download-url-lifetime", time.Hour, "lifetime of pre-authenticated download URLs")
	fs.DurationVar(&o.DeltaTokenMaxAge, "delta-token-max-age", 0, "delta tokens older than this give 410 (0: never)")
	fs.DurationVar(&o.Latency, "latency", 0, "latency added to every Graph response")
	fs.Float64Var(&o.Faults.TransientErrorRate, "fault-5xx", 0, "share of Graph requests answered with a transient 5xx")
	fs.Float64Var(&o.Faults.ConnectionResetRate, "fault-reset", 0, "share of requests whose connection is reset")
	fs.Float64Var(&o.Faults.SlowResponseRate, "fault-slow", 0, "share of requests delayed by --fault-slow-delay")
	fs.DurationVar(&o.Faults.SlowResponseDelay, "fault-slow-delay", 2*time.Second, "delay of slow responses")
	fs.Float64Var(&o.Faults.ExpiredDownloadURLRate, "fault-expired-url", 0, "share of download URLs handed out already expired")
	fs.Float64Var(&o.Faults.DeadDeltaTokenRate, "fault-dead-delta", 0, "share of delta requests with a token answered 410")
	fs.Float64Var(&o.Faults.UnprovisionedOneDrives, "unprovisioned-onedrives", 0.1, "share of users without a OneDrive")
	fs.Float64Var(&o.Faults.MalwareRate, "malware-rate", 0, "share of files flagged as malware")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *state == "" {
		return errors.New("--state is required")
	}
	// On the command line 0 means none; in Options zero means the default.
	if o.Users == 0 {
		o.Users = -1
	}
	if o.Sites == 0 {
		o.Sites = -1
	}
	o.Seed = *seed
	o.Regime = graphsim.Regime(*regime)
	o.ProductionLoad = *prodLoad
	if o.Faults.UnprovisionedOneDrives == 0 {
		o.Faults.UnprovisionedOneDrives = -1 // explicit 0 on the command line means none
	}
	if o.Throttle503Rate == 0 {
		o.Throttle503Rate = -1
	}
	logger := zap.NewNop()
	if *verbose {
		l, err := zap.NewDevelopment()
		if err != nil {
			return fmt.Errorf("logger: %w", err)
		}
		logger = l
		defer func() { _ = logger.Sync() }()
	}
	o.Logger = logger

	srv, err := graphsim.New(o)
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.WriteState(*state); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "graphsim listening on %s\n", srv.URL())
	<-ctx.Done()
	return srv.Close()
}
