package graphsim_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

func limited(clock *graphsim.ManualClock, lim graphsim.Limits) graphsim.Options {
	o := small(clock)
	o.Limits = &lim
	return o
}

func header(r response, k string) int {
	v, err := strconv.Atoi(r.header.Get(k))
	if err != nil {
		return -1
	}
	return v
}

func TestLimitsForLicensesTiers(t *testing.T) {
	for _, tc := range []struct {
		licenses int
		want     graphsim.Limits
	}{
		{0, graphsim.Limits{1250, 1_200_000, 18_750}},
		{1000, graphsim.Limits{1250, 1_200_000, 18_750}},
		{1001, graphsim.Limits{2500, 2_400_000, 37_500}},
		{15000, graphsim.Limits{3750, 3_600_000, 56_250}},
		{50000, graphsim.Limits{5000, 4_800_000, 75_000}},
		{50001, graphsim.Limits{6250, 6_000_000, 93_750}},
	} {
		if got := graphsim.LimitsForLicenses(tc.licenses); got != tc.want {
			t.Errorf("LimitsForLicenses(%d) = %+v, want %+v", tc.licenses, got, tc.want)
		}
	}
}

func TestMinuteBucketThrottlesAndRefills(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, limited(clock, graphsim.Limits{AppPerMinute: 10, AppPer24h: 1000, TenantPer5Min: 1000}))
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID // 1 RU

	for i := 1; i <= 10; i++ {
		if r := c.get(site); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
		clock.Advance(time.Second)
	}
	r := c.get(site)
	if r.status != 429 || r.errorCode(t) != "TooManyRequests" {
		t.Fatalf("11th request: %d %s", r.status, r.body)
	}
	ra := header(r, "Retry-After")
	// 11 RU are charged (the throttled request too). The next request fits
	// when usage is at most 9: the requests of t0 and t0+1s must leave the
	// window, at t0+61s; now is t0+10s.
	if ra != 51 {
		t.Fatalf("Retry-After %d, want 51", ra)
	}
	if header(r, "RateLimit-Limit") != 10 || header(r, "RateLimit-Remaining") != 0 || header(r, "RateLimit-Reset") != ra {
		t.Fatalf("RateLimit headers %v", r.header)
	}
	// Throttled requests are charged too, so waiting exactly Retry-After
	// frees only what has left the window since.
	clock.Advance(time.Duration(ra) * time.Second)
	if r := c.get(site); r.status != 200 {
		t.Fatalf("after Retry-After: %d %s", r.status, r.body)
	}
	st := s.Stats()
	if st.Tenant.Throttled429 != 1 || st.Tenant.Requests != 12 || st.Tenant.RU != 12 || st.Tenant.RetryAfterViolations != 0 {
		t.Fatalf("stats %+v", st.Tenant)
	}
}

func TestRateLimitHeadersFromEightyPercent(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, limited(clock, graphsim.Limits{AppPerMinute: 100, AppPer24h: 100000, TenantPer5Min: 100000}))
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID

	for i := 1; i <= 79; i++ {
		r := c.get(site)
		if r.status != 200 || r.header.Get("RateLimit-Limit") != "" {
			t.Fatalf("request %d (%d%%): status %d, RateLimit-Limit %q", i, i, r.status, r.header.Get("RateLimit-Limit"))
		}
	}
	clock.Advance(10 * time.Second)
	r := c.get(site) // 80 RU used: 80 %
	if r.status != 200 || header(r, "RateLimit-Limit") != 100 || header(r, "RateLimit-Remaining") != 20 {
		t.Fatalf("at 80%%: %d %v", r.status, r.header)
	}
	// Usage falls under 80 % when the first 79 requests (at t0) leave.
	if reset := header(r, "RateLimit-Reset"); reset != 50 {
		t.Fatalf("RateLimit-Reset %d, want 50", reset)
	}
	clock.Advance(51 * time.Second)
	if r := c.get(site); r.status != 200 || r.header.Get("RateLimit-Limit") != "" {
		t.Fatalf("after the window slid: %d %v", r.status, r.header)
	}
}

