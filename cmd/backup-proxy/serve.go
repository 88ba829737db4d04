package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/backup-proxy/backup-proxy/agent"
	"github.com/backup-proxy/backup-proxy/agent/auth"
	"github.com/backup-proxy/backup-proxy/internal/version"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// serveConfig is the validated configuration of `serve`.
type serveConfig struct {
	listen          string
	dataDir         string
	logLevel        zapcore.Level
	logFormat       string
	metricsListen   string // host:port of the Prometheus endpoint; empty: none
	graphURL        *url.URL
	loginURL        *url.URL
	caFile          string
	roots           *x509.CertPool // system roots plus --ca-file; nil when no --ca-file
	maxJobs         int
	maxQueuedJobs   int
	downloadsPerJob int
	tenantShare     float64
	licenses        int
	limits          scheduler.Limits // overrides of the tier's limits; zero fields keep the tier's
	company         string
	memoryLimit     int64 // soft limit of the Go heap in bytes; 0: none
	gcPercent       int   // the garbage collector's target (GOGC)
	shutdownTimeout time.Duration

	tlsCertFile       string
	tlsKeyFile        string
	clientCAFile      string
	tokenFile         string
	insecureOnNetwork bool           // --insecure-plaintext-on-network
	security          agent.Security // loaded from the files above
	rpcRate           float64
	rpcBurst          int

	budgetRedis   string // redis:// URL of the budget shared with other agents; empty: in process
	repo          repoConfig
	fallbackShare float64 // share of the limits while that Redis is unreachable
	simTimeScale  float64 // graphsim's TimeScale, for benchmarks; 1 against Microsoft
}

