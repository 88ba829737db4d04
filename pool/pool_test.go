package pool

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	tenantA = "11111111-1111-1111-1111-111111111111"
	orgApp  = "aaaaaaaa-0000-0000-0000-000000000001"
	app2    = "aaaaaaaa-0000-0000-0000-000000000002"
	app3    = "aaaaaaaa-0000-0000-0000-000000000003"
)

// entra is a fake Entra: it knows which certificate thumbprints are
// registered for which app and refuses the rest like Entra does.
type entra struct {
	clock      *fakeClock
	registered map[string]bool // clientID/sha1
}

func (e *entra) newCredential(tenantID, clientID string, cert *Certificate) (credential, error) {
	cred := &fakeCred{clock: e.clock, lifetime: time.Hour}
	if !e.registered[clientID+"/"+cert.SHA1] {
		cred.setErr(errors.New(`{"error":"invalid_client","error_description":"AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application."}`))
	}
	return cred, nil
}

type fixture struct {
	t     *testing.T
	dir   string
	clock *fakeClock
	entra *entra
	logs  *observer.ObservedLogs
	pool  *Pool
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), clock: &fakeClock{now: testNow}}
	f.entra = &entra{clock: f.clock, registered: map[string]bool{}}
	f.reopen()
	return f
}

func (f *fixture) reopen() {
	core, logs := observer.New(zap.DebugLevel)
	p, err := Open(zap.New(core), Config{Dir: f.dir, Now: f.clock.Now, newCredential: f.entra.newCredential})
	if err != nil {
		f.t.Fatal(err)
	}
	f.pool, f.logs = p, logs
}

// bundle returns a PEM bundle with key i, registered in the fake Entra for clientID.
func (f *fixture) bundle(clientID string, i int) ([]byte, string) {
	data, _ := validBundle(f.t, i)
	cert, err := ParseCertificate(data, "", testNow)
	if err != nil {
		f.t.Fatal(err)
	}
	f.entra.registered[clientID+"/"+cert.SHA1] = true
	return data, cert.SHA1
}

func (f *fixture) add(clientID string, org bool) Info {
	data, _ := f.bundle(clientID, 0)
	info, err := f.pool.Add(context.Background(), AddRequest{TenantID: tenantA, ClientID: clientID, Certificate: data, Organization: org})
	if err != nil {
		f.t.Fatalf("add %s: %v", clientID, err)
	}
	return info
}

