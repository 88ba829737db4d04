// Package metrics exposes the agent to Prometheus. Its Collector reads
// snapshots of the application pool, the tenants' schedulers and the job
// manager when scraped, so the request paths carry no instrumentation and a
// scrape costs a few locked copies. Labels: tenant (the tenant id) and app
// (the application's client id, which is not a secret); nothing else a
// snapshot holds (tokens, certificates, URLs) is exported.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// Pool lists the applications of every tenant (pool.Pool).
type Pool interface {
	// List returns every tenant's applications when tenantID is empty.
	List(tenantID string) []pool.Info
}

// Schedulers reads a tenant's scheduler (backup.Tenants): false until the
// tenant's first request.
type Schedulers interface {
	TenantStats(tenantID string) (scheduler.TenantStats, bool)
}

// Jobs reads the job manager (jobs.Manager).
type Jobs interface {
	StateCounts() map[jobs.State]int
	Totals() map[string]jobs.Progress
}

const namespace = "backup_proxy"

var (
	appLabels    = []string{"tenant", "app"}
	tenantLabels = []string{"tenant"}
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
}

// Collector is a prometheus.Collector over the agent's snapshots.
type Collector struct {
	pool   Pool
	sched  Schedulers
	jobs   Jobs
	byName map[string]*prometheus.Desc
}

// descs are the metrics, by name without the namespace. README.md lists
// them; keep the two in step.
var descs = []struct {
	name, help string
	labels     []string
}{
	// Per application: the scheduler's view.
	{"app_requests_total", "HTTP requests sent with the application, a followed download included.", appLabels},
	{"app_throttled_total", "429 and 503 answers the application got, $batch sub-requests included, by status code.", []string{"tenant", "app", "code"}},
	{"app_ru_last_minute", "Resource units charged to the application in the last minute.", appLabels},
	{"app_ru_last_24h", "Resource units charged to the application in the last 24 hours.", appLabels},
	{"app_cooldown_remaining_seconds", "Seconds until the application may send again after Retry-After or RateLimit-Reset; 0 when not cooling down.", appLabels},
	{"app_pacing_rate_ru_per_minute", "The rate the scheduler currently paces the application at, in resource units per minute.", appLabels},
	{"app_in_rotation", "1 if the scheduler may send requests with the application, 0 if it is out (certificate invalid, token requests failing).", appLabels},
	// Per application: the pool's view.
	{"app_token_failures_total", "Failed token requests of the application to Microsoft Entra.", appLabels},
	{"app_certificate_expiry_timestamp_seconds", "When the application's certificate expires, in Unix seconds.", appLabels},
	// Per tenant.
	{"tenant_requests_total", "Graph requests of the tenant made through the scheduler.", tenantLabels},
	{"tenant_attempts_total", "Attempts of those requests, retries included.", tenantLabels},
	{"tenant_retries_total", "Attempts after the first.", tenantLabels},
	{"tenant_failures_total", "Requests that failed after the scheduler's retries.", tenantLabels},
	{"tenant_throttled_total", "429 and 503 answers of all the tenant's applications.", tenantLabels},
	{"tenant_retry_after_violations_total", "Requests granted inside a known Retry-After window: a bug counter, 0 by construction.", tenantLabels},
	{"tenant_queued_requests", "Requests waiting for a slot.", tenantLabels},
	{"tenant_ru_last_minute", "Resource units charged to all the tenant's applications in the last minute.", tenantLabels},
	{"tenant_ru_last_5m", "Resource units charged in the last 5 minutes: what counts against the tenant's bucket.", tenantLabels},
	{"tenant_ru_last_24h", "Resource units charged to all the tenant's applications in the last 24 hours.", tenantLabels},
	{"tenant_pacing_rate_ru_per_minute", "The rate the tenant limiter (the backups' share of the tenant bucket) currently paces at, in resource units per minute.", tenantLabels},
	{"tenant_pause_remaining_seconds", "Seconds until the tenant-wide pause (a 429 without RateLimit headers, or a shared bucket's) ends; 0 when not paused.", tenantLabels},
	{"tenant_shared_budget", "1 if the applications were found to share one bucket and are scheduled as one budget.", tenantLabels},
	{"tenant_shared_limit_ru_per_minute", "The shared bucket's resource units per minute; only while tenant_shared_budget is 1.", tenantLabels},
	// Per tenant, with several agents sharing one budget (serve --budget-redis).
	{"shared_budget_up", "1 while the budget shared with other agents (Redis) answers, 0 while this agent works on its fallback share; absent without --budget-redis.", tenantLabels},
	{"shared_budget_remote_cooldowns_total", "Cooldowns (Retry-After, tenant pauses) other agents received and this agent honoured; absent without --budget-redis.", tenantLabels},
	// Jobs.
	{"jobs", "Jobs in the job database by state.", []string{"state"}},
	{"items_backed_up_total", "Items recorded in restore points being made (files and folders, unchanged ones included) since the agent started.", tenantLabels},
	{"items_failed_total", "Items that could not be backed up since the agent started.", tenantLabels},
	{"items_deleted_total", "Deletions recorded since the agent started.", tenantLabels},
	{"downloaded_bytes_total", "Bytes of file content downloaded since the agent started.", tenantLabels},
	{"stored_bytes_total", "Bytes added to the repository (new chunks, compressed and encrypted) since the agent started.", tenantLabels},
}