// parseServeFlags parses and validates the flags of `serve`. Every problem is
// reported in words an operator can act on.
func parseServeFlags(args []string, stderr io.Writer) (*serveConfig, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      serveConfig
		level    string
		graphURL string
		loginURL string
	)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:50051", "gRPC listen address (host:port)")
	fs.StringVar(&cfg.dataDir, "data", "backup-proxy-data", "data directory: application pool, job state and the backup repository")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&cfg.metricsListen, "metrics-listen", "", "address (host:port, e.g. 127.0.0.1:9090) to serve Prometheus metrics at /metrics; empty for none")
	fs.StringVar(&graphURL, "graph-url", "https://graph.microsoft.com", "Microsoft Graph base URL, without the version")
	fs.StringVar(&loginURL, "login-url", "https://login.microsoftonline.com", "Microsoft Entra authority host")
	fs.StringVar(&cfg.caFile, "ca-file", "", "PEM file of extra CA certificates to trust for Graph and Entra (e.g. a simulator's)")
	fs.IntVar(&cfg.maxJobs, "max-jobs", 4, "backup jobs that may run at the same time")
	fs.IntVar(&cfg.maxQueuedJobs, "max-queued-jobs", 100, "backup jobs that may wait for a slot; beyond this SubmitJob is refused")
	fs.IntVar(&cfg.downloadsPerJob, "downloads-per-job", 8, "files one job downloads at once")
	fs.Float64Var(&cfg.tenantShare, "tenant-share", 0.5, "share of each tenant's SharePoint resource budget backups may use; the rest is the production reserve (0 < F <= 1)")
	fs.IntVar(&cfg.licenses, "licenses", 1000, "licence count of the tenants, which selects Microsoft's throttling tier")
	fs.IntVar(&cfg.limits.AppPerMinute, "app-ru-per-minute", 0, "per-app RU per minute, if not the licence tier's")
	fs.IntVar(&cfg.limits.AppPer24h, "app-ru-per-day", 0, "per-app RU per 24 hours, if not the licence tier's")
	fs.IntVar(&cfg.limits.TenantPer5Min, "tenant-ru-per-5min", 0, "tenant RU per 5 minutes, if not the licence tier's")
	fs.StringVar(&cfg.company, "company", "backup-proxy", "company name in the User-Agent: ISV|<company>|backup-proxy/<version>")
	memLimit := fs.String("memory-limit", "192MiB", "soft limit of the agent's heap (KiB, MiB, GiB suffixes; 0 for none); the GOMEMLIMIT environment variable takes precedence")
	fs.IntVar(&cfg.gcPercent, "gc-percent", 50, "garbage collector target: the heap may grow this many percent above the live heap before a collection (Go's GOGC; its default is 100); the GOGC environment variable takes precedence")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight RPCs may finish on shutdown")
	fs.StringVar(&cfg.tlsCertFile, "tls-cert", "", "PEM certificate (chain) of the gRPC server; turns on TLS 1.3, and callers must then authenticate")
	fs.StringVar(&cfg.tlsKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.clientCAFile, "client-ca", "", "PEM CA certificates; every connection must present a client certificate they issued (mutual TLS), whose O values backup-proxy:read and backup-proxy:write grant the roles")
	fs.StringVar(&cfg.tokenFile, "auth-token-file", "", "file of bearer tokens, one \"<name> <roles> <token>\" a line (roles: read,write), mode 0600; accepted over TLS only")
	fs.Float64Var(&cfg.rpcRate, "rpc-rate", 200, "RPCs per second each caller may make on average; beyond it RESOURCE_EXHAUSTED (0: no limit)")
	fs.IntVar(&cfg.rpcBurst, "rpc-burst", 400, "RPCs each caller may make at once before --rpc-rate applies")
	fs.BoolVar(&cfg.insecureOnNetwork, "insecure-plaintext-on-network", false, "allow a non-loopback --listen without TLS: anyone who reaches the port controls the agent and reads its backups")
	fs.StringVar(&cfg.budgetRedis, "budget-redis", "", "redis://host:port/db of a Redis shared by all agents backing up the same tenants: together they keep to one tenant share and one set of app limits and honour each other's throttles; empty: this agent alone")
	fs.Float64Var(&cfg.fallbackShare, "budget-fallback-share", 1.0/3, "share of each limit an agent uses while --budget-redis is unreachable (about 1 / number of agents)")
	cfg.repo.flags(fs)
	fs.DurationVar(&cfg.repo.syncInterval, "repo-sync-interval", time.Minute, "with --repo-s3: how often restore points other agents committed or forgot are brought into this agent's catalogue (a job does it when it starts; 0: only then)")
	fs.Float64Var(&cfg.simTimeScale, "sim-time-scale", 1, "for benchmarks against graphsim only: its TimeScale (simulated seconds per real second); 1 against Microsoft")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := cfg.logLevel.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", level)
	}
	if cfg.logFormat != "json" && cfg.logFormat != "console" {
		return nil, fmt.Errorf("--log-format: %q is not json or console", cfg.logFormat)
	}
	listenHost, _, err := net.SplitHostPort(cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %q is not host:port: %w", cfg.listen, err)
	}
	if cfg.dataDir == "" {
		return nil, errors.New("--data: a directory is required")
	}
	if cfg.graphURL, err = parseBaseURL("--graph-url", graphURL); err != nil {
		return nil, err
	}
	if cfg.loginURL, err = parseBaseURL("--login-url", loginURL); err != nil {
		return nil, err
	}
	if cfg.caFile != "" {
		if cfg.roots, err = loadRoots(cfg.caFile); err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
	}
	if cfg.maxJobs < 1 {
		return nil, fmt.Errorf("--max-jobs: must be at least 1, got %d", cfg.maxJobs)
	}
	if cfg.maxQueuedJobs < 0 {
		return nil, fmt.Errorf("--max-queued-jobs: must not be negative, got %d", cfg.maxQueuedJobs)
	}
	if cfg.downloadsPerJob < 1 {
		return nil, fmt.Errorf("--downloads-per-job: must be at least 1, got %d", cfg.downloadsPerJob)
	}
	if cfg.tenantShare <= 0 || cfg.tenantShare > 1 {
		return nil, fmt.Errorf("--tenant-share: must be in (0, 1], got %v", cfg.tenantShare)
	}
	if cfg.licenses < 0 {
		return nil, fmt.Errorf("--licenses: must not be negative, got %d", cfg.licenses)
	}
	if cfg.limits.AppPerMinute < 0 || cfg.limits.AppPer24h < 0 || cfg.limits.TenantPer5Min < 0 {
		return nil, errors.New("--app-ru-per-minute, --app-ru-per-day, --tenant-ru-per-5min: must not be negative")
	}
	if strings.ContainsAny(cfg.company, "|\r\n") || cfg.company == "" {
		return nil, fmt.Errorf("--company: %q must be non-empty without '|' or line breaks", cfg.company)
	}
	if cfg.metricsListen != "" {
		_, port, err := net.SplitHostPort(cfg.metricsListen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			return nil, fmt.Errorf("--metrics-listen: %q is not host:port with a numeric port, e.g. 127.0.0.1:9090", cfg.metricsListen)
		}
	}
	if cfg.gcPercent < 10 && cfg.gcPercent != -1 {
		return nil, fmt.Errorf("--gc-percent: want 10 or more (or -1 for no collection but at --memory-limit), got %d", cfg.gcPercent)
	}
	if cfg.memoryLimit, err = parseBytes(*memLimit); err != nil {
		return nil, fmt.Errorf("--memory-limit: %w", err)
	}
	if cfg.shutdownTimeout <= 0 {
		return nil, fmt.Errorf("--shutdown-timeout: must be positive, got %v", cfg.shutdownTimeout)
	}
	if err := cfg.loadSecurity(listenHost); err != nil {
		return nil, err
	}
	if cfg.rpcRate < 0 {
		return nil, fmt.Errorf("--rpc-rate: must not be negative, got %v", cfg.rpcRate)
	}
	if cfg.rpcRate > 0 && cfg.rpcBurst < 1 {
		return nil, fmt.Errorf("--rpc-burst: must be at least 1, got %d", cfg.rpcBurst)
	}
	if cfg.budgetRedis != "" {
		if _, err := redis.ParseURL(cfg.budgetRedis); err != nil {
			return nil, fmt.Errorf("--budget-redis: %q is not a Redis URL like redis://127.0.0.1:6379/0 (or rediss:// for TLS): %w", cfg.budgetRedis, err)
		}
	}
	if cfg.repo.leaseRedis == "" {
		cfg.repo.leaseRedis = cfg.budgetRedis
	}
	if err := cfg.repo.parse(); err != nil {
		return nil, err
	}
	if cfg.fallbackShare <= 0 || cfg.fallbackShare > 1 {
		return nil, fmt.Errorf("--budget-fallback-share: must be in (0, 1], got %v", cfg.fallbackShare)
	}
	if cfg.simTimeScale < 1 {
		return nil, fmt.Errorf("--sim-time-scale: must be at least 1, got %v", cfg.simTimeScale)
	}
	return &cfg, nil
}

