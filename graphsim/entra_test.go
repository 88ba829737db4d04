package graphsim_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

func TestTokenEndpointValidatesAssertions(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, small(clock))
	tenant := s.Tenant()
	app := appByOrg(s, false)
	other := appByOrg(s, true)

	expired, err := s.AddAppCertificate(app.ClientID, t0.Add(-48*time.Hour), t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.AddAppCertificate(app.ClientID, t0.Add(-time.Hour), t0.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	replayed := goodAssertion(s, app, "RS256").sign(t)
	if r := requestToken(t, s, tenant.ID, app.ClientID, replayed, nil); r.status != 200 {
		t.Fatalf("first use of assertion: %d %v", r.status, r.body)
	}

	tests := []struct {
		name     string
		tenant   string
		clientID string
		jwt      func() string
		extra    url.Values
		status   int
		errCode  string
		aadsts   int
	}{
		{name: "good RS256", jwt: func() string { return goodAssertion(s, app, "RS256").sign(t) }, status: 200},
		{name: "good PS256", jwt: func() string { return goodAssertion(s, app, "PS256").sign(t) }, status: 200},
		{name: "tenant by domain", tenant: tenant.Domain, jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.aud = s.LoginURL() + "/" + tenant.Domain + "/oauth2/v2.0/token"
			return a.sign(t)
		}, status: 200},
		{name: "second certificate of the app", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.cred = second
			return a.sign(t)
		}, status: 200},
		{name: "wrong audience", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.aud = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 50012},
		{name: "expired assertion", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.nbf, a.exp = t0.Add(-time.Hour), t0.Add(-50*time.Minute)
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700024},
		{name: "assertion not yet valid", jwt: func() string {
			a := goodAssertion(s, app, "RS256")
			a.nbf, a.exp = t0.Add(time.Hour), t0.Add(70*time.Minute)
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700024},
		{name: "replayed jti", jwt: func() string { return replayed }, status: 401, errCode: "invalid_client", aadsts: 50012},
		{name: "unknown certificate", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.cred = other.Credentials[0] // registered on another app only
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700027},
		{name: "expired certificate", jwt: func() string {
			a := goodAssertion(s, app, "RS256")
			a.cred = expired
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700027},
		{name: "signature by another key", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.cred, a.thumbCred = other.Credentials[0], app.Credentials[0]
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700027},
		{name: "issuer is not the client", jwt: func() string {
			a := goodAssertion(s, app, "PS256")
			a.iss = other.ClientID
			return a.sign(t)
		}, status: 401, errCode: "invalid_client", aadsts: 700021},
		{name: "unknown app", clientID: "11111111-2222-3333-4444-555555555555", jwt: func() string {
			return goodAssertion(s, app, "PS256").sign(t)
		}, status: 400, errCode: "unauthorized_client", aadsts: 700016},
		{name: "unknown tenant", tenant: "00000000-0000-0000-0000-000000000001", jwt: func() string {
			return goodAssertion(s, app, "PS256").sign(t)
		}, status: 400, errCode: "invalid_request", aadsts: 90002},
		{name: "malformed assertion", jwt: func() string { return "not-a-jwt" }, status: 400, errCode: "invalid_request", aadsts: 50027},
		{name: "scope without .default", extra: url.Values{"scope": {"https://graph.microsoft.com/Sites.Read.All"}},
			jwt: func() string { return goodAssertion(s, app, "PS256").sign(t) }, status: 400, errCode: "invalid_scope", aadsts: 1002012},
		{name: "client secret", extra: url.Values{"client_secret": {"hunter2"}},
			jwt: func() string { return goodAssertion(s, app, "PS256").sign(t) }, status: 401, errCode: "invalid_client", aadsts: 7000215},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tn, cid := tc.tenant, tc.clientID
			if tn == "" {
				tn = tenant.ID
			}
			if cid == "" {
				cid = app.ClientID
			}
			r := requestToken(t, s, tn, cid, tc.jwt(), tc.extra)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %v", r.status, tc.status, r.body)
			}
			if tc.status == 200 {
				if r.body["token_type"] != "Bearer" || r.body["access_token"] == "" {
					t.Fatalf("bad success body %v", r.body)
				}
				exp := r.body["expires_in"].(float64)
				if exp < 3600 || exp > 5400 {
					t.Fatalf("expires_in %v, want 60-90 minutes", exp)
				}
				return
			}
			if r.body["error"] != tc.errCode || r.code() != tc.aadsts {
				t.Fatalf("error %v / AADSTS%d, want %s / AADSTS%d: %v", r.body["error"], r.code(), tc.errCode, tc.aadsts, r.body)
			}
			if desc, _ := r.body["error_description"].(string); !strings.HasPrefix(desc, "AADSTS") {
				t.Fatalf("error_description %q does not start with AADSTS", desc)
			}
		})
	}
}

