package auth

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/agent/auth/authtest"
)

func TestLoadServerCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, "test CA")
	server, other := ca.Server(t), ca.Server(t)
	certFile := authtest.WriteFile(t, dir, "server.pem", server.CertPEM, 0o644)
	keyFile := authtest.WriteFile(t, dir, "server-key.pem", server.KeyPEM, 0o600)
	otherKey := authtest.WriteFile(t, dir, "other-key.pem", other.KeyPEM, 0o600)
	now := time.Now()
	tests := []struct {
		name      string
		cert, key string
		now       time.Time
		wantErr   string
	}{
		{"good", certFile, keyFile, now, ""},
		{"key of another certificate", certFile, otherKey, now, "does not match"},
		{"key and certificate swapped", keyFile, certFile, now, "certificate"},
		{"missing", dir + "/nope.pem", keyFile, now, "no such file"},
		{"expired", certFile, keyFile, now.Add(2 * time.Hour), "expired on"},
		{"not yet valid", certFile, keyFile, now.Add(-2 * time.Hour), "not valid before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadServerCertificate(tt.cert, tt.key, tt.now)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestServerTLS(t *testing.T) {
	ca := authtest.NewCA(t, "test CA")
	dir := t.TempDir()
	pool, err := LoadCertPool(authtest.WriteFile(t, dir, "ca.pem", ca.PEM, 0o644))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCertPool(authtest.WriteFile(t, dir, "junk.pem", []byte("junk"), 0o644)); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("junk CA file: %v", err)
	}
	mutual := ServerTLS(ca.Server(t).TLS, pool)
	if mutual.MinVersion != tls.VersionTLS13 || mutual.ClientAuth != tls.RequireAndVerifyClientCert || mutual.ClientCAs == nil {
		t.Errorf("mutual TLS config: min %x, client auth %v", mutual.MinVersion, mutual.ClientAuth)
	}
	if serverOnly := ServerTLS(ca.Server(t).TLS, nil); serverOnly.ClientAuth != tls.NoClientCert {
		t.Errorf("without client CAs: client auth %v", serverOnly.ClientAuth)
	}
}
