package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
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
		cfg.loginURL.String() != "https://login.microsoftonline.com" || cfg.maxJobs != 4 || cfg.memoryLimit != 192<<20 {
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

// TestServeAnswersAndStopsCleanly runs the real server on loopback, calls it,
// then cancels the context as SIGTERM does and expects exit code 0.
func TestServeAnswersAndStopsCleanly(t *testing.T) {
	cfg, err := parseServeFlags([]string{"--data", t.TempDir()}, &bytes.Buffer{})
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
