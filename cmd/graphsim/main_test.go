package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunWritesStateAndServes(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--state", dir, "--seed", "3", "--users", "4",
			"--sites", "2", "--files-per-drive", "5", "--apps", "3", "--licenses", "2000", "--regime", "shared",
			"--time-scale", "60", "--no-throttle"}, pw, io.Discard)
		pw.Close()
	}()

	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatalf("no output; run: %v", <-done)
	}
	line := lines.Text()
	url, ok := strings.CutPrefix(line, "graphsim listening on https://")
	if !ok {
		t.Fatalf("first line %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()

	var st struct {
		TenantID string `json:"tenant_id"`
		GraphURL string `json:"graph_url"`
		LoginURL string `json:"login_url"`
		CAFile   string `json:"ca_file"`
		Apps     []struct {
			ClientID        string `json:"client_id"`
			OrganizationApp bool   `json:"organization_app"`
			CertFile        string `json:"cert_file"`
			KeyFile         string `json:"key_file"`
		} `json:"apps"`
		Users []map[string]any `json:"users"`
		Sites []map[string]any `json:"sites"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "tenant.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.GraphURL != "https://"+url || st.LoginURL != st.GraphURL || len(st.Apps) != 3 || !st.Apps[0].OrganizationApp ||
		len(st.Users) != 4 || len(st.Sites) != 2 || st.CAFile != filepath.Join(dir, "ca.pem") {
		t.Fatalf("tenant.json: %s", b)
	}
	for _, a := range st.Apps {
		if _, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile); err != nil {
			t.Fatalf("app files: %v", err)
		}
	}

	ca, err := os.ReadFile(st.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(st.GraphURL + "/_sim/stats")
	if err != nil {
		t.Fatalf("stats over TLS with ca.pem: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stats: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not stop")
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--seed", "1"}, // no --state
		{"--state", t.TempDir(), "--regime", "bogus"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%v) succeeded", args)
		}
	}
}
