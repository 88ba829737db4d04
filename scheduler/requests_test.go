package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// contentServer serves /content with a redirect to a download URL naming
// the app, and the download URL itself, checking what each must carry.
func contentServer(t *testing.T, srv *fakeServer, download func(r *http.Request, n int) *http.Response) {
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/content"):
			if r.Header.Get("Range") != "" {
				t.Errorf("/content carried Range %q", r.Header.Get("Range"))
			}
			if app == "" {
				t.Error("/content without a bearer token")
			}
			return respond(r, 302, nil, "Location", "https://dl.example/_layouts/15/download.aspx?tempauth=secret&app="+app), nil
		case r.URL.Host == "dl.example":
			if a := r.Header.Get("Authorization"); a != "" {
				t.Errorf("download URL got Authorization %q", a)
			}
			return download(r, n), nil
		}
		return respond(r, 200, nil), nil
	}
}

func TestContentRedirectFollowedWithRange(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	contentServer(t, srv, func(r *http.Request, n int) *http.Response {
		if got := r.Header.Get("Range"); got != "bytes=0-4" {
			t.Errorf("download Range %q, want the caller's", got)
		}
		return respond(r, 206, []byte("hello"), "Content-Range", "bytes 0-4/11")
	})
	req, _ := http.NewRequest(http.MethodGet, graph+"/drives/d/items/i/content", nil)
	req.Header.Set("Range", "bytes=0-4")
	resp, err := s.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || string(body) != "hello" {
		t.Fatalf("caller got %d %q, want 206 hello", resp.StatusCode, body)
	}
	reqs := srv.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want /content and the download", len(reqs))
	}
	u, _ := url.Parse(reqs[1].url)
	if u.Query().Get("app") != reqs[0].app {
		t.Fatalf("download URL of app %s fetched under app %s's slot", u.Query().Get("app"), reqs[0].app)
	}
	for i, r := range reqs {
		if !strings.HasPrefix(r.header.Get("User-Agent"), "ISV|Contoso|backup-proxy/") {
			t.Errorf("request %d without the ISV User-Agent", i)
		}
	}
	st := s.Stats()
	if a := st.Apps[reqs[0].app]; a.RULastMinute != 2 || a.Requests != 2 {
		t.Fatalf("app stats: %d RU, %d requests; want 2 and 2 (the call and the download)", a.RULastMinute, a.Requests)
	}
	if st.Attempts != 1 {
		t.Fatalf("attempts %d, want 1", st.Attempts)
	}
}

func TestContentExpiredURLAsksAgain(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	contentServer(t, srv, func(r *http.Request, n int) *http.Response {
		if n == 1 {
			return respond(r, 401, []byte(`{"error":{"message":"The download URL has expired."}}`))
		}
		return respond(r, 200, []byte("whole file"))
	})
	resp := mustGet(t, s, graph+"/drives/d/items/i/content")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := len(srv.requests()); n != 4 {
		t.Fatalf("%d requests, want /content, 401, /content, 200", n)
	}
	if st := s.Stats(); st.Attempts != 2 || st.Retries != 1 {
		t.Fatalf("attempts %d retries %d", st.Attempts, st.Retries)
	}
}

func TestContentWithoutRedirectChargesOneRU(t *testing.T) {
	_, src := fakeApps("a")
	s, _, _ := newTest(t, Config{}, src)
	mustGet(t, s, graph+"/drives/d/items/i/content") // the fake answers 200 directly
	if ru := s.Stats().Apps["a"].RULastMinute; ru != 1 {
		t.Fatalf("RU charged %d, want 1 (no download URL was fetched)", ru)
	}
}

func TestDownloadURLThrottleCoolsTheApp(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	contentServer(t, srv, func(r *http.Request, n int) *http.Response {
		if n == 1 {
			return respond(r, 429, nil, "Retry-After", "10", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
		}
		return respond(r, 200, []byte("x"))
	})
	mustGet(t, s, graph+"/drives/d/items/i/content")
	reqs := srv.requests()
	if len(reqs) != 4 || reqs[2].app == reqs[0].app {
		t.Fatalf("requests %v: the retry should use the other app", appsOf(reqs))
	}
	if cd := s.Stats().Apps[reqs[0].app].CooldownUntil; !cd.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("app %s cooldown until %v, want +10s", reqs[0].app, cd)
	}
}