func TestBearerTokenCheckedOnGraph(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := small(clock)
	o.TokenLifetime = 30 * time.Minute
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	site := s.Tenant().Sites[0].ID

	if r := c.get("/sites/" + site); r.status != 200 {
		t.Fatalf("valid token: %d %s", r.status, r.body)
	}
	for _, tc := range []struct {
		name  string
		token string
		msg   string
	}{
		{"missing", "", "Access token is empty."},
		{"garbage", "abc", "IDX14100"},
		{"unknown", "eyJ0eXAiOiJKV1QifQ.eyJ4IjoxfQ.c2ln", "Invalid signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &client{t: t, s: s, http: c.http, token: tc.token}
			r := u.get("/sites/" + site)
			if r.status != 401 || r.errorCode(t) != "InvalidAuthenticationToken" || !strings.Contains(string(r.body), tc.msg) {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		})
	}
	clock.Advance(31 * time.Minute)
	r := c.get("/sites/" + site)
	if r.status != 401 || r.errorCode(t) != "InvalidAuthenticationToken" || !strings.Contains(string(r.body), "expired") {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}
}

func TestOpenIDConfigurationAndInstanceDiscovery(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	tid := s.Tenant().ID
	c := &client{t: t, s: s, http: s.HTTPClient()}

	cfg := c.mustGet(s.LoginURL() + "/" + tid + "/v2.0/.well-known/openid-configuration")
	if cfg["token_endpoint"] != s.TokenURL() {
		t.Errorf("token_endpoint %v, want %s", cfg["token_endpoint"], s.TokenURL())
	}
	if cfg["issuer"] != s.LoginURL()+"/"+tid+"/v2.0" || cfg["authorization_endpoint"] == "" {
		t.Errorf("issuer/authorization_endpoint: %v", cfg)
	}
	common := c.mustGet(s.LoginURL() + "/common/v2.0/.well-known/openid-configuration")
	if !strings.Contains(common["token_endpoint"].(string), "{tenant}") {
		t.Errorf("common token_endpoint %v lacks {tenant}", common["token_endpoint"])
	}
	r := c.get(s.LoginURL() + "/no-such-tenant.example/v2.0/.well-known/openid-configuration")
	if r.status != 400 || !strings.Contains(string(r.body), "AADSTS90002") {
		t.Errorf("unknown tenant: %d %s", r.status, r.body)
	}

	q := url.Values{"api-version": {"1.1"}, "authorization_endpoint": {s.LoginURL() + "/" + tid + "/oauth2/v2.0/authorize"}}
	disc := c.mustGet(s.LoginURL() + "/common/discovery/instance?" + q.Encode())
	if disc["tenant_discovery_endpoint"] != s.LoginURL()+"/"+tid+"/v2.0/.well-known/openid-configuration" {
		t.Errorf("tenant_discovery_endpoint %v", disc["tenant_discovery_endpoint"])
	}
	md := disc["metadata"].([]any)[0].(map[string]any)
	if md["preferred_network"] != s.Addr() {
		t.Errorf("metadata %v", md)
	}
	q.Set("authorization_endpoint", "https://evil.example/"+tid+"/oauth2/v2.0/authorize")
	if r := c.get(s.LoginURL() + "/common/discovery/instance?" + q.Encode()); r.status != 400 || !strings.Contains(string(r.body), "invalid_instance") {
		t.Errorf("foreign instance: %d %s", r.status, r.body)
	}
}
