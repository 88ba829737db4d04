package graphsim_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// small returns options for a small, fast tenant on a manual clock.
func small(clock *graphsim.ManualClock) graphsim.Options {
	return graphsim.Options{
		Seed: 7, Users: 3, Sites: 2, FilesPerDrive: 12, FoldersPerDrive: 3, MaxFileSize: 64 << 10,
		Apps: 2, AppKeyBits: 1024, Clock: clock, Throttle503Rate: -1,
		Faults: graphsim.Faults{UnprovisionedOneDrives: -1},
	}
}

func start(t testing.TB, o graphsim.Options) *graphsim.Server {
	t.Helper()
	s, err := graphsim.New(o)
	if err != nil {
		t.Fatalf("graphsim.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

type assertion struct {
	alg       string // RS256 or PS256
	clientID  string
	iss, sub  string
	aud       string
	nbf, exp  time.Time
	jti       string
	cred      *graphsim.AppCredential // key that signs
	thumbCred *graphsim.AppCredential // certificate named in the header (default cred)
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (a assertion) sign(t testing.TB) string {
	t.Helper()
	tc := a.thumbCred
	if tc == nil {
		tc = a.cred
	}
	hdr := map[string]string{"alg": a.alg, "typ": "JWT"}
	if a.alg == "RS256" {
		s := sha1.Sum(tc.Cert.Raw)
		hdr["x5t"] = base64.RawURLEncoding.EncodeToString(s[:])
	} else {
		s := sha256.Sum256(tc.Cert.Raw)
		hdr["x5t#S256"] = base64.StdEncoding.EncodeToString(s[:]) // what MSAL Go sends
	}
	claims := map[string]any{"aud": a.aud, "iss": a.iss, "sub": a.sub, "jti": a.jti,
		"nbf": a.nbf.Unix(), "exp": a.exp.Unix(), "iat": a.nbf.Unix()}
	signing := b64(hdr) + "." + b64(claims)
	digest := sha256.Sum256([]byte(signing))
	key := a.cred.Key.(*rsa.PrivateKey)
	var sig []byte
	var err error
	if a.alg == "RS256" {
		sig, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	} else {
		sig, err = rsa.SignPSS(rand.Reader, key, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	}
	if err != nil {
		t.Fatalf("sign assertion: %v", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

var jtiCounter atomic.Int64 // unique assertion ids across tests

func goodAssertion(s *graphsim.Server, app graphsim.App, alg string) assertion {
	now := s.Clock().Now()
	return assertion{alg: alg, clientID: app.ClientID, iss: app.ClientID, sub: app.ClientID, aud: s.TokenURL(),
		nbf: now, exp: now.Add(10 * time.Minute), jti: fmt.Sprintf("jti-%d", jtiCounter.Add(1)),
		cred: app.Credentials[0]}
}

type tokenResult struct {
	status int
	body   map[string]any
}

func (r tokenResult) code() int {
	codes, _ := r.body["error_codes"].([]any)
	if len(codes) == 0 {
		return 0
	}
	return int(codes[0].(float64))
}

func requestToken(t testing.TB, s *graphsim.Server, tenant, clientID, jwt string, extra url.Values) tokenResult {
	t.Helper()
	f := url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {clientID},
		"scope":                 {"https://graph.microsoft.com/.default"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {jwt},
	}
	for k, v := range extra {
		f[k] = v
	}
	resp, err := s.HTTPClient().PostForm(s.LoginURL()+"/"+tenant+"/oauth2/v2.0/token", f)
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode token response: %v", err)
	}
	return tokenResult{resp.StatusCode, body}
}

// token gets a bearer token for the app through the token endpoint.
func token(t testing.TB, s *graphsim.Server, app graphsim.App) string {
	t.Helper()
	r := requestToken(t, s, s.Tenant().ID, app.ClientID, goodAssertion(s, app, "PS256").sign(t), nil)
	if r.status != 200 {
		t.Fatalf("token for %s: %d %v", app.ClientID, r.status, r.body)
	}
	return r.body["access_token"].(string)
}

// client is a tiny Graph client for tests.
type client struct {
	t     testing.TB
	s     *graphsim.Server
	http  *http.Client
	token string
}

func newClient(t testing.TB, s *graphsim.Server, app graphsim.App) *client {
	hc := s.HTTPClient()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client{t: t, s: s, http: hc, token: token(t, s, app)}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
	return m
}

func (r response) errorCode(t testing.TB) string {
	e, _ := r.json(t)["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (c *client) do(method, u string, body io.Reader, hdr map[string]string) response {
	c.t.Helper()
	if strings.HasPrefix(u, "/") {
		u = c.s.GraphURL() + "/v1.0" + u
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		c.t.Fatalf("request %s: %v", u, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("read %s: %v", u, err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func (c *client) get(u string) response { return c.do(http.MethodGet, u, nil, nil) }

func (c *client) mustGet(u string) map[string]any {
	c.t.Helper()
	r := c.get(u)
	if r.status != 200 {
		c.t.Fatalf("GET %s: %d %s", u, r.status, r.body)
	}
	return r.json(c.t)
}

func (c *client) postJSON(u string, v any) response {
	b, _ := json.Marshal(v)
	return c.do(http.MethodPost, u, strings.NewReader(string(b)), nil)
}

// crawl pages a delta query to its deltaLink and returns the items (last
// occurrence wins), every raw item in order, and the deltaLink.
func (c *client) crawl(start string) (map[string]map[string]any, []map[string]any, string) {
	c.t.Helper()
	items := map[string]map[string]any{}
	var all []map[string]any
	next := start
	for pages := 0; ; pages++ {
		if pages > 10000 {
			c.t.Fatal("delta never ended")
		}
		page := c.mustGet(next)
		for _, v := range page["value"].([]any) {
			it := v.(map[string]any)
			items[it["id"].(string)] = it
			all = append(all, it)
		}
		if dl, ok := page["@odata.deltaLink"].(string); ok {
			return items, all, dl
		}
		next = page["@odata.nextLink"].(string)
	}
}

func appByOrg(s *graphsim.Server, org bool) graphsim.App {
	for _, a := range s.Tenant().Apps {
		if a.OrganizationApp == org {
			return a
		}
	}
	panic("no such app")
}
