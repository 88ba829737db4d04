package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

func TestParseServeFlagsRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"log level", []string{"--log-level", "loud"}, "--log-level"},
		{"log format", []string{"--log-format", "xml"}, "--log-format"},
		{"listen", []string{"--listen", "50051"}, "--listen"},
		{"graph url http", []string{"--graph-url", "http://graph.microsoft.com"}, "--graph-url"},
		{"graph url with version", []string{"--graph-url", "https://graph.microsoft.com/v1.0"}, "no path"},
		{"login url", []string{"--login-url", "login.microsoftonline.com"}, "--login-url"},
		{"ca file missing", []string{"--ca-file", filepath.Join(dir, "missing.pem")}, "--ca-file"},
		{"ca file not pem", []string{"--ca-file", notPEM}, "no PEM certificate"},
		{"max jobs", []string{"--max-jobs", "0"}, "--max-jobs"},
		{"shutdown timeout", []string{"--shutdown-timeout", "0s"}, "--shutdown-timeout"},
		{"memory limit", []string{"--memory-limit", "lots"}, "--memory-limit"},
		{"tenant share", []string{"--tenant-share", "1.5"}, "--tenant-share"},
		{"company with bar", []string{"--company", "a|b"}, "--company"},
		{"metrics listen without port", []string{"--metrics-listen", "9090"}, "--metrics-listen"},
		{"metrics listen named port", []string{"--metrics-listen", "localhost:prometheus"}, "--metrics-listen"},
		{"stray argument", []string{"now"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseServeFlags(tt.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseServeFlags(%q) = %v, want error containing %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

func TestParseServeFlagsDefaults(t *testing.T) {
	cfg, err := parseServeFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.listen != "127.0.0.1:50051" || cfg.graphURL.String() != "https://graph.microsoft.com" ||
		cfg.loginURL.String() != "https://login.microsoftonline.com" || cfg.maxJobs != 4 || cfg.memoryLimit != 192<<20 ||
		cfg.metricsListen != "" {
		t.Errorf("defaults = %+v", cfg)
	}
}

func TestRunUsageExitCodes(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{nil, exitUsage},
		{[]string{"frobnicate"}, exitUsage},
		{[]string{"serve", "--log-level", "loud"}, exitUsage},
		{[]string{"serve", "-h"}, exitOK},
		{[]string{"version"}, exitOK},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		if got := run(context.Background(), tt.args, &stdout, &stderr); got != tt.want {
			t.Errorf("run(%q) = %d, want %d; stderr: %s", tt.args, got, tt.want, stderr.String())
		}
	}
}

// TestServeAnswersAndStopsCleanly runs the real server on loopback, calls it
// and scrapes its metrics, then cancels the context as SIGTERM does and
// expects exit code 0 and both servers gone.
func TestServeAnswersAndStopsCleanly(t *testing.T) {
	cfg, err := parseServeFlags([]string{"--data", t.TempDir(), "--metrics-listen", "127.0.0.1:0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() { exit <- serve(ctx, cfg, lis, zap.New(core)) }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := pb.NewAgentServiceClient(conn).GetAgentInfo(t.Context(), &pb.GetAgentInfoRequest{})
	if err != nil {
		t.Fatalf("GetAgentInfo: %v", err)
	}
	if info.Capacity.GetMaxConcurrentJobs() != 4 {
		t.Errorf("capacity = %v", info.Capacity)
	}
	// The metrics server was up before the gRPC server served.
	served := logs.FilterMessage("serving metrics").All()
	if len(served) != 1 {
		t.Fatalf("%d 'serving metrics' log entries", len(served))
	}
	metricsURL := "http://" + served[0].ContextMap()["addr"].(string) + "/metrics"
	page := scrape(t, metricsURL)
	if !strings.Contains(page, `backup_proxy_jobs{state="queued"} 0`) || !strings.Contains(page, "go_goroutines") {
		t.Errorf("metrics page:\n%s", page)
	}
	cancel()
	if code := <-exit; code != exitOK {
		t.Fatalf("exit code = %d, want %d", code, exitOK)
	}
	if resp, err := http.Get(metricsURL); err == nil {
		resp.Body.Close()
		t.Error("the metrics server still answers after shutdown")
	}
}

// scrape returns the page at a metrics URL.
func scrape(t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(body)
}

func TestDataDirIsExclusive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	if _, err := lockDataDir(dir); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second lock = %v, want in use", err)
	}
	unlock()
	unlock2, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
