package scheduler

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// fakeApp is an App whose token and usability tests control.
type fakeApp struct {
	id string

	mu       sync.Mutex
	tokenErr error
	unusable bool
	tokens   int
}

func (a *fakeApp) ID() string { return a.id }

func (a *fakeApp) Token(context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokens++
	if a.tokenErr != nil {
		return "", a.tokenErr
	}
	return "tok-" + a.id, nil
}

func (a *fakeApp) Usable() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.unusable
}

func (a *fakeApp) set(tokenErr error, unusable bool) {
	a.mu.Lock()
	a.tokenErr, a.unusable = tokenErr, unusable
	a.mu.Unlock()
}

func fakeApps(ids ...string) ([]*fakeApp, AppSource) {
	apps := make([]*fakeApp, len(ids))
	list := make([]App, len(ids))
	for i, id := range ids {
		apps[i] = &fakeApp{id: id}
		list[i] = apps[i]
	}
	return apps, AppSourceFunc(func() []App { return list })
}

// seen is a request as the fake server got it.
type seen struct {
	app    string // from the bearer token; "" if none
	method string
	url    string
	header http.Header
	body   string
	at     time.Time
}

// fakeServer is an in-process RoundTripper whose answers a test scripts.
type fakeServer struct {
	clock Clock

	mu     sync.Mutex
	seen   []seen
	handle func(r *http.Request, app string, n int) (*http.Response, error) // n: index of the request
}

func (f *fakeServer) RoundTrip(r *http.Request) (*http.Response, error) {
	app, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer tok-")
	var body string
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		body = string(b)
	}
	f.mu.Lock()
	n := len(f.seen)
	f.seen = append(f.seen, seen{app: app, method: r.Method, url: r.URL.String(), header: r.Header.Clone(), body: body, at: f.clock.Now()})
	h := f.handle
	f.mu.Unlock()
	if h == nil {
		return respond(r, 200, nil), nil
	}
	resp, err := h(r, app, n)
	if resp != nil {
		resp.Request = r
	}
	return resp, err
}

func (f *fakeServer) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

// respond builds a response; headers come as name, value pairs.
func respond(r *http.Request, status int, body []byte, kv ...string) *http.Response {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return &http.Response{StatusCode: status, Status: strconv.Itoa(status) + " " + http.StatusText(status),
		Header: h, Body: io.NopCloser(strings.NewReader(string(body))), ContentLength: int64(len(body)), Request: r,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
}

// newTest returns a scheduler on a fake clock in front of a fake server.
func newTest(t *testing.T, cfg Config, src AppSource) (*Scheduler, *FakeClock, *fakeServer) {
	t.Helper()
	clock := NewFakeClock(t0)
	cfg.Clock = clock
	if cfg.Company == "" {
		cfg.Company = "Contoso"
	}
	srv := &fakeServer{clock: clock}
	s := New(zaptest.NewLogger(t), cfg, src, srv)
	t.Cleanup(func() { checkNoViolations(t, s) })
	return s, clock, srv
}

// checkNoViolations fails t if the scheduler ever granted a slot inside a
// cooldown it knew about. beginSend holds such requests back, so only this
// counter shows the bug.
func checkNoViolations(t *testing.T, s *Scheduler) {
	t.Helper()
	if v := s.Stats().Violations; v != 0 {
		t.Errorf("%d slots granted inside a known Retry-After window", v)
	}
}

const graph = "https://graph.example/v1.0"

func get(t *testing.T, s *Scheduler, url string) (*http.Response, error) {
	t.Helper()
	return getCtx(context.Background(), t, s, url)
}

func getCtx(ctx context.Context, t *testing.T, s *Scheduler, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.RoundTrip(req)
	if resp != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

func mustGet(t *testing.T, s *Scheduler, url string) *http.Response {
	t.Helper()
	resp, err := get(t, s, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// appsOf returns the app of each request in order.
func appsOf(reqs []seen) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = r.app
	}
	return out
}

var errTest = errors.New("AADSTS700027: certificate expired (test)")