func Test24HourBucket(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := limited(clock, graphsim.Limits{AppPerMinute: 1000, AppPer24h: 30, TenantPer5Min: 100000})
	o.TokenLifetime = 48 * time.Hour
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID

	for i := range 30 {
		if r := c.get(site); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
		clock.Advance(10 * time.Minute) // spread over 5 hours: the minute bucket never matters
	}
	r := c.get(site)
	if r.status != 429 || r.header.Get("RateLimit-Limit") != "" {
		t.Fatalf("over 24h budget: %d %v", r.status, r.header)
	}
	// 31 RU charged; the next request fits once the requests of t0 and
	// t0+10m have left the 24 h window, at t0+24h10m; now is t0+5h.
	if ra := header(r, "Retry-After"); ra != 19*3600+600 {
		t.Fatalf("Retry-After %d s, want 19h10m", ra)
	}
	clock.Advance(time.Duration(header(r, "Retry-After")) * time.Second)
	if r := c.get(site); r.status != 200 {
		t.Fatalf("after the day window slid: %d %s", r.status, r.body)
	}
}

func TestTenantBucketSharedAcrossApps(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, limited(clock, graphsim.Limits{AppPerMinute: 1000, AppPer24h: 100000, TenantPer5Min: 20}))
	a := newClient(t, s, appByOrg(s, false))
	b := newClient(t, s, appByOrg(s, true))
	site := "/sites/" + s.Tenant().Sites[0].ID

	for i := range 20 {
		if r := a.get(site); r.status != 200 {
			t.Fatalf("app A request %d: %d", i, r.status)
		}
	}
	r := b.get(site)
	if r.status != 429 {
		t.Fatalf("app B after A used the tenant bucket: %d %s", r.status, r.body)
	}
	if r.header.Get("RateLimit-Limit") != "" || r.header.Get("Retry-After") == "" {
		t.Fatalf("tenant 429 must carry Retry-After and no RateLimit headers: %v", r.header)
	}
	if ra := header(r, "Retry-After"); ra < 299 || ra > 300 {
		t.Fatalf("Retry-After %d, want the 5-minute window", ra)
	}
}

func TestSharedRegimeOneBudgetForAllApps(t *testing.T) {
	for _, tc := range []struct {
		regime     graphsim.Regime
		wantStatus int
	}{
		{graphsim.RegimePerApp, 200},
		{graphsim.RegimeShared, 429},
	} {
		t.Run(string(tc.regime), func(t *testing.T) {
			clock := graphsim.NewManualClock(t0)
			o := limited(clock, graphsim.Limits{AppPerMinute: 10, AppPer24h: 100000, TenantPer5Min: 100000})
			o.Regime = tc.regime
			s := start(t, o)
			a := newClient(t, s, appByOrg(s, false))
			b := newClient(t, s, appByOrg(s, true))
			site := "/sites/" + s.Tenant().Sites[0].ID
			for range 10 {
				if r := a.get(site); r.status != 200 {
					t.Fatalf("app A: %d", r.status)
				}
			}
			r := b.get(site)
			if r.status != tc.wantStatus {
				t.Fatalf("app B: %d, want %d", r.status, tc.wantStatus)
			}
			if tc.regime == graphsim.RegimeShared && header(r, "RateLimit-Remaining") != 0 {
				t.Fatalf("shared budget exhaustion is an app limit: RateLimit headers expected, got %v", r.header)
			}
		})
	}
}