func TestDirectDownloadURL(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	throttleApp(srv, "", "Retry-After", "5") // download URLs carry no token: app ""
	req, _ := http.NewRequest(http.MethodGet, "https://dl.example/_layouts/15/download.aspx?tempauth=x", nil)
	req.Header.Set("Authorization", "Bearer leaked")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := s.RoundTrip(req.WithContext(ctx))
	if !errors.Is(err, ErrDeadline) {
		t.Fatalf("err = %v: a throttled URL of unknown owner should pause the tenant", err)
	}
	if a := srv.requests()[0].header.Get("Authorization"); a != "" {
		t.Fatalf("pre-authenticated URL sent with Authorization %q", a)
	}
	if st := s.Stats(); !st.PausedUntil.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("paused until %v", st.PausedUntil)
	}
}

// trackedBody records whether it was closed.
type trackedBody struct {
	io.Reader
	closed *atomic.Int32
}

func (b trackedBody) Close() error { b.closed.Add(1); return nil }

// runAdvancing runs f in a goroutine and advances the clock to each timer
// it waits on, steps times. If f returns before it waited steps times, that
// is an error.
func runAdvancing(clock *FakeClock, steps int, f func() error) error {
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		err := f()
		cancel()
		done <- err
	}()
	for i := range steps {
		if clock.BlockUntilContext(ctx, 1) != nil {
			return fmt.Errorf("returned after %d waits, want %d: %v", i, steps, <-done)
		}
		at, _ := clock.Next()
		clock.Advance(at.Sub(clock.Now()))
	}
	return <-done
}

func TestTransientErrorsRetriedOnAnotherAppWithBody(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(r *http.Request) (*http.Response, error)
	}{
		{"500", func(r *http.Request) (*http.Response, error) { return respond(r, 500, nil), nil }},
		{"503 without Retry-After", func(r *http.Request) (*http.Response, error) { return respond(r, 503, nil), nil }},
		{"500 with RateLimit headers", func(r *http.Request) (*http.Response, error) {
			// Near the budget every answer carries them; a 500 is still a 500.
			return respond(r, 500, nil, "RateLimit-Limit", "1250", "RateLimit-Remaining", "200", "RateLimit-Reset", "3"), nil
		}},
		{"connection reset", func(r *http.Request) (*http.Response, error) {
			return nil, errors.New("read tcp: connection reset by peer")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, src := fakeApps("a", "b")
			s, clock, srv := newTest(t, Config{}, src)
			var closed atomic.Int32
			srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
				if n == 0 {
					resp, err := tc.fail(r)
					if resp != nil {
						resp.Body = trackedBody{resp.Body, &closed}
					}
					return resp, err
				}
				return respond(r, 200, []byte(`{"responses":[]}`)), nil
			}
			const body = `{"requests":[{"id":"1","method":"GET","url":"/drives/d/items/i"}]}`
			req, _ := http.NewRequest(http.MethodPost, graph+"/$batch", io.NopCloser(strings.NewReader(body)))
			req.GetBody = nil // not replayable by itself: the scheduler must buffer it
			err := runAdvancing(clock, 1, func() error {
				resp, err := s.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			reqs := srv.requests()
			if len(reqs) != 2 || reqs[0].app == reqs[1].app {
				t.Fatalf("attempts on apps %v, want the retry on the other app", appsOf(reqs))
			}
			if reqs[0].body != body || reqs[1].body != body {
				t.Fatalf("bodies %q and %q, want the batch twice", reqs[0].body, reqs[1].body)
			}
			if d := reqs[1].at.Sub(reqs[0].at); d < 250*time.Millisecond || d > 500*time.Millisecond {
				t.Fatalf("retried after %v, want a backoff in [250ms, 500ms]", d)
			}
			if tc.name != "connection reset" && closed.Load() != 1 {
				t.Fatal("the failed response's body was not closed")
			}
			if st := s.Stats(); st.Attempts != 2 || st.Retries != 1 || st.Apps["a"].RULastMinute+st.Apps["b"].RULastMinute != 2 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestNonIdempotentNotRetriedAfter500(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) { return respond(r, 500, nil), nil }
	req, _ := http.NewRequest(http.MethodPost, graph+"/drives/d/items/i/children", strings.NewReader(`{"name":"x"}`))
	resp, err := s.RoundTrip(req)
	if err != nil || resp.StatusCode != 500 {
		t.Fatalf("got %v, %v; want the 500 handed back (the folder may have been created)", resp, err)
	}
	resp.Body.Close()
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d attempts", n)
	}
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, clock, srv := newTest(t, Config{MaxAttempts: 3}, src)
	var closed atomic.Int32
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		resp := respond(r, 502, nil)
		resp.Body = trackedBody{resp.Body, &closed}
		return resp, nil
	}
	err := runAdvancing(clock, 2, func() error { _, err := get(t, s, graph+"/drives/d/items/i"); return err })
	var gu *GiveUpError
	if !errors.Is(err, ErrGaveUp) || !errors.As(err, &gu) || gu.Attempts != 3 || !strings.Contains(err.Error(), "502") {
		t.Fatalf("err = %v, want a GiveUpError after 3 attempts naming the 502", err)
	}
	if n := len(srv.requests()); n != 3 || closed.Load() != 3 {
		t.Fatalf("%d attempts, %d bodies closed; want 3 and 3", n, closed.Load())
	}
	reqs := srv.requests()
	if d1, d2 := reqs[1].at.Sub(reqs[0].at), reqs[2].at.Sub(reqs[1].at); d1 > 500*time.Millisecond || d2 < 500*time.Millisecond || d2 > time.Second {
		t.Fatalf("backoffs %v, %v: want exponential (≤500ms, then 500ms–1s)", d1, d2)
	}
}

func Test429WithoutRetryAfter(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, _, srv := newTest(t, Config{}, src)
	throttleApp(srv, "a", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
	mustGet(t, s, graph+"/drives/d/items/i")
	if cd := s.Stats().Apps["a"].CooldownUntil; !cd.Equal(t0.Add(time.Second)) {
		t.Fatalf("cooldown until %v, want a 1 s fallback", cd)
	}
}

func TestBatchSubRequestThrottled(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, clock, srv := newTest(t, Config{}, src)
	const answer = `{"responses":[{"id":"1","status":200,"body":{}},{"id":"2","status":429,"headers":{"retry-after":"7"},"body":{}}]}`
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "$batch") {
			return respond(r, 200, []byte(answer)), nil
		}
		return respond(r, 200, nil), nil
	}
	req, _ := http.NewRequest(http.MethodPost, graph+"/$batch",
		strings.NewReader(`{"requests":[{"id":"1","method":"GET","url":"/drives/d/items/i"},{"id":"2","method":"GET","url":"/drives/d/items/j"}]}`))
	resp, err := s.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != answer {
		t.Fatalf("caller got %q", got)
	}
	st := s.Stats()
	if !st.Apps["a"].CooldownUntil.Equal(t0.Add(7*time.Second)) || st.Throttled != 1 || st.Apps["a"].RULastMinute != 2 {
		t.Fatalf("after a throttled sub-request: %+v", st.Apps["a"])
	}
	for range 4 {
		mustGet(t, s, graph+"/drives/d/items/i")
		clock.Advance(time.Second)
	}
	for _, r := range srv.requests()[1:] {
		if r.app == "a" {
			t.Fatal("app a used during its sub-request's Retry-After")
		}
	}
}

