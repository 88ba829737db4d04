package backup

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/graph"
	"github.com/backup-proxy/backup-proxy/internal/version"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// TenantsConfig configures Tenants.
type TenantsConfig struct {
	// GraphURL is Microsoft Graph's base URL without version.
	GraphURL string
	// Transport carries requests to Microsoft (it decides which CAs are trusted).
	Transport http.RoundTripper
	// Scheduler is the configuration every tenant's scheduler starts from.
	Scheduler scheduler.Config
	// Shared, if set, returns the budget a tenant's scheduler shares with
	// the other agents backing up that tenant (Scheduler.Shared).
	Shared func(tenantID string) scheduler.SharedBudget
	// SharedState, if set, hears when a tenant's shared budget stops or
	// starts answering (Scheduler.SharedState).
	SharedState func(tenantID string, up bool)
}

// Tenants holds one scheduler and one Graph client per tenant, created on
// first use: every Graph request of a tenant, of every job, goes through
// that tenant's scheduler.
type Tenants struct {
	log  *zap.Logger
	pool *pool.Pool
	cfg  TenantsConfig

	mu sync.Mutex
	m  map[string]*Tenant
}

// Tenant is a tenant's scheduler and the Graph client that uses it.
type Tenant struct {
	Scheduler *scheduler.Scheduler
	Graph     *graph.Client
}

// NewTenants returns the per-tenant registry over the application pool.
func NewTenants(log *zap.Logger, p *pool.Pool, cfg TenantsConfig) *Tenants {
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	return &Tenants{log: log, pool: p, cfg: cfg, m: map[string]*Tenant{}}
}

// Tenant returns a tenant's scheduler and Graph client. It fails with
// pool.ErrNoUsableApp when the pool holds no application of the tenant.
func (t *Tenants) Tenant(tenantID string) (*Tenant, error) {
	if err := t.CheckTenant(tenantID); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tc, ok := t.m[tenantID]; ok {
		return tc, nil
	}
	cfg := t.cfg.Scheduler
	if t.cfg.Shared != nil {
		cfg.Shared = t.cfg.Shared(tenantID)
		if f := t.cfg.SharedState; f != nil {
			cfg.SharedState = func(up bool) { f(tenantID, up) }
		}
	}
	sched := scheduler.New(t.log.With(zap.String("tenant_id", tenantID)), cfg, scheduler.PoolApps(t.pool, tenantID), t.cfg.Transport)
	client, err := graph.New(&http.Client{
		Transport: sched,
		// The scheduler follows download redirects itself, with the app
		// that obtained the URL; nothing else should redirect.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, t.cfg.GraphURL)
	if err != nil {
		return nil, err
	}
	tc := &Tenant{Scheduler: sched, Graph: client}
	t.m[tenantID] = tc
	return tc, nil
}

// Close stops the schedulers' shared-budget goroutines. Call it after the
// jobs have stopped.
func (t *Tenants) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tc := range t.m {
		tc.Scheduler.Close()
	}
}

// Client implements Clients.
func (t *Tenants) Client(_ context.Context, tenantID string) (*graph.Client, error) {
	tc, err := t.Tenant(tenantID)
	if err != nil {
		return nil, err
	}
	return tc.Graph, nil
}

// JobStats returns what the tenant's scheduler counted for a job.
func (t *Tenants) JobStats(tenantID, jobID string) scheduler.JobStats {
	t.mu.Lock()
	tc, ok := t.m[tenantID]
	t.mu.Unlock()
	if !ok {
		return scheduler.JobStats{}
	}
	return tc.Scheduler.JobStats(jobID)
}

// ForgetJob drops the scheduler's counters of an ended job.
func (t *Tenants) ForgetJob(tenantID, jobID string) {
	t.mu.Lock()
	tc, ok := t.m[tenantID]
	t.mu.Unlock()
	if ok {
		tc.Scheduler.ForgetJob(jobID)
	}
}

// TenantStats returns the statistics of a tenant's scheduler, if it is in use.
func (t *Tenants) TenantStats(tenantID string) (scheduler.TenantStats, bool) {
	t.mu.Lock()
	tc, ok := t.m[tenantID]
	t.mu.Unlock()
	if !ok {
		return scheduler.TenantStats{}, false
	}
	return tc.Scheduler.Stats(), true
}

// CheckTenant fails unless the pool has a usable application of the tenant.
func (t *Tenants) CheckTenant(tenantID string) error {
	apps := t.pool.Apps(tenantID)
	if len(apps) == 0 {
		return fmt.Errorf("tenant %s has no application in the pool; add one with PoolService.AddApplication: %w", tenantID, pool.ErrNoUsableApp)
	}
	if !slices.ContainsFunc(apps, (*pool.App).Usable) {
		return fmt.Errorf("tenant %s: none of its %d applications can obtain a token now (see ListApplications): %w", tenantID, len(apps), pool.ErrNoUsableApp)
	}
	return nil
}

// RegisterApplication registers a new backup application in the tenant's
// Entra through its organization app (the only app with the directory
// permissions to do so) and returns its client id.
func (t *Tenants) RegisterApplication(ctx context.Context, tenantID, displayName string, cert *x509.Certificate) (string, error) {
	apps := t.pool.Apps(tenantID)
	if len(apps) == 0 || !apps[0].Organization() {
		return "", fmt.Errorf("tenant %s has no organization app to register applications with: %w", tenantID, pool.ErrNoUsableApp)
	}
	client, err := graph.New(&http.Client{Transport: &bearer{app: apps[0], base: t.cfg.Transport, company: t.cfg.Scheduler.Company}}, t.cfg.GraphURL)
	if err != nil {
		return "", err
	}
	return client.RegisterApplication(ctx, displayName, cert)
}

// bearer authenticates directory requests as one application. Directory
// calls are not metered by SharePoint, so they bypass the scheduler.
type bearer struct {
	app     *pool.App
	base    http.RoundTripper
	company string
}

func (b *bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := b.app.Token(req.Context())
	if err != nil {
		return nil, err
	}
	company := b.company
	if company == "" {
		company = "backup-proxy"
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("User-Agent", "ISV|"+company+"|backup-proxy/"+version.Version)
	return b.base.RoundTrip(req)
}
