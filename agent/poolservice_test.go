package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/pool"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// poolFixture is an agent with a PoolService over a pool whose tokens come
// from an in-process graphsim through real azidentity credentials.
type poolFixture struct {
	t      *testing.T
	sim    *graphsim.Server
	dir    string
	logs   *observer.ObservedLogs
	pool   *pool.Pool
	client pb.PoolServiceClient
}

func newPoolFixture(t *testing.T) *poolFixture {
	sim, err := graphsim.New(graphsim.Options{Seed: 7, Users: 1, Sites: 1, FilesPerDrive: 1, Apps: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	f := &poolFixture{t: t, sim: sim, dir: t.TempDir()}
	f.start()
	return f
}

// start opens the pool from disk and serves it, as an agent start does.
func (f *poolFixture) start() {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	p, err := pool.Open(log, pool.Config{Dir: f.dir, LoginURL: f.sim.LoginURL(), HTTPClient: f.sim.HTTPClient()})
	if err != nil {
		f.t.Fatal(err)
	}
	srv := NewServer(log, DefaultLimits(), Security{}, Services{Pool: NewPoolService(p, nil, nil, nil)})
	f.pool, f.logs, f.client = p, logs, pb.NewPoolServiceClient(startServer(f.t, srv))
}

func (f *poolFixture) app(i int) graphsim.App { return f.sim.Tenant().Apps[i] }

func pemBundle(c *graphsim.AppCredential) []byte {
	return append(append([]byte{}, c.CertPEM...), c.KeyPEM...)
}

func (f *poolFixture) add(i int, cert []byte, password string) *pb.Application {
	f.t.Helper()
	app := f.app(i)
	resp, err := f.client.AddApplication(f.t.Context(), &pb.AddApplicationRequest{
		TenantId: f.sim.Tenant().ID, ClientId: app.ClientID, DisplayName: app.DisplayName,
		Certificate: cert, CertificatePassword: password, OrganizationApp: app.OrganizationApp,
	})
	if err != nil {
		f.t.Fatalf("add %s: %v", app.ClientID, err)
	}
	return resp.Application
}

func (f *poolFixture) token(clientID string) error {
	a, err := f.pool.App(f.sim.Tenant().ID, clientID)
	if err != nil {
		return err
	}
	_, err = a.Token(context.Background())
	return err
}

func opensslSHA1(t *testing.T, certPEM []byte) string {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(path, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "x509", "-noout", "-fingerprint", "-sha1", "-in", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	_, fp, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
	return strings.ReplaceAll(fp, ":", "")
}

func TestPoolServiceLifecycleAgainstGraphsim(t *testing.T) {
	f := newPoolFixture(t)
	tenant := f.sim.Tenant()
	org, second := f.app(0), f.app(1)
	if !org.OrganizationApp {
		t.Fatal("graphsim's first app is not the organization app")
	}

	// The organization app from its PEM files.
	got := f.add(0, pemBundle(org.Credentials[0]), "")
	if want := opensslSHA1(t, org.Credentials[0].CertPEM); got.Thumbprint != want {
		t.Errorf("thumbprint %s, openssl says %s", got.Thumbprint, want)
	}
	if got.State != pb.ApplicationState_APPLICATION_STATE_READY || !got.OrganizationApp {
		t.Errorf("added org app = %v", got)
	}

	// A second app from a PKCS#12 export of its certificate and key.
	cred := second.Credentials[0]
	p12, err := pkcs12.Modern.Encode(cred.Key, cred.Cert, nil, "export-pw")
	if err != nil {
		t.Fatal(err)
	}
	f.add(1, p12, "export-pw")

	list, err := f.client.ListApplications(t.Context(), &pb.ListApplicationsRequest{TenantId: tenant.ID})
	if err != nil || len(list.Applications) != 2 {
		t.Fatalf("list = %v, %v", list, err)
	}
	for _, a := range list.Applications {
		if err := f.token(a.ClientId); err != nil {
			t.Errorf("token for %s: %v", a.ClientId, err)
		}
	}

	// Rotation: Entra gets a second certificate; the agent switches to it.
	rotated, err := f.sim.AddAppCertificate(second.ClientID, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	upd, err := f.client.UpdateCertificate(t.Context(), &pb.UpdateCertificateRequest{
		TenantId: tenant.ID, ClientId: second.ClientID, Certificate: pemBundle(rotated),
	})
	if err != nil {
		t.Fatal(err)
	}
	if upd.Application.Thumbprint != opensslSHA1(t, rotated.CertPEM) {
		t.Errorf("after rotation thumbprint %s", upd.Application.Thumbprint)
	}
	// A certificate Entra does not know is refused, and the app keeps working.
	unknown := selfSignedPEM(t, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), 2048)
	_, err = f.client.UpdateCertificate(t.Context(), &pb.UpdateCertificateRequest{TenantId: tenant.ID, ClientId: second.ClientID, Certificate: unknown})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "AADSTS") {
		t.Errorf("unregistered certificate: %v", err)
	}
	if err := f.token(second.ClientID); err != nil {
		t.Errorf("token after refused rotation: %v", err)
	}

	// Removal rules, then removal.
	_, err = f.client.RemoveApplication(t.Context(), &pb.RemoveApplicationRequest{TenantId: tenant.ID, ClientId: org.ClientID})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("removing the organization app first: %v", err)
	}
	if _, err := f.client.RemoveApplication(t.Context(), &pb.RemoveApplicationRequest{TenantId: tenant.ID, ClientId: second.ClientID}); err != nil {
		t.Fatal(err)
	}
	f.add(2, pemBundle(f.app(2).Credentials[0]), "")

	// Restart: the pool is intact and works.
	before, _ := f.client.ListApplications(t.Context(), &pb.ListApplicationsRequest{})
	f.start()
	after, err := f.client.ListApplications(t.Context(), &pb.ListApplicationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Applications) != 2 || fmt.Sprint(thumbprints(before)) != fmt.Sprint(thumbprints(after)) {
		t.Errorf("after restart %v, before %v", thumbprints(after), thumbprints(before))
	}
	for _, a := range after.Applications {
		if err := f.token(a.ClientId); err != nil {
			t.Errorf("token after restart for %s: %v", a.ClientId, err)
		}
	}
}

func thumbprints(r *pb.ListApplicationsResponse) []string {
	var out []string
	for _, a := range r.Applications {
		out = append(out, a.ClientId+"="+a.Thumbprint)
	}
	return out
}

func selfSignedPEM(t *testing.T, notBefore, notAfter time.Time, bits int) []byte {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return certWithKey(t, key, key, notBefore, notAfter)
}

// certWithKey returns a PEM certificate of certKey's public key followed by
// keyInFile (the same key, or another one for a mismatch).
func certWithKey(t *testing.T, certKey, keyInFile *rsa.PrivateKey, notBefore, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &certKey.PublicKey, certKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(keyInFile)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
}

// TestAddApplicationRefusesBadCertificates sends every kind of bad
// certificate through gRPC: each is INVALID_ARGUMENT naming the field in
// words, and the pool is unchanged.
func TestAddApplicationRefusesBadCertificates(t *testing.T) {
	f := newPoolFixture(t)
	tenant := f.sim.Tenant()
	org := f.app(0)
	cred := org.Credentials[0]
	credKey := cred.Key.(*rsa.PrivateKey)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	//nolint:staticcheck // the legacy format that must be refused
	legacy, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(credKey), []byte("pw"), x509.PEMCipherAES256)
	if err != nil {
		t.Fatal(err)
	}
	p12, err := pkcs12.Modern.Encode(cred.Key, cred.Cert, nil, "right")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, password, field, words string
		cert                         []byte
	}{
		{"not a certificate", "", "certificate", "neither PEM nor", []byte{0x30, 0x01, 0x02, 0xff, 0xfe}},
		{"wrong key", "", "certificate", "does not match", certWithKey(t, credKey, other, now.Add(-time.Hour), now.Add(time.Hour))},
		{"expired", "", "certificate", "expired on 2026-01-01", certWithKey(t, credKey, credKey, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))},
		{"not yet valid", "", "certificate", "not valid before", certWithKey(t, credKey, credKey, now.Add(30*24*time.Hour), now.Add(60*24*time.Hour))},
		{"RSA 1024", "", "certificate", "1024 bits", certWithKey(t, small, small, now.Add(-time.Hour), now.Add(time.Hour))},
		{"encrypted legacy PEM", "", "certificate", "RFC 1423", append(append([]byte{}, cred.CertPEM...), pem.EncodeToMemory(legacy)...)},
		{"wrong PKCS#12 password", "wrong", "certificate_password", "password is wrong", p12},
		{"empty", "", "certificate", "empty", nil},
		{"10 MB of garbage", "", "certificate", "at most", bytes.Repeat([]byte{0x30, 0x82}, 5<<20)},
		{"client secret", "", "certificate", "client secret", []byte("Abc8Q~dEfGhIjKlMnOpQrStUvWxYz0123456789_-")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.client.AddApplication(t.Context(), &pb.AddApplicationRequest{
				TenantId: tenant.ID, ClientId: org.ClientID, Certificate: tt.cert, CertificatePassword: tt.password, OrganizationApp: true,
			})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
			var br *errdetails.BadRequest
			for _, d := range status.Convert(err).Details() {
				if b, ok := d.(*errdetails.BadRequest); ok {
					br = b
				}
			}
			if br == nil || len(br.FieldViolations) != 1 || br.FieldViolations[0].Field != tt.field ||
				!strings.Contains(br.FieldViolations[0].Description, tt.words) {
				t.Errorf("details = %v, want %s: …%s…", br, tt.field, tt.words)
			}
		})
	}
	if list := f.pool.List(""); len(list) != 0 {
		t.Errorf("pool changed: %v", list)
	}
}

