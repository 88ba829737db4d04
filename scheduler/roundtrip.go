package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

const (
	// maxBufferedBody: request bodies up to this size without GetBody are
	// buffered so that they can be sent again; larger ones get one attempt.
	maxBufferedBody = 8 << 20
	// maxBatchResponse: $batch responses up to this size are read to find
	// throttled sub-requests.
	maxBatchResponse = 8 << 20
	// drainLimit: a retried response's body is read up to this much so the
	// connection can be reused, then closed.
	drainLimit = 64 << 10
)

// request is what the scheduler knows about a request across attempts.
type request struct {
	method, where string // where: host and path, never the query (download URLs carry credentials)
	graph         bool   // a Graph API call: gets a bearer token
	content       bool   // GET .../content: the scheduler follows the redirect
	batch         bool
	idempotent    bool // safe to send again after an unclear failure
	class         Class
	cost          int // RU charged per attempt (content: the call plus the download)
	maxAttempts   int

	body    []byte
	getBody func() (io.ReadCloser, error)
	oneShot io.ReadCloser
}

func (s *Scheduler) prepare(req *http.Request) (*request, error) {
	rq := &request{method: req.Method, where: req.URL.Host + req.URL.Path, maxAttempts: s.cfg.MaxAttempts}
	if rq.method == "" {
		rq.method = http.MethodGet
	}
	switch rq.method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		rq.idempotent = true
	}
	path := req.URL.Path
	for _, p := range s.cfg.GraphPathPrefixes {
		if strings.HasPrefix(path, p) {
			rq.graph = true
			path = "/" + path[len(p):]
			break
		}
	}
	rq.batch = rq.graph && rq.method == http.MethodPost && strings.EqualFold(strings.Trim(path, "/"), "$batch")
	if err := rq.takeBody(req); err != nil {
		return nil, err
	}
	switch {
	case !rq.graph:
		rq.class, rq.cost = ClassDownload, 1
	case rq.batch:
		// A batch of reads is safe to resend; its sub-requests are metered
		// one by one.
		rq.class, rq.cost, rq.idempotent = ClassMetadata, batchCost(rq.body), true
	default:
		rq.class, rq.cost = Cost(rq.method, path, req.URL.RawQuery)
		if rq.class == ClassDownload && rq.method == http.MethodGet {
			rq.content = true
			rq.cost++ // the download URL is metered too, against the same app
		}
	}
	return rq, nil
}

// takeBody makes the request body replayable: GetBody if the caller gave
// one, else a buffer. The caller's Body is closed, as RoundTrip must.
func (rq *request) takeBody(req *http.Request) error {
	if req.Body == nil || req.Body == http.NoBody {
		return nil
	}
	if req.GetBody != nil && !rq.batch {
		rq.getBody = req.GetBody
		return req.Body.Close()
	}
	data, err := io.ReadAll(io.LimitReader(req.Body, maxBufferedBody+1))
	if err != nil {
		req.Body.Close()
		return fmt.Errorf("read request body: %w", err)
	}
	if len(data) > maxBufferedBody {
		rq.oneShot = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), req.Body), req.Body}
		rq.maxAttempts = 1
		return nil
	}
	rq.body = data
	return req.Body.Close()
}

// outgoing builds one attempt's request.
func (s *Scheduler) outgoing(req *http.Request, rq *request, token string) (*http.Request, error) {
	r := req.Clone(req.Context())
	switch {
	case rq.body != nil:
		body := rq.body
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	case rq.getBody != nil:
		b, err := rq.getBody()
		if err != nil {
			return nil, fmt.Errorf("replay request body: %w", err)
		}
		r.Body = b
	case rq.oneShot != nil:
		r.Body, rq.oneShot = rq.oneShot, nil
	}
	r.Header.Set("User-Agent", s.ua)
	if rq.graph {
		r.Header.Set("Authorization", "Bearer "+token)
	} else {
		r.Header.Del("Authorization")
	}
	if rq.content {
		// The range applies to the file, i.e. to the download URL.
		r.Header.Del("Range")
		r.Header.Del("If-Range")
	}
	return r, nil
}