func TestRetryAfterHonouredVersusViolated(t *testing.T) {
	setup := func(t *testing.T) (*graphsim.Server, *graphsim.ManualClock, *client, string) {
		clock := graphsim.NewManualClock(t0)
		o := limited(clock, graphsim.Limits{AppPerMinute: 5, AppPer24h: 100000, TenantPer5Min: 100000})
		o.BlockAfterViolations = 3
		o.BlockDuration = 10 * time.Minute
		s := start(t, o)
		c := newClient(t, s, appByOrg(s, false))
		site := "/sites/" + s.Tenant().Sites[0].ID
		for range 5 {
			c.get(site)
		}
		clock.Advance(30 * time.Second)
		if r := c.get(site); r.status != 429 || header(r, "Retry-After") != 30 {
			t.Fatalf("expected 429 Retry-After 30: %d %v", r.status, r.header)
		}
		return s, clock, c, site
	}

	t.Run("honoured", func(t *testing.T) {
		s, clock, c, site := setup(t)
		clock.Advance(30 * time.Second)
		if r := c.get(site); r.status != 200 {
			t.Fatalf("after waiting: %d %v", r.status, r.header)
		}
		if v := s.Stats().Tenant.RetryAfterViolations; v != 0 {
			t.Fatalf("violations %d, want 0", v)
		}
	})

	t.Run("violated, escalated, blocked", func(t *testing.T) {
		s, clock, c, site := setup(t)
		clock.Advance(5 * time.Second) // well past the in-flight grace
		r := c.get(site)
		if r.status != 429 {
			t.Fatalf("violation: %d", r.status)
		}
		first := header(r, "Retry-After")
		if first <= 25 {
			t.Fatalf("escalated Retry-After %d, want more than the 25 s left", first)
		}
		clock.Advance(5 * time.Second)
		r = c.get(site)
		if second := header(r, "Retry-After"); r.status != 429 || second <= first {
			t.Fatalf("second violation: %d Retry-After %d, want > %d", r.status, second, first)
		}
		clock.Advance(5 * time.Second)
		r = c.get(site)
		if r.status != 503 || header(r, "Retry-After") != 600 {
			t.Fatalf("third violation should block: %d %v", r.status, r.header)
		}
		clock.Advance(9 * time.Minute)
		if r := c.get(site); r.status != 503 {
			t.Fatalf("still blocked: %d", r.status)
		}
		st := s.Stats().Tenant
		if st.RetryAfterViolations != 4 || st.Throttled503 != 2 || st.Throttled429 != 3 {
			t.Fatalf("stats %+v", st)
		}
		clock.Advance(2 * time.Minute)
		if r := c.get(site); r.status != 200 {
			t.Fatalf("after the block: %d %s", r.status, r.body)
		}
	})

	t.Run("in-flight requests are not violations", func(t *testing.T) {
		s, clock, c, site := setup(t)
		clock.Advance(100 * time.Millisecond)
		if r := c.get(site); r.status != 429 || header(r, "Retry-After") != 30 {
			t.Fatalf("in-flight request: %d %v", r.status, r.header)
		}
		if v := s.Stats().Tenant.RetryAfterViolations; v != 0 {
			t.Fatalf("violations %d, want 0", v)
		}
	})
}

func TestThrottled503AndTimeScale(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := limited(clock, graphsim.Limits{AppPerMinute: 3, AppPer24h: 1000, TenantPer5Min: 1000})
	o.Throttle503Rate = 1
	o.TimeScale = 60 // a simulated minute per real second
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID
	for range 3 {
		c.get(site)
	}
	r := c.get(site)
	// 60 simulated seconds of Retry-After are one real second.
	if r.status != 503 || r.errorCode(t) != "serviceNotAvailable" || header(r, "Retry-After") != 1 {
		t.Fatalf("got %d %v %s", r.status, r.header, r.body)
	}
	clock.Advance(time.Second) // = one simulated minute
	if r := c.get(site); r.status != 200 {
		t.Fatalf("after one real second: %d", r.status)
	}
}

