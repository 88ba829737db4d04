package graphsim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The Entra ID (Azure AD v2.0) endpoints a confidential client with a
// certificate uses: instance discovery, OpenID configuration and the token
// endpoint with client-assertion validation.

const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// aadError is an Entra error answer (RFC 6749 shape plus AADSTS details).
type aadError struct {
	status int
	err    string
	code   int
	desc   string
}

func (s *Server) writeAADError(w http.ResponseWriter, r *http.Request, e aadError) {
	now := s.clock.Now().UTC()
	trace := newRequestID()
	corr := r.Header.Get("client-request-id")
	if corr == "" {
		corr = newRequestID()
	}
	desc := fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s",
		e.code, e.desc, trace, corr, now.Format("2006-01-02 15:04:05Z"))
	body := map[string]any{
		"error":             e.err,
		"error_description": desc,
		"error_codes":       []int{e.code},
		"timestamp":         now.Format("2006-01-02 15:04:05Z"),
		"trace_id":          trace,
		"correlation_id":    corr,
		"error_uri":         fmt.Sprintf("%s/error?code=%d", s.baseURL, e.code),
	}
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("x-ms-request-id", trace)
	writeJSON(w, e.status, body)
}

// tenantMatches reports whether an authority path segment names our tenant.
func (s *Server) tenantMatches(key string) bool {
	return strings.EqualFold(key, s.tenant.id) || strings.EqualFold(key, s.tenant.domain)
}

func (s *Server) unknownTenant(key string) aadError {
	return aadError{400, "invalid_request", 90002, fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", key)}
}

// handleInstanceDiscovery answers MSAL's
// GET /common/discovery/instance?api-version=1.1&authorization_endpoint=...
func (s *Server) handleInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	ae := r.URL.Query().Get("authorization_endpoint")
	u, err := url.Parse(ae)
	if ae == "" || err != nil || u.Host == "" {
		s.writeAADError(w, r, aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'authorization_endpoint'."})
		return
	}
	host := strings.ToLower(u.Host)
	if host != strings.ToLower(s.host) && host != strings.ToLower(r.Host) && !knownLoginHost(host) {
		s.writeAADError(w, r, aadError{400, "invalid_instance", 50049, "Unknown or invalid instance."})
		return
	}
	tenant := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")[0]
	writeJSON(w, 200, map[string]any{
		"tenant_discovery_endpoint": fmt.Sprintf("https://%s/%s/v2.0/.well-known/openid-configuration", u.Host, tenant),
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": u.Host,
			"preferred_cache":   u.Host,
			"aliases":           []string{u.Host},
		}},
	})
}

func knownLoginHost(h string) bool {
	switch h {
	case "login.microsoftonline.com", "login.microsoft.com", "login.windows.net", "sts.windows.net":
		return true
	}
	return false
}

// handleOpenIDConfiguration serves /{tenant}/v2.0/.well-known/openid-configuration.
func (s *Server) handleOpenIDConfiguration(w http.ResponseWriter, r *http.Request, tenantKey string) {
	tid := s.tenant.id
	switch strings.ToLower(tenantKey) {
	case "common", "organizations", "consumers":
		tid = "{tenant}"
	default:
		if !s.tenantMatches(tenantKey) {
			s.writeAADError(w, r, s.unknownTenant(tenantKey))
			return
		}
	}
	base := "https://" + r.Host
	issuerTenant := tid
	if tid == "{tenant}" {
		issuerTenant = "{tenantid}"
	}
	writeJSON(w, 200, map[string]any{
		"token_endpoint":                        base + "/" + tid + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/" + tid + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                base + "/" + issuerTenant + "/v2.0",
		"request_uri_parameter_supported":       false,
		"userinfo_endpoint":                     s.baseURL + "/oidc/userinfo",
		"authorization_endpoint":                base + "/" + tid + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/" + tid + "/oauth2/v2.0/devicecode",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"end_session_endpoint":                  base + "/" + tid + "/oauth2/v2.0/logout",
		"claims_supported":                      []string{"sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"},
		"kerberos_endpoint":                     base + "/" + tid + "/kerberos",
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   "microsoftonline.com",
		"cloud_graph_host_name":                 "graph.windows.net",
		"msgraph_host":                          "graph.microsoft.com",
		"rbac_url":                              "https://pas.windows.net",
	})
}