// outcome is what an attempt's result asks for.
type outcome int

const (
	outDone      outcome = iota // hand the response to the caller
	outFatal                    // hand the error to the caller
	outThrottled                // try again when a slot allows (the throttled app is cooling down)
	outTransient                // back off, then try again, on another app if there is one
	outAgain                    // try again at once
)

// RoundTrip sends req with one of the tenant's apps when the budgets allow,
// retrying throttled and transient failures. A GET of a drive item's
// /content is followed to the download URL with the same app; the caller
// gets the file (200, or 206 for a Range) and never the redirect.
func (s *Scheduler) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	job := jobOf(ctx)
	rq, err := s.prepare(req)
	s.mu.Lock()
	s.requests++
	s.jobLocked(job).requests++
	s.mu.Unlock()
	if err != nil {
		return nil, s.fail(job, rq, err)
	}
	var (
		avoid     *appState
		why       string // why the previous attempt did not succeed
		attempt   int
		transient int
	)
	for {
		if attempt >= rq.maxAttempts {
			return nil, s.fail(job, rq, &GiveUpError{Attempts: attempt, Last: why})
		}
		g, err := s.acquire(ctx, job, rq.class, rq.cost, avoid, why != "")
		if err != nil {
			if why != "" {
				err = fmt.Errorf("%w (previous attempt: %s)", err, why)
			}
			return nil, s.fail(job, rq, err)
		}
		var token string
		if rq.graph {
			if token, err = g.client.Token(ctx); err != nil {
				s.refund(&g, g.ru)
				if ctx.Err() != nil {
					return nil, s.fail(job, rq, ctx.Err())
				}
				s.takeOut(g.app, err)
				why = "application " + g.app.id + ": " + err.Error()
				continue
			}
		}
		if !s.beginSend(&g, attempt+1) {
			s.refund(&g, g.ru)
			why = "application " + g.app.id + " was throttled before the request left"
			continue
		}
		attempt++
		resp, out, reason, err := s.exchange(ctx, req, rq, &g, token)
		s.settle(&g) // paths without a response (connection errors) end here
		switch out {
		case outDone:
			return resp, nil
		case outFatal:
			return nil, s.fail(job, rq, err)
		case outTransient:
			avoid = g.app
			if attempt >= rq.maxAttempts {
				break // no point in waiting for an attempt that will not be made
			}
			d := s.backoff(transient)
			transient++
			if err := s.sleep(ctx, d); err != nil {
				return nil, s.fail(job, rq, fmt.Errorf("%w (previous attempt: %s)", err, reason))
			}
		default:
			avoid = nil
		}
		why = reason
	}
}

func (s *Scheduler) fail(job string, rq *request, err error) error {
	s.mu.Lock()
	s.failed++
	s.jobLocked(job).failed++
	s.mu.Unlock()
	if rq == nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if rq.oneShot != nil {
		rq.oneShot.Close() // never sent: RoundTrip must close the body anyway
	}
	return fmt.Errorf("scheduler: %s %s: %w", rq.method, rq.where, err)
}

// exchange sends one attempt and classifies the result.
func (s *Scheduler) exchange(ctx context.Context, req *http.Request, rq *request, g *grant, token string) (*http.Response, outcome, string, error) {
	out, err := s.outgoing(req, rq, token)
	if err != nil {
		return nil, outFatal, "", err
	}
	resp, err := s.base.RoundTrip(out)
	followed := false
	if rq.content {
		if err == nil && isRedirect(resp.StatusCode) {
			resp, err = s.follow(ctx, req, g, resp)
			if resp == nil && err == nil {
				return nil, outAgain, "application " + g.app.id + " was throttled before the download started", nil
			}
			followed = true
		} else {
			s.refund(g, 1) // only /content itself went out
		}
	}
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, errBadRedirect) {
			return nil, outFatal, "", err
		}
		reason := "connection error on application " + g.app.id + ": " + err.Error()
		if rq.idempotent {
			s.log.Debug("transient error, retrying", zap.String("client_id", g.app.id), zap.Error(err))
			return nil, outTransient, reason, nil
		}
		return nil, outFatal, "", err
	}
	if followed && resp.StatusCode == http.StatusUnauthorized {
		// The download URL expired or was refused: a new /content call
		// gets a new one.
		drain(resp)
		return nil, outAgain, "the download URL was refused (401)", nil
	}
	switch s.observe(g, resp.StatusCode, resp.Header, rq.graph || followed) {
	case vThrottled:
		reason := fmt.Sprintf("%s from application %s (Retry-After %q)", resp.Status, g.app.id, resp.Header.Get("Retry-After"))
		drain(resp)
		return nil, outThrottled, reason, nil
	case vTransient:
		if rq.idempotent {
			reason := resp.Status + " from application " + g.app.id
			drain(resp)
			return nil, outTransient, reason, nil
		}
	}
	if rq.batch && resp.StatusCode == http.StatusOK {
		s.inspectBatch(g, resp)
	}
	return resp, outDone, "", nil
}

