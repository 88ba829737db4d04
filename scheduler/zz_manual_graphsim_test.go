//go:build manual

package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/pool"
)

func TestManualGraphsim(t *testing.T) {
	for _, regime := range []graphsim.Regime{graphsim.RegimePerApp, graphsim.RegimeShared} {
		for _, n := range []int{4} {
			const scale = 60
			srv, err := graphsim.New(graphsim.Options{Apps: n, Regime: regime, TimeScale: scale, FilesPerDrive: 200, Users: 4, Sites: 2,
				ProductionLoad: 0.3 * 18750 / 5, Faults: graphsim.Faults{TransientErrorRate: 0.02, ConnectionResetRate: 0.005, ExpiredDownloadURLRate: 0.02},
				SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 1 << 10, Max: 8 << 10}}})
			if err != nil {
				t.Fatal(err)
			}
			ten := srv.Tenant()
			p, err := pool.Open(zap.NewNop(), pool.Config{Dir: t.TempDir(), LoginURL: srv.LoginURL(), HTTPClient: srv.HTTPClient()})
			if err != nil {
				t.Fatal(err)
			}
			for i, a := range ten.Apps {
				c := a.Credentials[0]
				if _, err := p.Add(context.Background(), pool.AddRequest{TenantID: ten.ID, ClientID: a.ClientID,
					Certificate: append(append([]byte{}, c.CertPEM...), c.KeyPEM...), Organization: i == 0}); err != nil {
					t.Fatal(err)
				}
			}
			srv.ResetStats()
			lg, _ := zap.NewDevelopment()
			s := New(lg, Config{Company: "Test", Clock: Scaled(RealClock{}, scale), HeaderSecond: scale * time.Second},
				PoolApps(p, ten.ID), srv.Transport())
			var items []string
			for _, d := range ten.Drives {
				its, _ := srv.DriveItems(d.ID)
				for _, it := range its {
					if !it.Folder {
						items = append(items, "/v1.0/drives/"+d.ID+"/items/"+it.ID)
					}
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			var wg sync.WaitGroup
			var resets atomic.Int64
			start := time.Now()
			for w := range 16 {
				wg.Go(func() {
					for i := w; ctx.Err() == nil; i += 16 {
						u := srv.GraphURL() + items[i%len(items)]
						if i%2 == 0 {
							u += "/content"
						}
						req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
						resp, err := s.RoundTrip(req)
						if err != nil {
							if ctx.Err() == nil && !errors.Is(err, ErrDeadline) {
								t.Error(err)
							}
							return
						}
						if _, err := io.Copy(io.Discard, resp.Body); err != nil {
							resets.Add(1) // mid-body reset: the caller resumes with Range
						}
						resp.Body.Close()
						if resp.StatusCode >= 400 {
							t.Errorf("%s: %d", u, resp.StatusCode)
						}
					}
				})
			}
			wg.Wait()
			cancel()
			wall := time.Since(start).Minutes() * scale
			gs := srv.Stats().Tenant
			st := s.Stats()
			budget := float64(min(n*1250, 1875))
			if regime == graphsim.RegimeShared {
				budget = 1250
			}
			fmt.Printf("%-8s n=%d: RU %d in %.1f sim-min = %.0f RU/min of %.0f (eff %.3f); requests %d, 429 %d, 503 %d, violations %d; sched shared=%v viol=%d failed=%d attempts=%d retries=%d midbody=%d prodThrottled=%d\n",
				regime, n, gs.RU, wall, float64(gs.RU)/wall, budget, float64(gs.RU)/wall/budget, gs.Requests, gs.Throttled429, gs.Throttled503,
				gs.RetryAfterViolations, st.SharedBudget, st.Violations, st.Failed, st.Attempts, st.Retries, resets.Load(), gs.ProductionThrottled)
			srv.Close()
		}
	}
}