func TestBatchSubRequestsMeteredAndThrottledIndividually(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, limited(clock, graphsim.Limits{AppPerMinute: 5, AppPer24h: 1000, TenantPer5Min: 1000}))
	c := newClient(t, s, appByOrg(s, false))
	site := s.Tenant().Sites[0].ID

	var reqs []map[string]any
	for i := range 8 {
		reqs = append(reqs, map[string]any{"id": strconv.Itoa(i + 1), "method": "GET", "url": "/sites/" + site})
	}
	r := c.postJSON("/$batch", map[string]any{"requests": reqs})
	if r.status != 200 {
		t.Fatalf("batch envelope: %d %s", r.status, r.body)
	}
	var env struct {
		Responses []struct {
			ID      string            `json:"id"`
			Status  int               `json:"status"`
			Headers map[string]string `json:"headers"`
			Body    json.RawMessage   `json:"body"`
		} `json:"responses"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatal(err)
	}
	if len(env.Responses) != 8 {
		t.Fatalf("%d responses", len(env.Responses))
	}
	for i, sub := range env.Responses {
		want := 200
		if i >= 5 {
			want = 429
		}
		if sub.Status != want {
			t.Fatalf("sub-request %s: status %d, want %d", sub.ID, sub.Status, want)
		}
		if want == 429 {
			if ra, err := strconv.Atoi(sub.Headers["Retry-After"]); err != nil || ra < 1 {
				t.Fatalf("sub-request %s: Retry-After %q", sub.ID, sub.Headers["Retry-After"])
			}
		} else {
			var site map[string]any
			if err := json.Unmarshal(sub.Body, &site); err != nil || site["id"] == nil {
				t.Fatalf("sub-request %s body %s", sub.ID, sub.Body)
			}
		}
	}
	if st := s.Stats().Tenant; st.Requests != 8 || st.RU != 8 || st.Throttled429 != 3 {
		t.Fatalf("stats %+v", st)
	}

	reqs = nil
	for i := range 21 {
		reqs = append(reqs, map[string]any{"id": fmt.Sprint(i), "method": "GET", "url": "/sites/" + site})
	}
	if r := c.postJSON("/$batch", map[string]any{"requests": reqs}); r.status != 400 {
		t.Fatalf("21 sub-requests: %d", r.status)
	}
}

func TestProductionLoadOnTenantBucket(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := limited(clock, graphsim.Limits{AppPerMinute: 1000, AppPer24h: 100000, TenantPer5Min: 500})
	o.ProductionLoad = 200 // RU per minute: 1000 per 5 minutes, twice the tenant budget
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID
	clock.Advance(5 * time.Minute)
	r := c.get(site)
	if r.status != 429 || r.header.Get("RateLimit-Limit") != "" {
		t.Fatalf("backup request under production overload: %d %v", r.status, r.header)
	}
	if pt := s.Stats().Tenant.ProductionThrottled; pt < 400 || pt > 600 {
		t.Fatalf("production_throttled %d, want about 500", pt)
	}
}

// TestSetProductionLoad: a storm starts and ends when the test says, and
// the traffic before the change is charged at the old rate.
func TestSetProductionLoad(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := limited(clock, graphsim.Limits{AppPerMinute: 1000, AppPer24h: 100000, TenantPer5Min: 500})
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	site := "/sites/" + s.Tenant().Sites[0].ID
	if r := c.get(site); r.status != 200 {
		t.Fatalf("before the storm: %d", r.status)
	}
	s.SetProductionLoad(200) // twice the tenant budget
	clock.Advance(5 * time.Minute)
	if r := c.get(site); r.status != 429 {
		t.Fatalf("during the storm: %d", r.status)
	}
	s.SetProductionLoad(0)
	clock.Advance(5*time.Minute + time.Second) // the storm's traffic leaves the window
	if r := c.get(site); r.status != 200 {
		t.Fatalf("after the storm: %d", r.status)
	}
	if pt := s.Stats().Tenant.ProductionThrottled; pt < 400 || pt > 600 {
		t.Fatalf("production_throttled %d, want about 500 (the storm's excess only)", pt)
	}
}

func TestDownloadMeteredForTheAppThatGotTheURL(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := limited(clock, graphsim.Limits{AppPerMinute: 3, AppPer24h: 1000, TenantPer5Min: 1000})
	s := start(t, o)
	app := appByOrg(s, false)
	c := newClient(t, s, app)
	d := s.Tenant().Drives[0].ID
	items, _ := s.DriveItems(d)
	var file graphsim.Item
	for _, it := range items {
		if !it.Folder {
			file = it
		}
	}
	r := c.get("/drives/" + d + "/items/" + file.ID + "/content") // 1 RU
	loc := r.header.Get("Location")
	anon := &client{t: t, s: s, http: c.http}
	for i := range 2 { // 2 RU
		if r := anon.get(loc); r.status != 200 {
			t.Fatalf("download %d: %d", i, r.status)
		}
	}
	if r := anon.get(loc); r.status != 429 || r.header.Get("Retry-After") == "" {
		t.Fatalf("download over budget: %d %v", r.status, r.header)
	}
	for _, a := range s.Stats().Apps {
		if a.ClientID == app.ClientID && (a.Requests != 4 || a.RU != 4 || a.Throttled429 != 1 || a.Bytes < 2*file.Size) {
			t.Fatalf("app stats %+v", a)
		}
	}
}