// follow sends the download a /content redirect points to: no
// Authorization (the URL is pre-authenticated), the caller's Range, and the
// same app, which the server meters for it. It returns nil, nil if that
// app entered a cooldown meanwhile.
func (s *Scheduler) follow(ctx context.Context, req *http.Request, g *grant, redirect *http.Response) (*http.Response, error) {
	s.observe(g, redirect.StatusCode, redirect.Header, true)
	loc := redirect.Header.Get("Location")
	drain(redirect)
	u, err := req.URL.Parse(loc)
	if loc == "" || err != nil {
		s.refund(g, 1)
		return nil, fmt.Errorf("%w: %d with Location %q", errBadRedirect, redirect.StatusCode, loc)
	}
	if !s.beginSend(g, 0) {
		s.refund(g, 1)
		return nil, nil
	}
	dl, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	dl.Header.Set("User-Agent", s.ua)
	for _, h := range []string{"Range", "If-Range"} {
		if v := req.Header.Get(h); v != "" {
			dl.Header.Set(h, v)
		}
	}
	return s.base.RoundTrip(dl)
}

var errBadRedirect = errors.New("redirect without a usable Location")

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	resp.Body.Close()
}

// backoff returns the n-th wait after a transient failure: exponential,
// with full jitter over its upper half so that retries spread out.
func (s *Scheduler) backoff(n int) time.Duration {
	d := s.cfg.MaxBackoff
	if n < 30 {
		d = min(s.cfg.MinBackoff<<n, s.cfg.MaxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits d on the scheduler's clock, or fails at once if that would
// pass the context's deadline.
func (s *Scheduler) sleep(ctx context.Context, d time.Duration) error {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Duration(float64(time.Until(dl)) * s.scale); d > left {
			return &DeadlineError{Wait: d, Left: left}
		}
	}
	done := make(chan struct{})
	stop := s.clock.AfterFunc(d, func() { close(done) })
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		stop()
		return ctx.Err()
	}
}

func (s *Scheduler) takeOut(a *appState, err error) {
	s.mu.Lock()
	a.outUntil = s.clock.Now().Add(tokenRetry)
	a.outReason = err.Error()
	s.mu.Unlock()
	s.log.Info("application taken out of rotation: no token", zap.String("client_id", a.id), zap.Error(err))
}

// GiveUpError is returned when every attempt a request may make failed.
type GiveUpError struct {
	Attempts int
	Last     string // why the last attempt failed
}

func (e *GiveUpError) Error() string {
	return fmt.Sprintf("gave up after %d attempts; last: %s", e.Attempts, e.Last)
}

// Unwrap makes errors.Is(err, ErrGaveUp) hold.
func (e *GiveUpError) Unwrap() error { return ErrGaveUp }

// verdict is what a response says about throttling.
type verdict int

const (
	vOK        verdict = iota
	vThrottled         // 429, or 503 with Retry-After
	vTransient         // 500, 502, 504, 503 without Retry-After
)

// rateLimit holds the RateLimit-* headers of a response.
type rateLimit struct {
	limit, remaining int64
	reset            time.Duration
}

// Header keys in Go's canonical form, looked up directly: Header.Get would
// canonicalize "RateLimit-Limit" on every response, which allocates.
const (
	hRateLimitLimit     = "Ratelimit-Limit"
	hRateLimitRemaining = "Ratelimit-Remaining"
	hRateLimitReset     = "Ratelimit-Reset"
	hRetryAfter         = "Retry-After"
)

func header(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

func (s *Scheduler) rateLimitHeaders(h http.Header) (rateLimit, bool) {
	lv, rv := header(h, hRateLimitLimit), header(h, hRateLimitRemaining)
	if lv == "" || rv == "" {
		return rateLimit{}, false
	}
	l, err1 := strconv.ParseInt(lv, 10, 64)
	r, err2 := strconv.ParseInt(rv, 10, 64)
	if err1 != nil || err2 != nil || l <= 0 {
		return rateLimit{}, false
	}
	// The server's count, limit-remaining, is never negative nor above the
	// limit, whatever the headers say.
	rl := rateLimit{limit: l, remaining: min(max(r, 0), l)}
	if d, ok := s.headerSeconds(header(h, hRateLimitReset)); ok {
		rl.reset = d
	}
	return rl, true
}

// maxHeaderSeconds bounds the waits Retry-After and RateLimit-Reset ask
// for: a day, the longest window Microsoft meters. A longer one is read as
// a day rather than silence for years; one beyond time.Duration's range
// would otherwise wrap negative and cool nothing down.
const maxHeaderSeconds = 24 * 60 * 60

// maxHeaderWait is maxHeaderSeconds on the scheduler's clock.
func (s *Scheduler) maxHeaderWait() time.Duration {
	return maxHeaderSeconds * s.cfg.HeaderSecond
}

// headerSeconds reads a non-negative number of seconds as a wait on the
// scheduler's clock, at most maxHeaderWait.
func (s *Scheduler) headerSeconds(v string) (time.Duration, bool) {
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || !(secs >= 0) { // NaN fails every comparison
		return 0, false
	}
	if secs >= maxHeaderSeconds {
		return s.maxHeaderWait(), true
	}
	return time.Duration(secs * float64(s.cfg.HeaderSecond)), true
}

// retryAfter parses Retry-After: seconds, or an HTTP-date read against the
// scheduler's clock.
func (s *Scheduler) retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := header(h, hRetryAfter)
	if v == "" {
		return 0, false
	}
	if d, ok := s.headerSeconds(v); ok {
		return d, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), s.maxHeaderWait()), true
	}
	return 0, false
}