// TestNoPrivateKeyInResponsesLogsOrErrors runs the pool's operations, good
// and bad, and searches every response, error and log line for key material.
func TestNoPrivateKeyInResponsesLogsOrErrors(t *testing.T) {
	f := newPoolFixture(t)
	tenant := f.sim.Tenant()
	org := f.app(0)
	cred := org.Credentials[0]
	credKey := cred.Key.(*rsa.PrivateKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(credKey)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(keyDER)
	fragments := []string{b64[64:104], b64[len(b64)/2 : len(b64)/2+40], credKey.D.String()[:32], credKey.D.Text(16)[:32]}

	var seen strings.Builder
	record := func(m proto.Message, err error) {
		if m != nil && !reflect.ValueOf(m).IsNil() {
			seen.WriteString(protojson.Format(m))
		}
		if err != nil {
			seen.WriteString(err.Error())
			for _, d := range status.Convert(err).Details() {
				fmt.Fprint(&seen, d)
			}
		}
	}
	ctx := t.Context()
	r1, err := f.client.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tenant.ID, ClientId: org.ClientID, Certificate: pemBundle(cred), OrganizationApp: true})
	record(r1, err)
	_, err = f.client.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tenant.ID, ClientId: org.ClientID, Certificate: pemBundle(cred), OrganizationApp: true})
	record(nil, err)
	_, err = f.client.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tenant.ID, ClientId: f.app(1).ClientID, Certificate: cred.KeyPEM})
	record(nil, err)
	truncated := pemBundle(cred)
	_, err = f.client.UpdateCertificate(ctx, &pb.UpdateCertificateRequest{TenantId: tenant.ID, ClientId: org.ClientID, Certificate: truncated[:len(truncated)-100]})
	record(nil, err)
	r2, err := f.client.ListApplications(ctx, &pb.ListApplicationsRequest{})
	record(r2, err)
	for _, e := range f.logs.All() {
		fmt.Fprintln(&seen, e.Message, e.ContextMap())
	}
	all := seen.String()
	if !strings.Contains(all, org.ClientID) {
		t.Fatal("nothing was recorded; the test checks nothing")
	}
	for i, frag := range fragments {
		if strings.Contains(all, frag) {
			t.Errorf("key fragment %d found in responses, errors or logs", i)
		}
	}
}
