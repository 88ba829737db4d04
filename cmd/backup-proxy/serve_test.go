package main

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/backup-proxy/backup-proxy/agent/auth"
	"github.com/backup-proxy/backup-proxy/agent/auth/authtest"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

func TestParseServeFlagsRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
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
		{"gc percent", []string{"--gc-percent", "0"}, "--gc-percent"},
		{"tenant share", []string{"--tenant-share", "1.5"}, "--tenant-share"},
		{"company with bar", []string{"--company", "a|b"}, "--company"},
		{"metrics listen without port", []string{"--metrics-listen", "9090"}, "--metrics-listen"},
		{"metrics listen named port", []string{"--metrics-listen", "localhost:prometheus"}, "--metrics-listen"},
		{"budget redis not a url", []string{"--budget-redis", "localhost:6379"}, "--budget-redis"},
		{"budget redis other scheme", []string{"--budget-redis", "http://localhost:6379"}, "--budget-redis"},
		{"budget redis bad db", []string{"--budget-redis", "redis://localhost:6379/x"}, "--budget-redis"},
		{"lease redis not a url", []string{"--lease-redis", "localhost:6379"}, "--lease-redis"},
		{"repo s3 not a url", []string{"--repo-s3", "backups"}, "--repo-s3"},
		{"repo s3 other scheme", []string{"--repo-s3", "https://backups/x"}, "--repo-s3"},
		{"repo s3 with credentials", []string{"--repo-s3", "s3://key:secret@backups"}, "--repo-s3"},
		{"repo s3 without credentials", []string{"--repo-s3", "s3://backups/agents"}, "AWS_ACCESS_KEY_ID"},
		{"repo s3 endpoint url", []string{"--repo-s3", "s3://backups", "--repo-s3-endpoint", "https://s3.example.com/"}, "--repo-s3-endpoint"},
		{"repo lease ttl", []string{"--repo-lease-ttl", "10ms"}, "--repo-lease-ttl"},
		{"repo sync interval", []string{"--repo-sync-interval", "-1s"}, "--repo-sync-interval"},
		{"fallback share zero", []string{"--budget-fallback-share", "0"}, "--budget-fallback-share"},
		{"fallback share above one", []string{"--budget-fallback-share", "1.5"}, "--budget-fallback-share"},
		{"sim time scale", []string{"--sim-time-scale", "0.5"}, "--sim-time-scale"},
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

// tlsFiles are PEM files of a CA, the agent's certificate and a token file.
type tlsFiles struct {
	ca                           *authtest.CA
	caFile, certFile, keyFile    string
	otherKey, tokens, openTokens string
}

const testToken = "operator-token-0123456789abcdef0123456789"

func writeTLSFiles(t *testing.T) tlsFiles {
	dir := t.TempDir()
	ca := authtest.NewCA(t, "test CA")
	server, other := ca.Server(t), ca.Server(t)
	tokens := []byte("# name roles token\noperator read,write " + testToken + "\n")
	return tlsFiles{
		ca:         ca,
		caFile:     authtest.WriteFile(t, dir, "ca.pem", ca.PEM, 0o644),
		certFile:   authtest.WriteFile(t, dir, "server.pem", server.CertPEM, 0o644),
		keyFile:    authtest.WriteFile(t, dir, "server-key.pem", server.KeyPEM, 0o600),
		otherKey:   authtest.WriteFile(t, dir, "other-key.pem", other.KeyPEM, 0o600),
		tokens:     authtest.WriteFile(t, dir, "tokens", tokens, 0o600),
		openTokens: authtest.WriteFile(t, dir, "tokens-0644", tokens, 0o644),
	}
}

func TestParseServeFlagsRejectsBadSecurity(t *testing.T) {
	f := writeTLSFiles(t)
	tls := []string{"--tls-cert", f.certFile, "--tls-key", f.keyFile}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"all interfaces without TLS", []string{"--listen", "0.0.0.0:50051"}, "--insecure-plaintext-on-network"},
		{"empty host without TLS", []string{"--listen", ":50051"}, "--insecure-plaintext-on-network"},
		{"IPv6 any without TLS", []string{"--listen", "[::]:50051"}, "--insecure-plaintext-on-network"},
		{"LAN address without TLS", []string{"--listen", "192.168.1.10:50051"}, "reachable from the network"},
		{"host name without TLS", []string{"--listen", "agent.contoso.com:50051"}, "reachable from the network"},
		{"key without certificate", []string{"--tls-key", f.keyFile}, "--tls-key: needs --tls-cert"},
		{"certificate without key", []string{"--tls-cert", f.certFile, "--client-ca", f.caFile}, "--tls-cert: needs --tls-key"},
		{"client CA without TLS", []string{"--client-ca", f.caFile}, "--client-ca: mutual TLS needs --tls-cert"},
		{"tokens without TLS", []string{"--auth-token-file", f.tokens}, "only accepted over TLS"},
		{"TLS authenticating nobody", tls, "every caller must authenticate"},
		{"key of another certificate", []string{"--tls-cert", f.certFile, "--tls-key", f.otherKey, "--client-ca", f.caFile}, "does not match"},
		{"certificate missing", []string{"--tls-cert", f.certFile + ".missing", "--tls-key", f.keyFile, "--client-ca", f.caFile}, "--tls-cert, --tls-key"},
		{"client CA not PEM", append([]string{"--client-ca", f.keyFile}, tls...), "--client-ca"},
		{"client CA missing", append([]string{"--client-ca", f.caFile + ".missing"}, tls...), "--client-ca"},
		{"token file readable by others", append([]string{"--auth-token-file", f.openTokens}, tls...), "chmod 600"},
		{"loud flag with TLS", append([]string{"--client-ca", f.caFile, "--insecure-plaintext-on-network"}, tls...), "contradicts --tls-cert"},
		{"negative rate", []string{"--rpc-rate", "-1"}, "--rpc-rate"},
		{"no burst", []string{"--rpc-burst", "0"}, "--rpc-burst"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseServeFlags(tt.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseServeFlags(%q) = %v, want error containing %q", tt.args, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Fatalf("error %q contains the token", err)
			}
		})
	}
}