// accessToken is a bearer token graphsim issued.
type accessToken struct {
	clientID string
	roles    map[string]bool
	expires  time.Time
}

type tokenStore struct {
	mu sync.RWMutex
	m  map[string]*accessToken
}

func (ts *tokenStore) put(tok string, at *accessToken) {
	ts.mu.Lock()
	if ts.m == nil {
		ts.m = map[string]*accessToken{}
	}
	ts.m[tok] = at
	ts.mu.Unlock()
}

func (ts *tokenStore) get(tok string) *accessToken {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	return ts.m[tok]
}

// sweep forgets tokens that expired long ago.
func (ts *tokenStore) sweep(now time.Time) {
	ts.mu.Lock()
	for k, v := range ts.m {
		if now.Sub(v.expires) > 24*time.Hour {
			delete(ts.m, k)
		}
	}
	ts.mu.Unlock()
}

// jtiStore remembers client-assertion ids until the assertions expire.
type jtiStore struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// use records jti and reports whether it was already used.
func (js *jtiStore) use(jti string, exp, now time.Time) bool {
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.m == nil {
		js.m = map[string]time.Time{}
	}
	if len(js.m) > 10000 {
		for k, e := range js.m {
			if now.After(e.Add(time.Hour)) {
				delete(js.m, k)
			}
		}
	}
	if _, ok := js.m[jti]; ok {
		return true
	}
	js.m[jti] = exp
	return false
}

type assertionHeader struct {
	Alg     string `json:"alg"`
	Typ     string `json:"typ"`
	X5t     string `json:"x5t"`
	X5tS256 string `json:"x5t#S256"`
	Kid     string `json:"kid"`
}

type assertionClaims struct {
	Aud json.RawMessage `json:"aud"`
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Jti string          `json:"jti"`
	Nbf *json.Number    `json:"nbf"`
	Exp *json.Number    `json:"exp"`
	Iat *json.Number    `json:"iat"`
}

// decodeThumbprint accepts base64url (RFC 7515) and the standard base64
// MSAL Go actually sends.
func decodeThumbprint(s string) []byte {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return b
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b
	}
	return nil
}

