package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/agent"
	"github.com/backup-proxy/backup-proxy/agent/backup"
	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/metrics"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/repo"
	"github.com/backup-proxy/backup-proxy/scheduler"
	"github.com/backup-proxy/backup-proxy/scheduler/redisbudget"
)

// agentConfig is what assembling an agent needs; serve fills it from flags,
// demo and tests from their own settings.
type agentConfig struct {
	dataDir         string
	graphURL        string
	loginURL        string
	roots           *x509.CertPool // nil: system roots
	maxJobs         int
	maxQueuedJobs   int
	downloadsPerJob int
	folderCache     int // folder paths a crawl keeps in memory; 0: the engine's default
	scheduler       scheduler.Config
	security        agent.Security // zero: plaintext, every caller trusted
	// rpcRate and rpcBurst bound each caller's RPCs; zero rate: no limit,
	// which suits demo and tests driving the agent from one process.
	rpcRate  float64
	rpcBurst int
	// budgetRedis is the redis:// URL of the budget shared with other
	// agents (serve --budget-redis); empty: everything in process.
	budgetRedis string
	// repo says where the repository's objects and leases live.
	repo repoConfig
}

// assembled is a running agent's parts.
type assembled struct {
	log      *zap.Logger
	pool     *pool.Pool
	repo     *repo.Repository
	tenants  *backup.Tenants
	jobs     *jobs.Manager
	server   *agent.Server
	metrics  *prometheus.Registry // served by serve --metrics-listen
	redis    *redis.Client        // the shared budget's, if any
	leases   *redis.Client        // the repository's leases', if any
	stopSync func()               // stops the repository's periodic Sync, if any
	shared   *sharedHealth
}

// sharedHealth folds the tenants' shared-budget states into the health
// service: NOT_SERVING while any tenant works on its fallback share.
type sharedHealth struct {
	mu     sync.Mutex
	down   map[string]bool
	server *agent.Server // set once assembled; states before go to the log only
}

func (h *sharedHealth) set(tenantID string, up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if up {
		delete(h.down, tenantID)
	} else {
		h.down[tenantID] = true
	}
	if h.server != nil {
		h.server.SetSharedBudgetHealth(len(h.down) == 0)
	}
}

func (h *sharedHealth) attach(s *agent.Server) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.server = s
	s.SetSharedBudgetHealth(len(h.down) == 0)
}

// assemble opens the data directory's pool, repository and job database and
// wires them to the gRPC services. The caller serves a.server and calls close.
func assemble(log *zap.Logger, cfg agentConfig) (*assembled, error) {
	a := &assembled{log: log}
	ok := false
	defer func() {
		if !ok {
			a.close(context.Background())
		}
	}()

	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{RootCAs: cfg.roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	var err error
	a.pool, err = pool.Open(log, pool.Config{
		Dir:        filepath.Join(cfg.dataDir, "pool"),
		LoginURL:   cfg.loginURL,
		HTTPClient: &http.Client{Transport: transport, Timeout: time.Minute},
	})
	if err != nil {
		return nil, fmt.Errorf("application pool: %w", err)
	}
	if cfg.repo.leaseTTL == 0 {
		cfg.repo.leaseTTL = time.Minute
	}
	a.repo, a.leases, err = openRepository(context.Background(), log, filepath.Join(cfg.dataDir, "repository"), cfg.repo, true, false)
	if err != nil {
		return nil, err
	}
	if cfg.repo.s3 != "" && cfg.repo.syncInterval > 0 {
		a.stopSync = syncPeriodically(log, a.repo, cfg.repo.syncInterval)
	}
	tc := backup.TenantsConfig{GraphURL: cfg.graphURL, Transport: transport, Scheduler: cfg.scheduler}
	if cfg.budgetRedis != "" {
		redisbudget.SetLogger(log)
		if a.redis, err = redisbudget.Client(cfg.budgetRedis); err != nil {
			return nil, fmt.Errorf("--budget-redis: %w", err)
		}
		// Unreachable now is not fatal: the schedulers start on their
		// fallback share and share once Redis answers.
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := a.redis.Ping(pctx).Err(); err != nil {
			log.Warn("shared budget: Redis does not answer yet; agents work on their fallback share until it does",
				zap.String("redis", a.redis.Options().Addr), zap.Error(err))
		} else {
			log.Info("shared budget in Redis", zap.String("redis", a.redis.Options().Addr))
		}
		cancel()
		budget := redisbudget.New(log, a.redis, "")
		a.shared = &sharedHealth{down: map[string]bool{}}
		tc.Shared = func(tenantID string) scheduler.SharedBudget { return budget.Tenant(tenantID) }
		tc.SharedState = a.shared.set
	}
	a.tenants = backup.NewTenants(log.Named("scheduler"), a.pool, tc)
	engine := backup.New(log, backup.Config{Downloads: cfg.downloadsPerJob, FolderCache: cfg.folderCache}, a.repo, a.tenants)
	a.jobs, err = jobs.Open(log, jobs.Config{
		Path:        filepath.Join(cfg.dataDir, "jobs.db"),
		MaxRunning:  cfg.maxJobs,
		MaxQueued:   cfg.maxQueuedJobs,
		Runner:      engine,
		CheckTenant: a.tenants.CheckTenant,
	})
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	if a.metrics, err = metrics.NewRegistry(metrics.New(a.pool, a.tenants, a.jobs)); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	limits := agent.DefaultLimits()
	limits.RPCRate, limits.RPCBurst = cfg.rpcRate, cfg.rpcBurst
	a.server = agent.NewServer(log, limits, cfg.security, agent.Services{
		Agent: agent.NewInfoService(agent.InfoConfig{
			Start:             time.Now(),
			MaxConcurrentJobs: cfg.maxJobs,
			MaxQueuedJobs:     cfg.maxQueuedJobs,
			Jobs:              a.jobs,
			Tenants:           a.pool,
			Repository:        a.repo,
		}),
		Pool:    agent.NewPoolService(a.pool, a.jobs, a.tenants, a.tenants),
		Job:     agent.NewJobService(a.jobs),
		Catalog: agent.NewCatalogService(a.repo, backup.SourceKey),
	})
	if a.shared != nil {
		a.shared.attach(a.server)
	}
	ok = true
	return a, nil
}

// close stops the jobs (they resume after a restart) and closes the stores.
func (a *assembled) close(ctx context.Context) error {
	var errs []error
	if a.jobs != nil {
		errs = append(errs, a.jobs.Close(ctx))
	}
	if a.tenants != nil {
		a.tenants.Close()
	}
	if a.redis != nil {
		errs = append(errs, a.redis.Close())
	}
	if a.stopSync != nil {
		a.stopSync()
	}
	if a.repo != nil {
		errs = append(errs, a.repo.Close())
	}
	if a.leases != nil {
		errs = append(errs, a.leases.Close())
	}
	return errors.Join(errs...)
}