// loadSecurity checks the transport security flags against each other and
// the listen address, and loads their files into cfg.security.
func (cfg *serveConfig) loadSecurity(listenHost string) error {
	if cfg.tlsCertFile == "" {
		switch {
		case cfg.tlsKeyFile != "":
			return errors.New("--tls-key: needs --tls-cert")
		case cfg.clientCAFile != "":
			return errors.New("--client-ca: mutual TLS needs --tls-cert and --tls-key")
		case cfg.tokenFile != "":
			return errors.New("--auth-token-file: bearer tokens are only accepted over TLS; give --tls-cert and --tls-key")
		case !isLoopback(listenHost) && !cfg.insecureOnNetwork:
			return fmt.Errorf("--listen: %s is reachable from the network but TLS is off, so anyone reaching it could control the agent and read its backups; "+
				"give --tls-cert, --tls-key and --client-ca (README: Running with mutual TLS), or accept the risk with --insecure-plaintext-on-network", cfg.listen)
		}
		return nil
	}
	if cfg.tlsKeyFile == "" {
		return errors.New("--tls-cert: needs --tls-key")
	}
	if cfg.insecureOnNetwork {
		return errors.New("--insecure-plaintext-on-network: contradicts --tls-cert; drop it")
	}
	if cfg.clientCAFile == "" && cfg.tokenFile == "" {
		// TLS alone would encrypt, yet let every caller do everything.
		return errors.New("--tls-cert: with TLS every caller must authenticate; give --client-ca (client certificates), --auth-token-file (bearer tokens) or both")
	}
	cert, err := auth.LoadServerCertificate(cfg.tlsCertFile, cfg.tlsKeyFile, time.Now())
	if err != nil {
		return fmt.Errorf("--tls-cert, --tls-key: %w", err)
	}
	var clientCAs *x509.CertPool
	if cfg.clientCAFile != "" {
		if clientCAs, err = auth.LoadCertPool(cfg.clientCAFile); err != nil {
			return fmt.Errorf("--client-ca: %w", err)
		}
	}
	if cfg.tokenFile != "" {
		if cfg.security.Tokens, err = auth.LoadTokens(cfg.tokenFile); err != nil {
			return fmt.Errorf("--auth-token-file: %w", err)
		}
	}
	cfg.security.TLS = auth.ServerTLS(cert, clientCAs)
	return nil
}