// observe reads a response's throttling signals into the app's and the
// tenant's state. known says whether the response is metered against g's
// app; a pre-authenticated URL given to us directly may belong to any app.
func (s *Scheduler) observe(g *grant, status int, h http.Header, known bool) verdict {
	_, hasRA := h[hRetryAfter]
	throttled := status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable && hasRA
	rl, hasRL := s.rateLimitHeaders(h)
	v := vOK
	switch {
	case throttled:
		v = vThrottled
	case status == http.StatusInternalServerError || status == http.StatusBadGateway ||
		status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout:
		v = vTransient
	}
	s.mu.Lock()
	now := s.clock.Now()
	ns := s.ns(now)
	s.restampLocked(ns, g)
	s.settleLocked(g, g.inflight) // answered: the server has counted it
	if !throttled && !hasRL {
		s.mu.Unlock()
		return v
	}
	var ev throttleEvent
	if hasRL && known {
		ev.shared = s.rateLimitLocked(now, ns, g, rl)
		ev.sharedRU = s.sharedLimit
	}
	if throttled {
		ev = s.throttleLocked(now, g, status, h, rl, hasRL && known, ev.shared)
	}
	s.mu.Unlock()
	ev.log(s.log)
	return v
}

// restampLocked moves g's charge to now, when its response arrived. The
// server charged the request somewhere between our grant and this moment
// (later by the network and by however long the goroutine waited to run:
// on a time-scaled clock a few real milliseconds are seconds); counted from
// the grant, our windows could drop the charge before the server's do.
func (s *Scheduler) restampLocked(now int64, g *grant) {
	if g.ru <= 0 || now == g.ns {
		return
	}
	g.app.b.restamp(now, g.ns, g.ru)
	s.tenant.restamp(now, g.ns, g.ru)
	s.combined.restamp(now, g.ns, g.ru)
	g.ns = now
}