func TestParseServeFlagsAcceptsSecurity(t *testing.T) {
	f := writeTLSFiles(t)
	tls := []string{"--tls-cert", f.certFile, "--tls-key", f.keyFile}
	tests := []struct {
		name       string
		args       []string
		wantTLS    bool
		wantTokens int
	}{
		{"loopback plaintext", []string{"--listen", "127.0.0.1:50051"}, false, 0},
		{"localhost plaintext", []string{"--listen", "localhost:50051"}, false, 0},
		{"IPv6 loopback plaintext", []string{"--listen", "[::1]:50051"}, false, 0},
		{"network plaintext, loudly", []string{"--listen", "0.0.0.0:50051", "--insecure-plaintext-on-network"}, false, 0},
		{"mutual TLS on the network", append([]string{"--listen", "0.0.0.0:50051", "--client-ca", f.caFile}, tls...), true, 0},
		{"tokens over TLS", append([]string{"--listen", "[::]:50051", "--auth-token-file", f.tokens}, tls...), true, 1},
		{"both", append([]string{"--client-ca", f.caFile, "--auth-token-file", f.tokens}, tls...), true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseServeFlags(tt.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.security.TLS != nil; got != tt.wantTLS {
				t.Errorf("TLS = %v, want %v", got, tt.wantTLS)
			}
			if got := cfg.security.Tokens.Len(); got != tt.wantTokens {
				t.Errorf("%d tokens, want %d", got, tt.wantTokens)
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
		cfg.loginURL.String() != "https://login.microsoftonline.com" || cfg.maxJobs != 4 || cfg.memoryLimit != 192<<20 || cfg.gcPercent != 50 ||
		cfg.rpcRate != 200 || cfg.rpcBurst != 400 || cfg.security.TLS != nil || cfg.insecureOnNetwork ||
		cfg.metricsListen != "" || cfg.budgetRedis != "" || cfg.fallbackShare != 1.0/3 || cfg.simTimeScale != 1 {
		t.Errorf("defaults = %+v", cfg)
	}
	if sc := cfg.schedulerConfig(); sc.Shared != nil || sc.Clock != nil {
		t.Errorf("default scheduler config has a shared budget or a clock: %+v", sc)
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
		{[]string{"serve", "--listen", "0.0.0.0:50051"}, exitUsage},
		{[]string{"demo", "--listen", "0.0.0.0:50051"}, exitUsage},
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

// TestServeWithMutualTLS runs the real server on loopback with mutual TLS:
// a read-only certificate may read but not submit, and a client without a
// certificate is refused by the handshake.
func TestServeWithMutualTLS(t *testing.T) {
	f := writeTLSFiles(t)
	cfg, err := parseServeFlags([]string{"--data", t.TempDir(), "--tls-cert", f.certFile, "--tls-key", f.keyFile,
		"--client-ca", f.caFile, "--auth-token-file", f.tokens}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() { exit <- serve(ctx, cfg, lis, zap.NewNop()) }()

	dial := func(cert *tls.Certificate) *grpc.ClientConn {
		tc := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	reader := f.ca.Client(t, "backup-reader", auth.OrgRead)
	readOnly := dial(&reader.TLS)
	if _, err := pb.NewAgentServiceClient(readOnly).GetAgentInfo(t.Context(), &pb.GetAgentInfoRequest{}); err != nil {
		t.Fatalf("read-only GetAgentInfo: %v", err)
	}
	_, err = pb.NewJobServiceClient(readOnly).SubmitJob(t.Context(), &pb.SubmitJobRequest{JobId: "j1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("read-only SubmitJob = %v, want PermissionDenied", err)
	}
	// The operator token over the same connection may submit: the request
	// gets past admission to the job service's own validation.
	_, err = pb.NewJobServiceClient(readOnly).SubmitJob(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testToken), &pb.SubmitJobRequest{JobId: "j1"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("SubmitJob with the operator token = %v, want InvalidArgument from the job service", err)
	}
	if _, err := pb.NewAgentServiceClient(dial(nil)).GetAgentInfo(t.Context(), &pb.GetAgentInfoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetAgentInfo without a client certificate = %v, want Unavailable", err)
	}
	cancel()
	if code := <-exit; code != exitOK {
		t.Fatalf("exit code = %d, want %d", code, exitOK)
	}
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
