package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/metrics"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

const (
	tenantA = "11111111-1111-1111-1111-111111111111"
	tenantB = "22222222-2222-2222-2222-222222222222" // in the pool, no scheduler yet
	app1    = "aaaaaaaa-0000-0000-0000-000000000001"
	app2    = "aaaaaaaa-0000-0000-0000-000000000002"
	app3    = "bbbbbbbb-0000-0000-0000-000000000003"
)

var at = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

type fakePool []pool.Info

func (p fakePool) List(tenantID string) []pool.Info {
	if tenantID != "" {
		panic("the collector lists every tenant at once")
	}
	return p
}

type fakeSchedulers map[string]scheduler.TenantStats

func (f fakeSchedulers) TenantStats(t string) (scheduler.TenantStats, bool) {
	st, ok := f[t]
	return st, ok
}

type fakeJobs struct {
	counts map[jobs.State]int
	totals map[string]jobs.Progress
}

func (f fakeJobs) StateCounts() map[jobs.State]int  { return f.counts }
func (f fakeJobs) Totals() map[string]jobs.Progress { return f.totals }

func fixture() *metrics.Collector {
	p := fakePool{
		{TenantID: tenantA, ClientID: app1, NotAfter: at.Add(30 * 24 * time.Hour), TokenFailures: 0},
		{TenantID: tenantA, ClientID: app2, NotAfter: at.Add(time.Hour), TokenFailures: 3},
		{TenantID: tenantB, ClientID: app3, NotAfter: at, TokenFailures: 1},
	}
	s := fakeSchedulers{tenantA: {
		At: at,
		Apps: map[string]scheduler.AppStats{
			app1: {ClientID: app1, InRotation: true, Requests: 120, RULastMinute: 40, RULast24h: 900,
				Throttled: 3, Throttled429: 2, Throttled503: 1, CooldownUntil: at.Add(1500 * time.Millisecond), RatePerMinute: 625},
			app2: {ClientID: app2, InRotation: false, Requests: 7, RULastMinute: 0, RULast24h: 14, RatePerMinute: 1250},
		},
		Requests: 110, Attempts: 127, Retries: 17, Failed: 2, Throttled: 3, Violations: 0, Queued: 5,
		RULastMinute: 40, RULast5Min: 300, RULast24h: 914,
		PausedUntil:  at.Add(-time.Second), // past: not paused
		SharedBudget: true, SharedLimit: 1250, RatePerMinute: 9375,
		Distributed: true, DistributedUp: false, RemoteCooldowns: 4,
	}}
	j := fakeJobs{
		counts: map[jobs.State]int{jobs.Running: 2, jobs.Queued: 1, jobs.Succeeded: 40, jobs.Failed: 1},
		totals: map[string]jobs.Progress{tenantA: {ItemsBackedUp: 1000, ItemsFailed: 4, ItemsDeleted: 9, BytesDownloaded: 5 << 20, BytesStored: 3 << 20}},
	}
	return metrics.New(p, s, j)
}