// rateLimitLocked reads RateLimit headers (sent once an app used 80 % of
// its minute budget). It reports whether they made the scheduler switch to
// one combined budget.
//
// The server's count for the app's bucket is limit-remaining. Of our own
// requests it has counted at least those answered already; requests still
// in flight may reach it later (even ones sent before this one), so they
// are left out of our side of the comparison. If the server's count is
// clearly more than this app sent itself and the other apps' traffic
// explains the difference, the apps share one bucket. If only 10 % or less
// remains and the server counts more than we account for, the excess is
// booked against the bucket until RateLimit-Reset, so that the app sends at
// most what remains until then.
func (s *Scheduler) rateLimitLocked(now time.Time, ns int64, g *grant, rl rateLimit) bool {
	a := g.app
	serverUsed := rl.limit - rl.remaining
	own := max(a.b.win.used(ns)-a.inflight, 0)
	all := max(s.combined.win.used(ns)-s.inflight, 0)
	if s.sh != nil {
		// The other agents' traffic on this app is not a shared bucket:
		// count it as the app's own.
		var others int64
		for _, o := range s.apps {
			others += s.sharedUsedLocked(o.credit, now)
		}
		own = max(own, s.sharedUsedLocked(a.credit, now)-a.inflight)
		all = max(all, others-s.inflight)
	}
	tol := max(rl.limit/20, 10)
	entered := false
	if len(s.apps) > 1 {
		excess := serverUsed - own
		if excess > tol && 2*(all-own) >= excess {
			s.sharedEvidence = now
			if !s.shared {
				s.sharedVotes++
				if s.sharedVotes >= sharedVotes {
					s.shared, s.sharedLimit = true, rl.limit
					s.sharedSwitches++
					s.combined.factor = 1
					s.combined.setCap(now, rl.limit, int64(s.cfg.Limits.AppPer24h))
					entered = true
				}
			}
		} else if !s.shared && excess <= tol {
			s.sharedVotes = 0
		}
	}
	switch {
	case s.shared && rl.limit != s.sharedLimit:
		s.sharedLimit = rl.limit
		s.combined.setCap(now, rl.limit, s.combined.capDay)
	case !s.shared && rl.limit != a.b.capWin:
		// The server knows the app's limit better than the licence table
		// (an older tier, a QuotaMultiplier): adopt it.
		a.b.setCap(now, rl.limit, a.b.capDay)
	}
	b, model := a.b, own
	if s.shared {
		b, model = s.combined, all
	}
	if ext := serverUsed - model; rl.remaining*10 <= rl.limit && ext > 0 {
		// From now on the bucket holds our current count plus ext: the app
		// may send what remains, less what is in flight, until the reset.
		b.ext, b.extUntil = ext, now.Add(max(rl.reset, s.cfg.HeaderSecond))
	} else {
		b.ext = 0 // the latest word replaces an older one
	}
	return entered
}

type throttleEvent struct {
	happened   bool
	shared     bool // the pool switched to one combined budget
	sharedRU   int64
	clientID   string
	status     int
	retryAfter time.Duration
	cooldown   time.Duration
	scope      string
	decreased  bool
	rate       float64
}

func (e throttleEvent) log(l *zap.Logger) {
	if e.shared {
		l.Info("the apps share one bucket: scheduling them as one budget", zap.Int64("ru_per_minute", e.sharedRU))
	}
	if e.happened {
		l.Info("throttled", zap.String("client_id", e.clientID), zap.Int("status", e.status),
			zap.Duration("retry_after", e.retryAfter), zap.Duration("cooldown", e.cooldown), zap.String("scope", e.scope),
			zap.Bool("rate_decreased", e.decreased), zap.Float64("rate_ru_per_minute", e.rate))
	}
}