func unixOf(n *json.Number) (time.Time, bool) {
	if n == nil {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// handleToken implements POST /{tenant}/oauth2/v2.0/token for the client
// credentials grant with a certificate assertion.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request, tenantKey string) {
	if r.Method != http.MethodPost {
		s.writeAADError(w, r, aadError{405, "invalid_request", 900561, "The endpoint only accepts POST requests."})
		return
	}
	switch strings.ToLower(tenantKey) {
	case "common", "organizations", "consumers":
		s.writeAADError(w, r, aadError{400, "invalid_request", 50059, "No tenant-identifying information found in either the request or implied by any provided credentials."})
		return
	}
	if !s.tenantMatches(tenantKey) {
		s.writeAADError(w, r, s.unknownTenant(tenantKey))
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeAADError(w, r, aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."})
		return
	}
	f := r.PostForm
	// Recorded whatever happens next: the assertion crossed the wire.
	s.issued.add(&s.issued.c.ClientAssertions, f.Get("client_assertion"))
	if gt := f.Get("grant_type"); gt != "client_credentials" {
		if gt == "" {
			s.writeAADError(w, r, aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."})
		} else {
			s.writeAADError(w, r, aadError{400, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", gt)})
		}
		return
	}
	clientID := f.Get("client_id")
	if clientID == "" {
		s.writeAADError(w, r, aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."})
		return
	}
	resource, scopeErr := graphScope(f.Get("scope"))
	if scopeErr != nil {
		s.writeAADError(w, r, *scopeErr)
		return
	}

	s.dir.mu.RLock()
	app := s.dir.byClientID[strings.ToLower(clientID)]
	var keys []keyCredential
	var roles []string
	hasSP := false
	if app != nil {
		keys = append(keys, app.keys...)
		roles = s.dir.roles(app)
		hasSP = app.sp != nil
	}
	s.dir.mu.RUnlock()
	if app == nil {
		s.writeAADError(w, r, aadError{400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, s.tenant.domain)})
		return
	}
	if f.Get("client_secret") != "" {
		s.writeAADError(w, r, aadError{401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '" + clientID + "'."})
		return
	}
	assertion := f.Get("client_assertion")
	if assertion == "" || f.Get("client_assertion_type") != clientAssertionType {
		s.writeAADError(w, r, aadError{401, "invalid_client", 7000216, "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type."})
		return
	}
	if e := s.validateAssertion(r, tenantKey, app.clientID, assertion, keys); e != nil {
		s.writeAADError(w, r, *e)
		return
	}
	if !hasSP {
		s.writeAADError(w, r, aadError{400, "invalid_client", 7000229, fmt.Sprintf("The client application %s is missing service principal in the tenant %s. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119", clientID, s.tenant.id)})
		return
	}

	now := s.clock.Now()
	lifetime := s.opts.TokenLifetime
	if lifetime == 0 {
		s.rngMu.Lock()
		lifetime = 60*time.Minute + time.Duration(s.rng.Int64N(int64(30*time.Minute)))
		s.rngMu.Unlock()
	}
	tok := s.mintAccessToken(app, resource, roles, now, lifetime)
	s.issued.add(&s.issued.c.AccessTokens, tok)
	rs := map[string]bool{}
	for _, ro := range roles {
		rs[ro] = true
	}
	s.tokens.put(tok, &accessToken{clientID: app.clientID, roles: rs, expires: now.Add(lifetime)})
	if s.tokenCount.Add(1)%1000 == 0 {
		s.tokens.sweep(now)
	}
	secs := int(lifetime / time.Second)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, 200, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	})
}

// graphScope checks the client-credentials scope: exactly one resource with
// the /.default suffix (MSAL appends openid profile offline_access).
func graphScope(scope string) (string, *aadError) {
	var rest []string
	for _, sc := range strings.Fields(scope) {
		switch sc {
		case "openid", "profile", "offline_access":
			continue
		}
		rest = append(rest, sc)
	}
	if len(rest) != 1 {
		return "", &aadError{400, "invalid_scope", 70011, fmt.Sprintf("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope)}
	}
	sc := rest[0]
	if !strings.HasSuffix(sc, "/.default") {
		return "", &aadError{400, "invalid_scope", 1002012, fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", sc)}
	}
	res := strings.TrimSuffix(sc, "/.default")
	switch strings.TrimSuffix(strings.ToLower(res), "/") {
	case "https://graph.microsoft.com", graphAppID:
		return res, nil
	}
	return "", &aadError{400, "invalid_scope", 70011, fmt.Sprintf("The provided value for the input parameter 'scope' is not valid. The scope %s is not valid. The resource is not known to graphsim (only Microsoft Graph).", sc)}
}

// validateAssertion checks a client-assertion JWT the way Entra does.
func (s *Server) validateAssertion(r *http.Request, tenantKey, clientID, assertion string, keys []keyCredential) *aadError {
	malformed := &aadError{400, "invalid_request", 50027, "JWT token is invalid or malformed."}
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return malformed
	}
	var hdr assertionHeader
	var claims assertionClaims
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &hdr) != nil || json.Unmarshal(cb, &claims) != nil {
		return malformed
	}

	// Find the key by thumbprint.
	var thumb []byte
	var sha256Thumb bool
	switch hdr.Alg {
	case "RS256":
		thumb = decodeThumbprint(hdr.X5t)
	case "PS256":
		thumb, sha256Thumb = decodeThumbprint(hdr.X5tS256), true
		if thumb == nil { // PS256 with a SHA-1 thumbprint is accepted too
			thumb, sha256Thumb = decodeThumbprint(hdr.X5t), false
		}
	default:
		return &aadError{401, "invalid_client", 5002738, fmt.Sprintf("Invalid JWT token. '%s' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, HS256, RS384, HS384, RS512, HS512, PS256'", hdr.Alg)}
	}
	if thumb == nil {
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation. [Reason - The thumbprint (x5t or x5t#S256) is missing from the assertion header.]"}
	}
	thumbHex := strings.ToUpper(hex.EncodeToString(thumb))
	var key *keyCredential
	for i := range keys {
		k := &keys[i]
		if sha256Thumb && subtle.ConstantTimeCompare(k.sha256[:], thumb) == 1 ||
			!sha256Thumb && subtle.ConstantTimeCompare(k.sha1[:], thumb) == 1 {
			key = k
			break
		}
	}
	if key == nil {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", thumbHex, clientID)}
	}
	now := s.clock.Now()
	if now.After(key.end) || now.Before(key.start) || now.After(key.cert.NotAfter) {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", thumbHex, key.start.UTC().Format("01/02/2006 15:04:05"), key.end.UTC().Format("01/02/2006 15:04:05"))}
	}
	pub, ok := key.cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return &aadError{401, "invalid_client", 700027, "Client assertion contains an invalid signature. [Reason - The key is not an RSA key.]"}
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	var verr error
	if hdr.Alg == "RS256" {
		verr = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
	} else {
		verr = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	}
	if verr != nil {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '%s']", thumbHex)}
	}

	if !strings.EqualFold(claims.Iss, clientID) || !strings.EqualFold(claims.Sub, clientID) {
		return &aadError{401, "invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials ."}
	}
	if !s.audienceOK(r, tenantKey, claims.Aud) {
		return &aadError{401, "invalid_client", 50012, fmt.Sprintf("Client assertion audience claim does not match Realm issuer. Expected audience '%s'.", s.tokenURLFor(r.Host, tenantKey))}
	}
	nbf, hasNbf := unixOf(claims.Nbf)
	exp, hasExp := unixOf(claims.Exp)
	skew := s.opts.AssertionSkew
	if !hasExp || now.After(exp.Add(skew)) || hasNbf && now.Before(nbf.Add(-skew)) {
		return &aadError{401, "invalid_client", 700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .", now.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339))}
	}
	if claims.Jti == "" {
		return &aadError{401, "invalid_client", 50027, "Invalid JWT token. The token does not contain a 'jti' claim."}
	}
	if s.jtis.use(clientID+"|"+claims.Jti, exp, now) {
		return &aadError{401, "invalid_client", 50012, fmt.Sprintf("The client assertion with jti '%s' has already been used. Client assertions must not be replayed.", claims.Jti)}
	}
	return nil
}

func (s *Server) tokenURLFor(host, tenantKey string) string {
	return "https://" + host + "/" + tenantKey + "/oauth2/v2.0/token"
}

// audienceOK accepts the token endpoint URL on the host the client used or
// on graphsim's own address, with the tenant named by id or domain.
func (s *Server) audienceOK(r *http.Request, tenantKey string, raw json.RawMessage) bool {
	var auds []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		auds = []string{one}
	} else if json.Unmarshal(raw, &auds) != nil {
		return false
	}
	if len(auds) != 1 {
		return false // Entra rejects audience arrays (AADSTS50027)
	}
	aud := strings.TrimSuffix(strings.ToLower(auds[0]), "/")
	for _, host := range []string{r.Host, s.host} {
		for _, t := range []string{s.tenant.id, s.tenant.domain} {
			if aud == strings.ToLower(s.tokenURLFor(host, t)) {
				return true
			}
		}
	}
	return false
}

// mintAccessToken makes a JWT-shaped bearer token. Graph only looks it up in
// the token store; the claims are there for clients that decode tokens.
func (s *Server) mintAccessToken(app *application, resource string, roles []string, now time.Time, lifetime time.Duration) string {
	hdr, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "RS256", "x5t": "graphsim", "kid": "graphsim"})
	claims, _ := json.Marshal(map[string]any{
		"aud": "https://graph.microsoft.com", "iss": "https://sts.windows.net/" + s.tenant.id + "/",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(lifetime).Unix(),
		"app_displayname": app.displayName, "appid": app.clientID, "appidacr": "2", "idp": "https://sts.windows.net/" + s.tenant.id + "/",
		"idtyp": "app", "oid": app.clientID, "roles": roles, "sub": app.clientID, "tid": s.tenant.id,
		"uti": newRequestID(), "ver": "1.0", "resource": resource,
	})
	sig := make([]byte, 32)
	_, _ = rand.Read(sig)
	return base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(claims) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