// loopbackAddr reports whether a host:port listen address is on loopback.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && isLoopback(host)
}

// isLoopback reports whether a listen host is reachable from this machine
// only. Other host names are not resolved: they count as the network.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseBytes parses a byte count with an optional KiB, MiB or GiB suffix.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"", 1}}
	for _, u := range units {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a byte count such as 256MiB", s)
		}
		return n * u.mult, nil
	}
	return 0, fmt.Errorf("%q is not a byte count such as 256MiB", s)
}

// parseBaseURL accepts an https URL with a host and no path, query or
// fragment: Microsoft's clients only talk https, and paths are ours to add.
func parseBaseURL(flagName, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%s: %q must be an https URL with a host", flagName, raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s: %q must have no path, query or fragment", flagName, raw)
	}
	u.Path = ""
	return u, nil
}

// loadRoots returns the system roots plus every certificate of a PEM file.
func loadRoots(path string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return roots, nil
}

func newLogger(cfg *serveConfig, stderr io.Writer) *zap.Logger {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if cfg.logFormat == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), cfg.logLevel)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(stderr))))
}

// runServe runs the agent until ctx is cancelled (SIGINT/SIGTERM).
func runServe(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parseServeFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy serve: %v\n", err)
		return exitUsage
	}
	log := newLogger(cfg, stderr)
	defer log.Sync() //nolint:errcheck // nothing useful to do if stderr fails

	if os.Getenv("GOGC") == "" {
		// Most of what a backup allocates is garbage within the second
		// (download buffers, Graph pages, catalogue rows): at Go's 100 the
		// headroom, not the live heap, was most of the agent's anonymous
		// memory. bench memory at 225k items: 85 MiB at 100, 63 at 50,
		// for the same wall time.
		debug.SetGCPercent(cfg.gcPercent)
	}
	if cfg.memoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		// The agent's live heap is small (tens of MiB backing up a drive
		// of 225k small files: repository buffers, one delta page per
		// drive, the chunk index); the limit caps the runtime's headroom
		// above it when a large repository's index grows, and returns
		// freed memory sooner.
		debug.SetMemoryLimit(cfg.memoryLimit)
	}
	unlock, err := lockDataDir(cfg.dataDir)
	if err != nil {
		log.Error("cannot use data directory", zap.String("data", cfg.dataDir), zap.Error(err))
		return exitFailure
	}
	defer unlock()

	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Error("cannot listen", zap.String("listen", cfg.listen), zap.Error(err))
		return exitFailure
	}
	return serve(ctx, cfg, lis, log)
}

