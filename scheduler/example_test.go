package scheduler_test

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// One scheduler per tenant, as the transport of the http.Client that
// msgraph-sdk-go's request adapter and the downloads use. The client must
// not retry on its own; redirects of /content never reach it.
func Example() {
	var p *pool.Pool // opened by the agent
	tenantID := "72f988bf-86f1-41af-91ab-2d7cd011db47"

	s := scheduler.New(zap.NewNop(), scheduler.Config{
		Company:     "Contoso Backup",
		Limits:      scheduler.LimitsForLicenses(2500),
		TenantShare: 0.5,
	}, scheduler.PoolApps(p, tenantID), http.DefaultTransport)
	hc := &http.Client{Transport: s} // give hc to graph.New

	// A job tags its requests; a download asks for /content and gets the file.
	ctx, cancel := context.WithTimeout(scheduler.WithJob(context.Background(), "job-42"), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
		"https://graph.microsoft.com/v1.0/drives/b!x/items/01ABC/content", nil)
	req.Header.Set("Range", "bytes=0-1048575")
	if resp, err := hc.Do(req); err == nil {
		resp.Body.Close() // 206 from the download URL, fetched with the same app
	}
	_ = s.JobStats("job-42").Throttled // the job's throttled_requests
	_ = s.Stats()                      // per app and tenant, for ListApplications and logs
}

// Against graphsim with TimeScale 60, which meters in simulated time but
// states Retry-After and RateLimit-Reset in real seconds.
func Example_timeScaled() {
	var src scheduler.AppSource
	const timeScale = 60
	_ = scheduler.New(zap.NewNop(), scheduler.Config{
		Clock:        scheduler.Scaled(scheduler.RealClock{}, timeScale),
		HeaderSecond: timeScale * time.Second,
	}, src, http.DefaultTransport)
}
