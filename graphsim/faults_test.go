package graphsim_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

func TestFaultsOnDemand(t *testing.T) {
	firstFile := func(t *testing.T, s *graphsim.Server) (string, string) {
		d := s.Tenant().Drives[0].ID
		items, _ := s.DriveItems(d)
		for _, it := range items {
			if !it.Folder {
				return d, it.ID
			}
		}
		t.Fatal("no file")
		return "", ""
	}
	tests := []struct {
		name  string
		set   func(*graphsim.Options)
		check func(t *testing.T, s *graphsim.Server, c *client, clock *graphsim.ManualClock)
	}{
		{"transient 5xx", func(o *graphsim.Options) { o.Faults.TransientErrorRate = 1 },
			func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
				for range 8 {
					r := c.get("/sites/" + s.Tenant().Sites[0].ID)
					if r.status < 500 || r.header.Get("Retry-After") != "" {
						t.Fatalf("got %d %v", r.status, r.header)
					}
				}
			}},
		{"connection reset", func(o *graphsim.Options) { o.Faults.ConnectionResetRate = 1 },
			func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
				req, _ := http.NewRequest("GET", s.GraphURL()+"/v1.0/sites/"+s.Tenant().Sites[0].ID, nil)
				req.Header.Set("Authorization", "Bearer "+c.token)
				if resp, err := c.http.Do(req); err == nil {
					resp.Body.Close()
					t.Fatalf("request survived a reset: %d", resp.StatusCode)
				}
			}},
		{"expired download URLs", func(o *graphsim.Options) { o.Faults.ExpiredDownloadURLRate = 1 },
			func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
				d, id := firstFile(t, s)
				loc := c.get("/drives/" + d + "/items/" + id + "/content").header.Get("Location")
				if r := (&client{t: t, s: s, http: c.http}).get(loc); r.status != 401 {
					t.Fatalf("download: %d", r.status)
				}
			}},
		{"dead delta tokens", func(o *graphsim.Options) { o.Faults.DeadDeltaTokenRate = 1 },
			func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
				d := s.Tenant().Drives[0].ID
				first := c.mustGet("/drives/" + d + "/root/delta?$top=2") // no token: fine
				if r := c.get(first["@odata.nextLink"].(string)); r.status != 410 || r.header.Get("Location") == "" {
					t.Fatalf("nextLink: %d", r.status)
				}
			}},
		{"delta token max age", func(o *graphsim.Options) { o.DeltaTokenMaxAge = time.Hour },
			func(t *testing.T, s *graphsim.Server, c *client, clock *graphsim.ManualClock) {
				d := s.Tenant().Drives[0].ID
				_, _, dl := c.crawl("/drives/" + d + "/root/delta")
				clock.Advance(30 * time.Minute)
				if r := c.get(dl); r.status != 200 {
					t.Fatalf("young token: %d", r.status)
				}
				clock.Advance(31 * time.Minute)
				if r := c.get(dl); r.status != 410 {
					t.Fatalf("old token: %d", r.status)
				}
			}},
		{"malware", func(o *graphsim.Options) { o.Faults.MalwareRate = 1 },
			func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
				d, id := firstFile(t, s)
				it := c.mustGet("/drives/" + d + "/items/" + id)
				if it["malware"] == nil || it["@microsoft.graph.downloadUrl"] != nil {
					t.Fatalf("malware item %v", it)
				}
				if r := c.get("/drives/" + d + "/items/" + id + "/content"); r.status != 403 || r.errorCode(t) != "malwareDetected" {
					t.Fatalf("/content: %d %s", r.status, r.body)
				}
			}},
		{"slow responses", func(o *graphsim.Options) {
			o.Faults.SlowResponseRate = 1
			o.Faults.SlowResponseDelay = 30 * time.Millisecond
		}, func(t *testing.T, s *graphsim.Server, c *client, _ *graphsim.ManualClock) {
			began := time.Now()
			if r := c.get("/sites/" + s.Tenant().Sites[0].ID); r.status != 200 {
				t.Fatalf("status %d", r.status)
			}
			if el := time.Since(began); el < 30*time.Millisecond {
				t.Fatalf("answered in %v", el)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := graphsim.NewManualClock(t0)
			o := small(clock)
			tc.set(&o)
			s := start(t, o)
			c := newClient(t, s, appByOrg(s, false))
			tc.check(t, s, c, clock)
		})
	}
}

func TestNegativeCountsMeanNone(t *testing.T) {
	s, err := graphsim.New(graphsim.Options{Users: 2, Sites: -1, FilesPerDrive: 1, Faults: graphsim.Faults{UnprovisionedOneDrives: -1}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if tn := s.Tenant(); len(tn.Sites) != 0 || len(tn.Users) != 2 || len(tn.Drives) != 2 {
		t.Errorf("tenant has %d users, %d sites, %d drives; want 2, 0, 2", len(tn.Users), len(tn.Sites), len(tn.Drives))
	}
}

func TestRejectsBadOptions(t *testing.T) {
	for _, o := range []graphsim.Options{
		{Regime: "bogus"},
		{FilesPerDrive: -1},
		{TimeScale: -2},
	} {
		if s, err := graphsim.New(o); err == nil {
			s.Close()
			t.Errorf("New(%+v) succeeded", o)
		} else if !strings.Contains(err.Error(), "graphsim") {
			t.Errorf("error %q lacks context", err)
		}
	}
}