// serve assembles the agent, runs the gRPC server on lis until ctx is done,
// then shuts it down gracefully within cfg.shutdownTimeout.
func serve(ctx context.Context, cfg *serveConfig, lis net.Listener, log *zap.Logger) int {
	log.Info("starting backup-proxy",
		zap.String("version", version.Version),
		zap.String("data", cfg.dataDir),
		zap.Stringer("graph_url", cfg.graphURL),
		zap.Stringer("login_url", cfg.loginURL),
		zap.String("ca_file", cfg.caFile),
	)
	if cfg.security.TLS != nil {
		log.Info("transport security: TLS 1.3; callers authenticate",
			zap.String("tls_cert", cfg.tlsCertFile),
			zap.String("client_ca", cfg.clientCAFile),
			zap.String("auth_token_file", cfg.tokenFile),
		)
	} else if cfg.insecureOnNetwork {
		log.Warn("transport security OFF on a network address (--insecure-plaintext-on-network): anyone who reaches it controls the agent and reads its backups",
			zap.String("listen", cfg.listen))
	} else {
		log.Info("transport security off: plaintext on loopback, every local caller holds every role")
	}
	a, err := assemble(log, cfg.agentConfig())
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return exitFailure
	}
	stopMetrics, _, err := startMetrics(log, cfg.metricsListen, a.metrics)
	if err != nil {
		log.Error("cannot serve metrics", zap.String("metrics_listen", cfg.metricsListen), zap.Error(err))
		a.close(context.Background())
		return exitFailure
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.server.Serve(lis) }()

	code := exitOK
	select {
	case err := <-serveErr:
		log.Error("gRPC server failed", zap.Error(err))
		code = exitFailure
	case <-ctx.Done():
		log.Info("shutting down", zap.Duration("deadline", cfg.shutdownTimeout))
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := a.server.Shutdown(sctx); err != nil {
		log.Warn("shutdown was not graceful", zap.Error(err))
		code = max(code, exitForcedShutdown)
	}
	if code == exitOK {
		if err := <-serveErr; err != nil {
			log.Error("gRPC server failed", zap.Error(err))
			code = exitFailure
		}
	}
	// Running jobs are interrupted here; they resume after the next start.
	if err := a.close(sctx); err != nil {
		log.Error("closing", zap.Error(err))
		code = max(code, exitFailure)
	}
	if err := stopMetrics(sctx); err != nil {
		log.Warn("metrics server did not stop gracefully", zap.Error(err))
	}
	log.Info("stopped", zap.Int("exit_code", code))
	return code
}

// schedulerLimits are the licence tier's limits with the explicit overrides.
func (c *serveConfig) schedulerLimits() scheduler.Limits {
	l := scheduler.LimitsForLicenses(c.licenses)
	if c.limits.AppPerMinute > 0 {
		l.AppPerMinute = c.limits.AppPerMinute
	}
	if c.limits.AppPer24h > 0 {
		l.AppPer24h = c.limits.AppPer24h
	}
	if c.limits.TenantPer5Min > 0 {
		l.TenantPer5Min = c.limits.TenantPer5Min
	}
	return l
}

func (c *serveConfig) agentConfig() agentConfig {
	return agentConfig{
		dataDir:         c.dataDir,
		graphURL:        c.graphURL.String(),
		loginURL:        c.loginURL.String(),
		roots:           c.roots,
		maxJobs:         c.maxJobs,
		maxQueuedJobs:   c.maxQueuedJobs,
		downloadsPerJob: c.downloadsPerJob,
		security:        c.security,
		rpcRate:         c.rpcRate,
		rpcBurst:        c.rpcBurst,
		scheduler:       c.schedulerConfig(),
		budgetRedis:     c.budgetRedis,
		repo:            c.repo,
	}
}

func (c *serveConfig) schedulerConfig() scheduler.Config {
	sc := scheduler.Config{
		Company:       c.company,
		TenantShare:   c.tenantShare,
		Limits:        c.schedulerLimits(),
		FallbackShare: c.fallbackShare,
	}
	if c.simTimeScale > 1 {
		// graphsim runs its windows this much faster and states Retry-After
		// in real seconds (scheduler.Config.HeaderSecond).
		sc.Clock = scheduler.Scaled(scheduler.RealClock{}, c.simTimeScale)
		sc.HeaderSecond = time.Duration(c.simTimeScale * float64(time.Second))
	}
	return sc
}

// lockDataDir creates the data directory (0700: it will hold private keys)
// and takes an exclusive lock on it, so two agents never share one directory.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another backup-proxy process", dir)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