func TestAddListAndPersist(t *testing.T) {
	f := newFixture(t)
	sha1 := f.add(orgApp, true).ThumbprintSHA1
	f.add(app2, false)

	check := func(when string) {
		list := f.pool.List(tenantA)
		if len(list) != 2 || list[0].ClientID != orgApp || !list[0].Organization || list[1].ClientID != app2 {
			t.Fatalf("%s: list = %+v", when, list)
		}
		if list[0].ThumbprintSHA1 != sha1 || list[0].State != StateReady {
			t.Errorf("%s: org app = %+v", when, list[0])
		}
		tok, err := f.pool.Apps(tenantA)[1].Token(context.Background())
		if err != nil || tok == "" {
			t.Errorf("%s: token: %q, %v", when, tok, err)
		}
	}
	check("after add")
	f.reopen()
	check("after restart")
	if got := f.pool.Tenants(); len(got) != 1 || got[0] != tenantA {
		t.Errorf("tenants = %v", got)
	}

	entries, err := os.ReadDir(filepath.Join(f.dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("%d key files, want 2", len(entries))
	}
	for _, name := range []string{"pool.json", filepath.Join("keys", entries[0].Name())} {
		fi, err := os.Stat(filepath.Join(f.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	state, _ := os.ReadFile(filepath.Join(f.dir, "pool.json"))
	if strings.Contains(string(state), "PRIVATE KEY") {
		t.Error("pool.json holds a private key")
	}
}

func TestAddRefusals(t *testing.T) {
	f := newFixture(t)
	good, _ := f.bundle(app2, 0)
	unregistered, _ := validBundle(t, 1)

	var ia *InvalidArgumentError
	var pe *PreconditionError
	tests := []struct {
		name  string
		setup func()
		req   AddRequest
		check func(error) bool
	}{
		{"bad tenant id", nil, AddRequest{TenantID: "contoso", ClientID: app2, Certificate: good, Organization: true},
			func(err error) bool { return errors.As(err, &ia) && ia.Field == "tenant_id" }},
		{"bad client id", nil, AddRequest{TenantID: tenantA, ClientID: "x", Certificate: good, Organization: true},
			func(err error) bool { return errors.As(err, &ia) && ia.Field == "client_id" }},
		{"first app not organization", nil, AddRequest{TenantID: tenantA, ClientID: app2, Certificate: good},
			func(err error) bool { return errors.As(err, &pe) && strings.Contains(pe.Reason, "no organization app") }},
		{"Entra refuses the certificate", nil, AddRequest{TenantID: tenantA, ClientID: app2, Certificate: unregistered, Organization: true},
			func(err error) bool { return errors.As(err, &pe) && strings.Contains(pe.Reason, "AADSTS700027") }},
		{"second organization app", func() { f.add(orgApp, true) }, AddRequest{TenantID: tenantA, ClientID: app2, Certificate: good, Organization: true},
			func(err error) bool {
				return errors.As(err, &pe) && strings.Contains(pe.Reason, "already has an organization app")
			}},
		{"duplicate", nil, AddRequest{TenantID: tenantA, ClientID: orgApp, Certificate: good},
			func(err error) bool { return errors.Is(err, ErrAlreadyExists) }},
	}
	for _, tt := range tests {
		if tt.setup != nil {
			tt.setup()
		}
		before := fmt.Sprint(f.pool.List(""))
		_, err := f.pool.Add(context.Background(), tt.req)
		if !tt.check(err) {
			t.Errorf("%s: err = %v", tt.name, err)
		}
		if after := fmt.Sprint(f.pool.List("")); after != before {
			t.Errorf("%s: pool changed: %s → %s", tt.name, before, after)
		}
	}
}

func TestRemoveRules(t *testing.T) {
	f := newFixture(t)
	f.add(orgApp, true)
	f.add(app2, false)

	var pe *PreconditionError
	if err := f.pool.Remove(tenantA, orgApp, false); !errors.As(err, &pe) {
		t.Errorf("removing the organization app with others present: %v", err)
	}
	if err := f.pool.Remove(tenantA, app3, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing an unknown app: %v", err)
	}
	if err := f.pool.Remove(tenantA, app2, true); err != nil {
		t.Errorf("removing one of two usable apps with jobs running: %v", err)
	}
	if err := f.pool.Remove(tenantA, orgApp, true); !errors.As(err, &pe) || !strings.Contains(pe.Reason, "last usable") {
		t.Errorf("removing the last usable app with jobs running: %v", err)
	}
	if err := f.pool.Remove(tenantA, orgApp, false); err != nil {
		t.Errorf("removing the last app without jobs: %v", err)
	}
	f.reopen()
	if got := f.pool.List(""); len(got) != 0 {
		t.Errorf("after restart the pool holds %v", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.dir, "keys")); len(entries) != 0 {
		t.Errorf("%d key files left after removing every app", len(entries))
	}
}

func TestUpdateCertificate(t *testing.T) {
	f := newFixture(t)
	f.add(orgApp, true)
	app, _ := f.pool.App(tenantA, orgApp)
	oldTok, err := app.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// A certificate Entra does not know is refused; the old one keeps working.
	unregistered, _ := validBundle(t, 1)
	var pe *PreconditionError
	if _, err := f.pool.UpdateCertificate(context.Background(), tenantA, orgApp, unregistered, ""); !errors.As(err, &pe) {
		t.Fatalf("update to an unregistered certificate: %v", err)
	}
	if tok, err := app.Token(context.Background()); err != nil || tok != oldTok {
		t.Fatalf("old certificate stopped working: %q, %v", tok, err)
	}
	if n := app.TokenFailures(); n != 1 {
		t.Errorf("token failures after a refused certificate = %d, want 1", n)
	}

	newBundle, newSHA1 := f.bundle(orgApp, 2)
	info, err := f.pool.UpdateCertificate(context.Background(), tenantA, orgApp, newBundle, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.ThumbprintSHA1 != newSHA1 {
		t.Errorf("thumbprint after update %s, want %s", info.ThumbprintSHA1, newSHA1)
	}
	if _, err := app.Token(context.Background()); err != nil {
		t.Errorf("token after update: %v", err)
	}
	if n := app.Info().TokenFailures; n != 1 {
		t.Errorf("token failures after the update = %d, want 1 (the count outlives the certificate)", n)
	}
	f.reopen()
	if got := f.pool.List(tenantA)[0].ThumbprintSHA1; got != newSHA1 {
		t.Errorf("after restart thumbprint %s, want %s", got, newSHA1)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.dir, "keys")); len(entries) != 1 {
		t.Errorf("%d key files after rotation, want only the new one", len(entries))
	}
}

func TestCertificateExpiryTakesAppOut(t *testing.T) {
	f := newFixture(t)
	key := testKey(t, 0)
	c := selfSigned(t, key, testNow.Add(-time.Hour), testNow.Add(10*24*time.Hour))
	data := append(certPEM(c), pkcs8PEM(t, key)...)
	cert, _ := ParseCertificate(data, "", testNow)
	f.entra.registered[orgApp+"/"+cert.SHA1] = true
	info, err := f.pool.Add(context.Background(), AddRequest{TenantID: tenantA, ClientID: orgApp, Certificate: data, Organization: true})
	if err != nil {
		t.Fatal(err)
	}
	if !info.ExpiresSoon || info.State != StateReady {
		t.Errorf("10 days before expiry: %+v, want ready and flagged", info)
	}
	f.clock.Advance(11 * 24 * time.Hour)
	app, _ := f.pool.App(tenantA, orgApp)
	if app.Usable() || app.Info().State != StateCertificateInvalid || !strings.Contains(app.Info().Reason, "expired") {
		t.Errorf("after expiry: %+v", app.Info())
	}
	if _, err := app.Token(context.Background()); err == nil {
		t.Error("token with an expired certificate")
	}
}

func TestTokenFailureMarksAppFailed(t *testing.T) {
	f := newFixture(t)
	f.add(orgApp, true)
	app, _ := f.pool.App(tenantA, orgApp)
	// Entra forgets the certificate (someone deleted it in the portal).
	for k := range f.entra.registered {
		delete(f.entra.registered, k)
	}
	app.mu.Lock()
	app.tokens.cred.(*fakeCred).setErr(errors.New("AADSTS700027: The key was not found."))
	app.mu.Unlock()
	f.clock.Advance(2 * time.Hour) // the cached token expired
	if _, err := app.Token(context.Background()); err == nil {
		t.Fatal("token although Entra refuses")
	}
	info := app.Info()
	if info.State != StateFailed || !strings.Contains(info.Reason, "AADSTS700027") || app.Usable() || info.TokenFailures != 1 {
		t.Errorf("info = %+v", info)
	}
}

// TestNoKeyMaterialEscapes formats every struct that holds key material in
// every way a log line or error could, and searches for the key.
func TestNoKeyMaterialEscapes(t *testing.T) {
	f := newFixture(t)
	data, _ := f.bundle(orgApp, 0)
	f.add(orgApp, true)
	app, _ := f.pool.App(tenantA, orgApp)
	key := testKey(t, 0)
	der, _ := x509.MarshalPKCS8PrivateKey(key)

	// Fragments any leak would contain.
	secrets := []string{
		base64.StdEncoding.EncodeToString(der)[100:140],
		key.D.String()[:40],
		key.D.Text(16)[:40],
		key.Primes[0].String()[:40],
		fmt.Sprintf("%x", key.D.Bytes()[:20]),
	}
	// Errors about the certificate carry no key material either.
	_, errDup := f.pool.Add(context.Background(), AddRequest{TenantID: tenantA, ClientID: orgApp, Certificate: data})
	_, errBad := f.pool.UpdateCertificate(context.Background(), tenantA, orgApp, append(data[:len(data)-40:len(data)-40], data...), "")
	cert, _ := ParseCertificate(data, "", testNow)
	rec := record{tenantID: tenantA, clientID: orgApp, cert: cert}

	values := map[string]any{
		"Certificate": cert, "*App": app, "*Pool": f.pool, "record": rec, "PrivateKey": cert.Key,
		"Info": app.Info(), "tokenSource": app.tokens, "dupError": errDup, "badError": errBad,
	}
	var out strings.Builder
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
			fmt.Fprintf(&out, "%s "+verb+"\n", name, v)
		}
		if j, err := json.Marshal(v); err == nil {
			out.Write(j)
		}
		f.pool.log.Info("formatting", zap.Any(name, v), zap.Reflect(name+"r", v))
	}
	for _, e := range f.logs.All() {
		fmt.Fprintln(&out, e.Message, e.ContextMap())
	}
	all := out.String()
	for i, s := range secrets {
		if strings.Contains(all, s) || strings.Contains(strings.ToUpper(all), strings.ToUpper(s)) {
			t.Errorf("secret fragment %d leaked", i)
		}
	}
	if !strings.Contains(all, "[REDACTED]") {
		t.Error("the key was not formatted at all; the test checks nothing")
	}
}