func TestCollectorValues(t *testing.T) {
	c := fixture()
	// The expected exposition, metric by metric; HELP lines must match too.
	expected := map[string]string{
		"backup_proxy_app_requests_total": `
# HELP backup_proxy_app_requests_total HTTP requests sent with the application, a followed download included.
# TYPE backup_proxy_app_requests_total counter
backup_proxy_app_requests_total{app="` + app1 + `",tenant="` + tenantA + `"} 120
backup_proxy_app_requests_total{app="` + app2 + `",tenant="` + tenantA + `"} 7
`,
		"backup_proxy_app_throttled_total": `
# HELP backup_proxy_app_throttled_total 429 and 503 answers the application got, $batch sub-requests included, by status code.
# TYPE backup_proxy_app_throttled_total counter
backup_proxy_app_throttled_total{app="` + app1 + `",code="429",tenant="` + tenantA + `"} 2
backup_proxy_app_throttled_total{app="` + app1 + `",code="503",tenant="` + tenantA + `"} 1
backup_proxy_app_throttled_total{app="` + app2 + `",code="429",tenant="` + tenantA + `"} 0
backup_proxy_app_throttled_total{app="` + app2 + `",code="503",tenant="` + tenantA + `"} 0
`,
		"backup_proxy_app_cooldown_remaining_seconds": `
# HELP backup_proxy_app_cooldown_remaining_seconds Seconds until the application may send again after Retry-After or RateLimit-Reset; 0 when not cooling down.
# TYPE backup_proxy_app_cooldown_remaining_seconds gauge
backup_proxy_app_cooldown_remaining_seconds{app="` + app1 + `",tenant="` + tenantA + `"} 1.5
backup_proxy_app_cooldown_remaining_seconds{app="` + app2 + `",tenant="` + tenantA + `"} 0
`,
		"backup_proxy_app_in_rotation": `
# HELP backup_proxy_app_in_rotation 1 if the scheduler may send requests with the application, 0 if it is out (certificate invalid, token requests failing).
# TYPE backup_proxy_app_in_rotation gauge
backup_proxy_app_in_rotation{app="` + app1 + `",tenant="` + tenantA + `"} 1
backup_proxy_app_in_rotation{app="` + app2 + `",tenant="` + tenantA + `"} 0
`,
		"backup_proxy_app_token_failures_total": `
# HELP backup_proxy_app_token_failures_total Failed token requests of the application to Microsoft Entra.
# TYPE backup_proxy_app_token_failures_total counter
backup_proxy_app_token_failures_total{app="` + app1 + `",tenant="` + tenantA + `"} 0
backup_proxy_app_token_failures_total{app="` + app2 + `",tenant="` + tenantA + `"} 3
backup_proxy_app_token_failures_total{app="` + app3 + `",tenant="` + tenantB + `"} 1
`,
		"backup_proxy_tenant_pause_remaining_seconds": `
# HELP backup_proxy_tenant_pause_remaining_seconds Seconds until the tenant-wide pause (a 429 without RateLimit headers, or a shared bucket's) ends; 0 when not paused.
# TYPE backup_proxy_tenant_pause_remaining_seconds gauge
backup_proxy_tenant_pause_remaining_seconds{tenant="` + tenantA + `"} 0
`,
		"backup_proxy_jobs": `
# HELP backup_proxy_jobs Jobs in the job database by state.
# TYPE backup_proxy_jobs gauge
backup_proxy_jobs{state="cancelled"} 0
backup_proxy_jobs{state="failed"} 1
backup_proxy_jobs{state="partially_succeeded"} 0
backup_proxy_jobs{state="queued"} 1
backup_proxy_jobs{state="running"} 2
backup_proxy_jobs{state="succeeded"} 40
`,
		"backup_proxy_downloaded_bytes_total": `
# HELP backup_proxy_downloaded_bytes_total Bytes of file content downloaded since the agent started.
# TYPE backup_proxy_downloaded_bytes_total counter
backup_proxy_downloaded_bytes_total{tenant="` + tenantA + `"} 5.24288e+06
`,
	}
	for name, want := range expected {
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// Single values, by the metric alone.
	single := []struct {
		name string
		want float64
	}{
		{"backup_proxy_tenant_requests_total", 110},
		{"backup_proxy_tenant_attempts_total", 127},
		{"backup_proxy_tenant_retries_total", 17},
		{"backup_proxy_tenant_failures_total", 2},
		{"backup_proxy_tenant_throttled_total", 3},
		{"backup_proxy_tenant_retry_after_violations_total", 0},
		{"backup_proxy_tenant_queued_requests", 5},
		{"backup_proxy_tenant_ru_last_minute", 40},
		{"backup_proxy_tenant_ru_last_5m", 300},
		{"backup_proxy_tenant_ru_last_24h", 914},
		{"backup_proxy_tenant_pacing_rate_ru_per_minute", 9375},
		{"backup_proxy_tenant_shared_budget", 1},
		{"backup_proxy_tenant_shared_limit_ru_per_minute", 1250},
		{"backup_proxy_shared_budget_up", 0},
		{"backup_proxy_shared_budget_remote_cooldowns_total", 4},
		{"backup_proxy_items_backed_up_total", 1000},
		{"backup_proxy_items_failed_total", 4},
		{"backup_proxy_items_deleted_total", 9},
		{"backup_proxy_stored_bytes_total", 3 << 20},
	}
	for _, s := range single {
		if n := testutil.CollectAndCount(c, s.name); n != 1 {
			t.Errorf("%s: %d series, want 1", s.name, n)
			continue
		}
		got := testutil.ToFloat64(filtered{c, s.name})
		if got != s.want {
			t.Errorf("%s = %v, want %v", s.name, got, s.want)
		}
	}

	// Per-app series exist only for tenants whose scheduler runs.
	for name, want := range map[string]int{
		"backup_proxy_app_ru_last_minute":                       2,
		"backup_proxy_app_ru_last_24h":                          2,
		"backup_proxy_app_pacing_rate_ru_per_minute":            2,
		"backup_proxy_app_certificate_expiry_timestamp_seconds": 3,
	} {
		if n := testutil.CollectAndCount(c, name); n != want {
			t.Errorf("%s: %d series, want %d", name, n, want)
		}
	}
}

// filtered collects one metric of a collector, for ToFloat64.
type filtered struct {
	c    *metrics.Collector
	name string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { f.c.Collect(all); close(all) }()
	for m := range all {
		if strings.Contains(m.Desc().String(), `fqName: "`+f.name+`"`) {
			ch <- m
		}
	}
}

func TestSharedLimitOnlyWhileShared(t *testing.T) {
	c := metrics.New(fakePool{{TenantID: tenantA, ClientID: app1}}, fakeSchedulers{tenantA: {At: at, SharedLimit: 1250}},
		fakeJobs{})
	if n := testutil.CollectAndCount(c, "backup_proxy_tenant_shared_limit_ru_per_minute"); n != 0 {
		t.Errorf("%d shared limit series while not shared", n)
	}
	if got := testutil.ToFloat64(filtered{c, "backup_proxy_tenant_shared_budget"}); got != 0 {
		t.Errorf("shared budget = %v", got)
	}
}

func TestCollectorLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(fixture())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestRegistryAndServer(t *testing.T) {
	reg, err := metrics.NewRegistry(fixture())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "backup_proxy_jobs"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n == 0 {
			t.Errorf("%s: %d series, %v", name, n, err)
		}
	}

	srv := metrics.NewServer(zap.NewNop(), reg)
	if srv.ReadHeaderTimeout <= 0 {
		t.Error("no ReadHeaderTimeout")
	}
	ts := httptest.NewServer(srv.Handler)
	defer ts.Close()
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/metrics", http.StatusOK},
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/debug/pprof/", http.StatusNotFound},
		{http.MethodPost, "/metrics", http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tt.method, ts.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s: %s", tt.method, tt.path, resp.Status)
		}
		if tt.status == http.StatusOK && !strings.Contains(string(body), `backup_proxy_app_requests_total{app="`+app1+`",tenant="`+tenantA+`"} 120`) {
			t.Errorf("/metrics lacks the app's requests:\n%s", body)
		}
	}
}

// TestREADMEListsEveryMetric keeps the README's Metrics table in step with
// the collector.
func TestREADMEListsEveryMetric(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc)
	go func() { fixture().Describe(ch); close(ch) }()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	n := 0
	for d := range ch {
		name := fqName.FindStringSubmatch(d.String())[1]
		if !strings.Contains(string(readme), "| `"+name+"` |") {
			t.Errorf("README.md does not list %s", name)
		}
		n++
	}
	if n < 25 {
		t.Errorf("only %d metrics described", n)
	}
}