// throttleLocked handles a 429 or a 503 with Retry-After.
func (s *Scheduler) throttleLocked(now time.Time, g *grant, status int, h http.Header, rl rateLimit, appLimit, entered bool) throttleEvent {
	a := g.app
	ev := throttleEvent{happened: true, shared: entered, sharedRU: s.sharedLimit, clientID: a.id, status: status}
	if status == http.StatusServiceUnavailable {
		a.t503++
	} else {
		a.t429++
	}
	s.throttled++
	s.jobLocked(g.job).throttled++
	ra, ok := s.retryAfter(h, now)
	if !ok {
		// No Retry-After: back off exponentially per app, 1 s to 64 s.
		if now.Sub(a.cooldownUntil) > time.Minute {
			a.streak = 0
		}
		ra = time.Second << min(a.streak, 6)
	}
	a.streak++
	ev.retryAfter = ra
	switch {
	case appLimit:
		// The app's minute budget: honour the greater of Retry-After and
		// RateLimit-Reset.
		cd := max(ra, rl.reset)
		a.cool(now, now.Add(cd))
		ev.cooldown = cd
		if s.shared {
			// One bucket for all: every app would get the same answer.
			if until := now.Add(cd); until.After(s.sharedPauseUntil) {
				s.sharedPauseUntil, s.sharedPauseSetAt = until, now
			}
			s.publishLocked(now, ScopeShared, "", now.Add(cd))
			ev.scope, ev.decreased, ev.rate = "shared", s.combined.decrease(now), s.combined.ratePerMinute()
		} else {
			ev.scope = "app"
			s.publishLocked(now, ScopeApp, a.id, now.Add(cd))
			if rl.remaining == 0 {
				ev.decreased = a.b.decrease(now)
			}
			ev.rate = a.b.ratePerMinute()
		}
	default:
		// No RateLimit headers: another limit (tenant, 24 h, global) fired;
		// Microsoft asks to pause everything.
		until := now.Add(ra)
		a.cool(now, until)
		if until.After(s.pauseUntil) {
			s.pauseUntil, s.pauseSetAt = until, now
		}
		s.publishLocked(now, ScopeTenant, "", until)
		ev.cooldown = ra
		ev.scope, ev.decreased, ev.rate = "tenant", s.tenant.decrease(now), s.tenant.ratePerMinute()
	}
	return ev
}

// batchResponse is the part of a $batch response that carries throttling.
type batchResponse struct {
	Responses []struct {
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
	} `json:"responses"`
}

// inspectBatch finds throttled sub-requests in a $batch response and cools
// the app down for their longest Retry-After. The caller still gets the
// whole response and resends the failed sub-requests itself.
func (s *Scheduler) inspectBatch(g *grant, resp *http.Response) {
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBatchResponse+1))
	rest := resp.Body
	switch {
	case err != nil:
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), errReader{err}), rest}
		return
	case len(data) > maxBatchResponse:
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), rest), rest}
		return
	}
	rest.Close()
	resp.Body = io.NopCloser(bytes.NewReader(data))
	var br batchResponse
	if json.Unmarshal(data, &br) != nil {
		return
	}
	var longest time.Duration
	n := 0
	s.mu.Lock()
	now := s.clock.Now()
	for _, r := range br.Responses {
		h := http.Header{}
		for k, v := range r.Headers {
			h.Set(k, v)
		}
		_, hasRA := h[hRetryAfter]
		if r.Status != http.StatusTooManyRequests && (r.Status != http.StatusServiceUnavailable || !hasRA) {
			continue
		}
		n++
		ra, ok := s.retryAfter(h, now)
		if !ok {
			ra = time.Second
		}
		longest = max(longest, ra)
	}
	if n > 0 {
		a := g.app
		a.t429 += int64(n)
		s.throttled += int64(n)
		s.jobLocked(g.job).throttled += int64(n)
		a.cool(now, now.Add(longest))
		s.publishLocked(now, ScopeApp, a.id, now.Add(longest))
		a.b.decrease(now)
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("throttled inside $batch", zap.String("client_id", g.app.id), zap.Int("sub_requests", n),
			zap.Duration("retry_after", longest))
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

var _ http.RoundTripper = (*Scheduler)(nil)
