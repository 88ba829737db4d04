package main

import (
	"context"
	"strconv"
	"strings"

	"go.uber.org/zap/zaptest"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// checkMetrics scrapes the agent's /metrics over loopback, from the server
// serve runs, after jobs ran: every app of the tenant sent requests, the
// item and byte counters match what the jobs report, and the page holds no
// secret (certificate or key PEM, bearer token, download URL credential).
func (e *e2e) checkMetrics(ran ...map[string]*pb.Job) {
	t := e.t
	stop, addr, err := startMetrics(zaptest.NewLogger(t), "127.0.0.1:0", e.agent.metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	page := scrape(t, "http://"+addr.String()+"/metrics")

	value := func(series string) float64 {
		t.Helper()
		for line := range strings.Lines(page) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				return f
			}
		}
		t.Errorf("/metrics lacks %s", series)
		return 0
	}
	tenant := strings.ToLower(e.sim.Tenant().ID)
	for _, app := range e.sim.Tenant().Apps {
		series := `backup_proxy_app_requests_total{app="` + strings.ToLower(app.ClientID) + `",tenant="` + tenant + `"}`
		if v := value(series); v <= 0 {
			t.Errorf("%s = %v, want requests", series, v)
		}
	}
	var items, bytes, succeeded float64
	for _, jobs := range ran {
		for _, j := range jobs {
			items += float64(j.Progress.GetItemsBackedUp())
			bytes += float64(j.Progress.GetBytesDownloaded())
			if j.State == pb.JobState_JOB_STATE_SUCCEEDED {
				succeeded++
			}
		}
	}
	for series, want := range map[string]float64{
		`backup_proxy_items_backed_up_total{tenant="` + tenant + `"}`:  items,
		`backup_proxy_downloaded_bytes_total{tenant="` + tenant + `"}`: bytes,
		`backup_proxy_jobs{state="succeeded"}`:                         succeeded,
	} {
		if got := value(series); got != want || want == 0 {
			t.Errorf("%s = %v, want %v (nonzero: the jobs did work)", series, got, want)
		}
	}
	if v := value(`backup_proxy_tenant_retry_after_violations_total{tenant="` + tenant + `"}`); v != 0 {
		t.Errorf("%v Retry-After violations", v)
	}

	secrets := []string{"-----BEGIN", "PRIVATE KEY", "Bearer", "eyJ", "tempauth"}
	for _, app := range e.sim.Tenant().Apps {
		a, err := e.agent.pool.App(tenant, app.ClientID)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := a.Token(t.Context()) // the cached token the scheduler sends
		if err != nil {
			t.Fatal(err)
		}
		key := strings.Split(string(app.Credentials[0].KeyPEM), "\n")
		secrets = append(secrets, tok, key[len(key)/2])
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(page, s) {
			t.Errorf("/metrics holds a secret (%.12s...)", s)
		}
	}
}
