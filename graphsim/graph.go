package graphsim

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// call is one Graph request (or $batch sub-request) being served.
type call struct {
	s       *Server
	w       http.ResponseWriter
	r       *http.Request
	segs    []string // decoded path segments after /v1.0
	q       url.Values
	tok     *accessToken
	reqID   string
	inBatch bool
}

// route is what a path resolved to: its SharePoint RU cost (0 for directory
// calls, which SharePoint does not meter), the app roles that allow it, and
// the handler.
type route struct {
	cost  int
	roles []string
	run   func(c *call)
}

var (
	readSites   = []string{"Sites.Read.All", "Sites.ReadWrite.All", "Sites.FullControl.All", "Files.Read.All"}
	readPerms   = []string{"Sites.FullControl.All"}
	readUsers   = []string{"User.Read.All"}
	manageApps  = []string{"Application.ReadWrite.All"}
	assignRoles = []string{"AppRoleAssignment.ReadWrite.All"}
)

const odataJSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

func (s *Server) serveGraph(w http.ResponseWriter, r *http.Request) {
	reqID := newRequestID()
	h := w.Header()
	h.Set("request-id", reqID)
	crid := r.Header.Get("client-request-id")
	if crid == "" {
		crid = reqID
	}
	h.Set("client-request-id", crid)
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Cache-Control", "no-cache")

	if !s.delay(r) {
		return
	}
	tok, msg := s.authenticate(r)
	if tok == nil {
		h.Set("WWW-Authenticate", `Bearer realm="", authorization_uri="`+s.baseURL+`/common/oauth2/authorize", client_id="`+graphAppID+`"`)
		s.graphError(w, r, reqID, 401, "InvalidAuthenticationToken", msg)
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	defer func() { s.stats.addBytes(tok.clientID, cw.n) }()
	segs := splitSegments(strings.TrimPrefix(strings.TrimPrefix(r.URL.EscapedPath(), "/v1.0"), "/"))
	if len(segs) == 1 && segs[0] == "$batch" {
		s.handleBatch(cw, r, tok, reqID)
		return
	}
	s.dispatch(&call{s: s, w: cw, r: r, segs: segs, q: r.URL.Query(), tok: tok, reqID: reqID})
}

// delay applies configured latency and slow-response faults in real time.
// It reports false if the client went away meanwhile.
func (s *Server) delay(r *http.Request) bool {
	d := s.opts.Latency
	if f := s.opts.Faults.SlowResponseRate; f > 0 && s.randFloat() < f {
		d += s.opts.Faults.SlowResponseDelay
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func splitSegments(p string) []string {
	if p == "" {
		return nil
	}
	raw := strings.Split(strings.TrimSuffix(p, "/"), "/")
	out := make([]string, len(raw))
	for i, seg := range raw {
		if u, err := url.PathUnescape(seg); err == nil {
			out[i] = u
		} else {
			out[i] = seg
		}
	}
	return out
}

// authenticate checks the bearer token of a Graph request.
func (s *Server) authenticate(r *http.Request) (*accessToken, string) {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return nil, "Access token is empty."
	}
	scheme, raw, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, "Access token validation failure. Invalid audience."
	}
	if strings.Count(raw, ".") != 2 {
		return nil, "IDX14100: JWT is not well formed, there are no dots (.)."
	}
	at := s.tokens.get(raw)
	if at == nil {
		return nil, "Access token validation failure. Invalid signature."
	}
	if !s.clock.Now().Before(at.expires) {
		return nil, "Lifetime validation failed, the token is expired."
	}
	return at, ""
}

// dispatch resolves, authorises, meters and serves one Graph call.
func (s *Server) dispatch(c *call) {
	rt := s.resolve(c)
	if rt.cost > 0 && strings.Contains(strings.ToLower(c.q.Get("$expand")+c.q.Get("expand")), "permissions") {
		rt.cost = 5 // anything touching permissions
	}
	client := c.tok.clientID
	s.stats.request(client, rt.cost)
	if rt.cost > 0 {
		v := s.throttle.charge(client, rt.cost)
		if v.violation {
			s.stats.violation(client)
		}
		h := c.w.Header()
		if v.rateLimit {
			h.Set("RateLimit-Limit", strconv.FormatInt(v.limit, 10))
			h.Set("RateLimit-Remaining", strconv.FormatInt(v.remaining, 10))
			h.Set("RateLimit-Reset", strconv.Itoa(s.realSeconds(v.reset)))
		}
		if v.status != 0 {
			s.stats.throttled(client, v.status)
			h.Set("Retry-After", strconv.Itoa(s.realSeconds(v.retryAfter)))
			if v.status == 429 {
				s.graphError(c.w, c.r, c.reqID, 429, "TooManyRequests", "The request has been throttled")
			} else {
				s.graphError(c.w, c.r, c.reqID, 503, "serviceNotAvailable", "Server Too Busy")
			}
			return
		}
	}
	if f := s.opts.Faults.ConnectionResetRate; f > 0 && !c.inBatch && s.randFloat() < f {
		panic(http.ErrAbortHandler) // net/http closes the connection (or resets the HTTP/2 stream)
	}
	if f := s.opts.Faults.TransientErrorRate; f > 0 && s.randFloat() < f {
		switch s.randIntN(4) {
		case 0:
			s.graphError(c.w, c.r, c.reqID, 500, "generalException", "An unspecified error has occurred.")
		case 1:
			s.graphError(c.w, c.r, c.reqID, 502, "BadGateway", "Bad Gateway")
		case 2:
			s.graphError(c.w, c.r, c.reqID, 503, "serviceNotAvailable", "The service is temporarily unavailable. Please try again later.")
		default:
			s.graphError(c.w, c.r, c.reqID, 504, "UnknownError", "Gateway Timeout")
		}
		return
	}
	if !hasRole(c.tok, rt.roles) {
		if rt.cost == 0 {
			s.graphError(c.w, c.r, c.reqID, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
		} else if len(c.tok.roles) == 0 {
			s.graphError(c.w, c.r, c.reqID, 403, "accessDenied", "Either scp or roles claim need to be present in the token.")
		} else {
			s.graphError(c.w, c.r, c.reqID, 403, "accessDenied", "Access denied")
		}
		return
	}
	rt.run(c)
}

func hasRole(t *accessToken, roles []string) bool {
	if roles == nil {
		return true
	}
	for _, r := range roles {
		if t.roles[r] {
			return true
		}
	}
	return false
}

// realSeconds converts a simulated duration into the whole real seconds a
// client must wait (Retry-After), at least 1.
func (s *Server) realSeconds(d time.Duration) int {
	secs := int(math.Ceil(d.Seconds() / s.opts.TimeScale))
	return max(secs, 1)
}

func (s *Server) graphError(w http.ResponseWriter, r *http.Request, reqID string, status int, code, msg string) {
	crid := r.Header.Get("client-request-id")
	if crid == "" {
		crid = reqID
	}
	w.Header().Set("Content-Type", odataJSON)
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code": code, "message": msg,
		"innerError": map[string]string{
			"date": s.clock.Now().UTC().Format("2006-01-02T15:04:05"), "request-id": reqID, "client-request-id": crid,
		},
	}})
}