// New returns a collector over the pool, the schedulers and the jobs.
func New(p Pool, s Schedulers, j Jobs) *Collector {
	c := &Collector{pool: p, sched: s, jobs: j, byName: make(map[string]*prometheus.Desc, len(descs))}
	for _, d := range descs {
		c.byName[d.name] = desc(d.name, d.help, d.labels...)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descs {
		ch <- c.byName[d.name]
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	emit := func(name string, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.byName[name], t, v, labels...)
	}
	counter := func(name string, v int64, labels ...string) {
		emit(name, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(name string, v float64, labels ...string) { emit(name, prometheus.GaugeValue, v, labels...) }

	var tenants []string
	seen := map[string]bool{}
	for _, a := range c.pool.List("") {
		counter("app_token_failures_total", a.TokenFailures, a.TenantID, a.ClientID)
		gauge("app_certificate_expiry_timestamp_seconds", float64(a.NotAfter.Unix()), a.TenantID, a.ClientID)
		if !seen[a.TenantID] {
			seen[a.TenantID] = true
			tenants = append(tenants, a.TenantID)
		}
	}
	for _, t := range tenants {
		st, ok := c.sched.TenantStats(t)
		if !ok {
			continue
		}
		for id, a := range st.Apps {
			counter("app_requests_total", a.Requests, t, id)
			counter("app_throttled_total", a.Throttled429, t, id, "429")
			counter("app_throttled_total", a.Throttled503, t, id, "503")
			gauge("app_ru_last_minute", float64(a.RULastMinute), t, id)
			gauge("app_ru_last_24h", float64(a.RULast24h), t, id)
			gauge("app_cooldown_remaining_seconds", remaining(st.At, a.CooldownUntil), t, id)
			gauge("app_pacing_rate_ru_per_minute", a.RatePerMinute, t, id)
			gauge("app_in_rotation", boolValue(a.InRotation), t, id)
		}
		counter("tenant_requests_total", st.Requests, t)
		counter("tenant_attempts_total", st.Attempts, t)
		counter("tenant_retries_total", st.Retries, t)
		counter("tenant_failures_total", st.Failed, t)
		counter("tenant_throttled_total", st.Throttled, t)
		counter("tenant_retry_after_violations_total", st.Violations, t)
		gauge("tenant_queued_requests", float64(st.Queued), t)
		gauge("tenant_ru_last_minute", float64(st.RULastMinute), t)
		gauge("tenant_ru_last_5m", float64(st.RULast5Min), t)
		gauge("tenant_ru_last_24h", float64(st.RULast24h), t)
		gauge("tenant_pacing_rate_ru_per_minute", st.RatePerMinute, t)
		gauge("tenant_pause_remaining_seconds", remaining(st.At, st.PausedUntil), t)
		gauge("tenant_shared_budget", boolValue(st.SharedBudget), t)
		if st.SharedBudget {
			gauge("tenant_shared_limit_ru_per_minute", float64(st.SharedLimit), t)
		}
		if st.Distributed {
			gauge("shared_budget_up", boolValue(st.DistributedUp), t)
			counter("shared_budget_remote_cooldowns_total", st.RemoteCooldowns, t)
		}
	}

	counts := c.jobs.StateCounts()
	for _, s := range jobs.States {
		gauge("jobs", float64(counts[s]), string(s))
	}
	for t, p := range c.jobs.Totals() {
		counter("items_backed_up_total", p.ItemsBackedUp, t)
		counter("items_failed_total", p.ItemsFailed, t)
		counter("items_deleted_total", p.ItemsDeleted, t)
		counter("downloaded_bytes_total", p.BytesDownloaded, t)
		counter("stored_bytes_total", p.BytesStored, t)
	}
}

// remaining is the time from at until until in seconds, 0 if it is past.
// Both are on the scheduler's clock, which is time-scaled in simulations.
func remaining(at, until time.Time) float64 {
	if until.IsZero() || !until.After(at) {
		return 0
	}
	return until.Sub(at).Seconds()
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewRegistry returns a registry of its own (never the global one, which
// any imported package may fill) with c and the Go runtime and process
// collectors.
func NewRegistry(c *Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// NewServer returns an HTTP server that serves g at /metrics and nothing
// else. Its timeouts bound what a slow or idle client can hold; a scrape
// is small and quick.
func NewServer(log *zap.Logger, g prometheus.Gatherer) *http.Server {
	log = log.Named("metrics")
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(log),
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log),
	}
}