func TestDayBudget(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, clock, srv := newTest(t, Config{Limits: Limits{AppPerMinute: 100_000, AppPer24h: 50, TenantPer5Min: 1_000_000}}, src)
	for range 100 {
		mustGet(t, s, graph+"/drives/d/items/i")
		clock.Advance(time.Second)
	}
	count := map[string]int{}
	for _, r := range srv.requests() {
		count[r.app]++
	}
	if count["a"] != 50 || count["b"] != 50 {
		t.Fatalf("spread %v, want 50 each", count)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	_, err := getCtx(ctx, t, s, graph+"/drives/d/items/i")
	var de *DeadlineError
	if !errors.As(err, &de) || de.Wait < 23*time.Hour {
		t.Fatalf("err = %v: with both 24 h budgets spent the next slot is a day away", err)
	}
	if st := s.Stats().Apps["a"]; st.RULast24h != 50 {
		t.Fatalf("RU last 24 h = %d", st.RULast24h)
	}
	// A day later the budget is back.
	clock.Advance(24*time.Hour + 2*time.Minute)
	mustGet(t, s, graph+"/drives/d/items/i")
}

func TestAIMD(t *testing.T) {
	_, src := fakeApps("a", "b")
	s, clock, srv := newTest(t, Config{}, src)
	throttleNext := false
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		if app == "a" && throttleNext {
			throttleNext = false
			return respond(r, 429, nil, "Retry-After", "1", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0"), nil
		}
		return respond(r, 200, nil), nil
	}
	full := s.Stats().Apps["a"].RatePerMinute
	throttleOnce := func() {
		throttleNext = true
		for throttleNext {
			mustGet(t, s, graph+"/drives/d/items/i")
		}
	}
	near := func(got, want float64) bool { return got > want*0.999 && got < want*1.001 }

	throttleOnce()
	if r := s.Stats().Apps["a"].RatePerMinute; !near(r, full/2) {
		t.Fatalf("after a 429: %v RU/min, want half of %v", r, full)
	}
	clock.Advance(2 * time.Second)
	throttleOnce() // within the holdoff: the same overload, not a new one
	if r := s.Stats().Apps["a"].RatePerMinute; !near(r, full/2) {
		t.Fatalf("second 429 within the holdoff: %v RU/min, want still half", r)
	}
	clock.Advance(decreaseHoldoff)
	throttleOnce()
	if r := s.Stats().Apps["a"].RatePerMinute; !near(r, full/4) {
		t.Fatalf("after a later 429: %v RU/min, want a quarter", r)
	}
	clock.Advance(recoveryInterval)
	if r := s.Stats().Apps["a"].RatePerMinute; !near(r, full*(0.25+recoveryStep)) {
		t.Fatalf("after %v: %v RU/min, want +%v of the full rate", recoveryInterval, r, recoveryStep)
	}
	clock.Advance(15 * recoveryInterval)
	if r := s.Stats().Apps["a"].RatePerMinute; !near(r, full) {
		t.Fatalf("after recovery: %v RU/min, want %v", r, full)
	}
	if r := s.Stats().Apps["b"].RatePerMinute; !near(r, full) {
		t.Fatalf("app b slowed down too: %v", r)
	}
}

func TestJobStatsAndRefresh(t *testing.T) {
	apps, src := fakeApps("a")
	var list []App
	list = append(list, apps[0])
	dynamic := AppSourceFunc(func() []App { return list })
	_ = src
	s, _, srv := newTest(t, Config{}, dynamic)
	throttleApp(srv, "a", "Retry-After", "1", "RateLimit-Limit", "1250", "RateLimit-Remaining", "0")
	// A new app joins the pool; Refresh puts it in rotation.
	list = append(list, &fakeApp{id: "z"})
	s.Refresh()
	req, _ := http.NewRequestWithContext(WithJob(context.Background(), "job-1"), http.MethodGet, graph+"/drives/d/items/i", nil)
	resp, err := s.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := appsOf(srv.requests()); len(got) != 2 || got[1] != "z" {
		t.Fatalf("apps used %v, want a (throttled) then the new app z", got)
	}
	js := s.JobStats("job-1")
	if js.Requests != 1 || js.Attempts != 2 || js.Throttled != 1 || js.Failed != 0 {
		t.Fatalf("job stats %+v", js)
	}
	if other := s.JobStats("job-2"); other != (JobStats{}) {
		t.Fatalf("unknown job has stats %+v", other)
	}
	s.ForgetJob("job-1")
	if js := s.JobStats("job-1"); js != (JobStats{}) {
		t.Fatalf("forgotten job has stats %+v", js)
	}
	st := s.Stats()
	if len(st.Apps) != 2 || st.Requests != 1 || st.Attempts != 2 || st.Retries != 1 || st.RULastMinute != 2 || st.RULast5Min != 2 || st.RULast24h != 2 {
		t.Fatalf("tenant stats %+v", st)
	}
}

// queueWaiters queues n waiters of job and class without dispatching.
func queueWaiters(s *Scheduler, job string, class Class, n int) []*waiter {
	var ws []*waiter
	for range n {
		w := &waiter{job: job, class: class, cost: 1, since: s.clock.Now(), done: make(chan struct{})}
		s.queues[class].push(w, false)
		ws = append(ws, w)
	}
	return ws
}

// serveOrder runs the clock until every waiter is served and returns them
// in the order they were.
func serveOrder(t *testing.T, s *Scheduler, clock *FakeClock, ws []*waiter) []*waiter {
	t.Helper()
	s.mu.Lock()
	s.dispatchLocked(clock.Now())
	s.mu.Unlock()
	for range 10_000 {
		s.mu.Lock()
		all := true
		for _, w := range ws {
			all = all && w.finished
		}
		s.mu.Unlock()
		if all {
			break
		}
		clock.Advance(100 * time.Millisecond)
	}
	out := append([]*waiter(nil), ws...)
	for _, w := range out {
		if !w.finished || w.err != nil {
			t.Fatalf("waiter not served: %v", w.err)
		}
	}
	// Sort by grant order.
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].order < out[i].order {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func label(ws []*waiter) string {
	var b strings.Builder
	for _, w := range ws {
		if w.class == ClassMetadata {
			b.WriteByte('M')
		} else {
			b.WriteString(strings.ToUpper(w.job[:1]))
		}
	}
	return b.String()
}

func TestFairnessAcrossJobs(t *testing.T) {
	_, src := fakeApps("a")
	s, clock, _ := newTest(t, Config{Limits: Limits{AppPerMinute: 60, AppPer24h: 1e6, TenantPer5Min: 1e6}}, src)
	s.mu.Lock()
	ws := queueWaiters(s, "huge", ClassDownload, 12)
	ws = append(ws, queueWaiters(s, "small", ClassDownload, 3)...)
	s.mu.Unlock()
	got := label(serveOrder(t, s, clock, ws))
	if want := "HSHSHSHHHHHHHHH"; got != want {
		t.Fatalf("served %s, want %s: the small job's requests alternate with the huge job's", got, want)
	}
}

func TestMetadataNotStarvedByDownloads(t *testing.T) {
	_, src := fakeApps("a")
	s, clock, _ := newTest(t, Config{Limits: Limits{AppPerMinute: 60, AppPer24h: 1e6, TenantPer5Min: 1e6}}, src)
	s.mu.Lock()
	ws := queueWaiters(s, "d", ClassDownload, 6)
	ws = append(ws, queueWaiters(s, "m", ClassMetadata, 10)...)
	s.mu.Unlock()
	got := label(serveOrder(t, s, clock, ws))
	// Metadata first, but every metadataWeight-th grant goes to a download
	// so that downloads are not starved either.
	if want := "MMMMDMMMMDMMDDDD"; got != want {
		t.Fatalf("served %s, want %s", got, want)
	}
}

func TestSharedBucketDetectedAndPausedTogether(t *testing.T) {
	_, src := fakeApps("a", "b", "c")
	s, clock, srv := newTest(t, Config{}, src)
	// The server meters all three apps in one bucket of 40 RU/min and says
	// so from 80 % on; after the switch, one 429 with Retry-After 5.
	used := 0
	throttle := false
	srv.handle = func(r *http.Request, app string, n int) (*http.Response, error) {
		used++
		if throttle {
			throttle = false
			// No RateLimit-Reset: the 5 s come from Retry-After alone.
			return respond(r, 429, nil, "Retry-After", "5", "RateLimit-Limit", "40", "RateLimit-Remaining", "0"), nil
		}
		if used*5 >= 40*4 {
			return respond(r, 200, nil, "RateLimit-Limit", "40", "RateLimit-Remaining", fmt.Sprint(max(40-used, 0)), "RateLimit-Reset", "30"), nil
		}
		return respond(r, 200, nil), nil
	}
	for range 34 {
		mustGet(t, s, graph+"/drives/d/items/i")
		clock.Advance(time.Second)
	}
	st := s.Stats()
	if !st.SharedBudget || st.SharedLimit != 40 || s.sharedSwitches != 1 {
		t.Fatalf("after the bucket filled across apps: shared %v limit %d switches %d", st.SharedBudget, st.SharedLimit, s.sharedSwitches)
	}
	// The three apps together are now held to the bucket, although each
	// alone sent only about a third of it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for {
		_, err := getCtx(ctx, t, s, graph+"/drives/d/items/i")
		if errors.Is(err, ErrDeadline) {
			break
		}
		if err != nil || len(srv.requests()) > 40 {
			t.Fatalf("err = %v after %d requests: the shared bucket holds 40", err, len(srv.requests()))
		}
	}
	for app, st := range s.Stats().Apps {
		if st.RULastMinute > 14 {
			t.Fatalf("app %s sent %d RU", app, st.RULastMinute)
		}
	}
	clock.Advance(2 * time.Minute)
	sent := len(srv.requests())
	used = 0
	throttle = true
	done := make(chan error, 1)
	go func() {
		_, err := get(t, s, graph+"/drives/d/items/i")
		done <- err
	}()
	clock.BlockUntil(1)
	if n := len(srv.requests()); n != sent+1 {
		t.Fatalf("%d requests, want the throttled one to wait", n-sent)
	}
	if at, _ := clock.Next(); at.Sub(clock.Now()) != 5*time.Second {
		t.Fatalf("retry scheduled in %v, want 5 s: a shared bucket's 429 pauses every app", at.Sub(clock.Now()))
	}
	clock.Advance(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