func (c *call) fail(status int, code, msg string) {
	c.s.graphError(c.w, c.r, c.reqID, status, code, msg)
}

func (c *call) ok(status int, v any) {
	c.w.Header().Set("Content-Type", odataJSON)
	writeJSON(c.w, status, v)
}

func methodNotAllowed(cost int) route {
	return route{cost: cost, run: func(c *call) {
		c.fail(405, "invalidRequest", "The HTTP method '"+c.r.Method+"' is not allowed for this resource.")
	}}
}

func (s *Server) badRequest(msg string) route {
	return route{cost: 1, run: func(c *call) { c.fail(400, "invalidRequest", msg) }}
}

func notFound(cost int, roles []string, code, msg string) route {
	return route{cost: cost, roles: roles, run: func(c *call) { c.fail(404, code, msg) }}
}

// resolve maps a path to a route.
func (s *Server) resolve(c *call) route {
	segs := c.segs
	if len(segs) == 0 {
		return s.badRequest("Invalid request.")
	}
	head := segs[0]
	switch {
	case head == "sites":
		return s.routeSites(c, segs[1:])
	case head == "drives":
		return s.routeDrives(c, segs[1:])
	case head == "users":
		return s.routeUsers(c, segs[1:])
	case head == "applications" || strings.HasPrefix(head, "applications("):
		return s.routeApplications(c, segs)
	case head == "servicePrincipals" || strings.HasPrefix(head, "servicePrincipals("):
		return s.routeServicePrincipals(c, segs)
	case head == "me":
		return s.badRequest("/me request is only valid with delegated authentication flow.")
	}
	return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", head))
}

// page returns the [from, to) slice bounds of a collection page and the
// nextLink for the rest, using $top and an opaque $skiptoken.
func (s *Server) page(c *call, n, defTop, maxTop int) (int, int, string) {
	top := defTop
	if v, err := strconv.Atoi(c.q.Get("$top")); err == nil && v > 0 {
		top = min(v, maxTop)
	}
	from := 0
	if st := c.q.Get("$skiptoken"); st != "" {
		if b, err := base64.RawURLEncoding.DecodeString(st); err == nil {
			if v, err := strconv.Atoi(strings.TrimPrefix(string(b), "o:")); err == nil && v >= 0 {
				from = min(v, n)
			}
		}
	}
	to := min(from+top, n)
	next := ""
	if to < n {
		q := url.Values{}
		for k, v := range c.q {
			q[k] = v
		}
		q.Set("$skiptoken", base64.RawURLEncoding.EncodeToString([]byte("o:"+strconv.Itoa(to))))
		next = s.baseURL + c.r.URL.EscapedPath() + "?" + q.Encode()
		if c.inBatch {
			next = s.baseURL + "/v1.0/" + strings.Join(escapeSegments(c.segs), "/") + "?" + q.Encode()
		}
	}
	return from, to, next
}

func escapeSegments(segs []string) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = url.PathEscape(s)
	}
	return out
}

func (s *Server) metadata(fragment string) string { return s.baseURL + "/v1.0/$metadata#" + fragment }

// countingWriter counts response body bytes for the stats.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
