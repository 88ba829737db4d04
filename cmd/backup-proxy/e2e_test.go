package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/backup-proxy/backup-proxy/graph/quickxor"
	"github.com/backup-proxy/backup-proxy/graphsim"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// e2e is an agent assembled as serve does, on a bufconn listener, backing up
// an in-process graphsim tenant.
type e2e struct {
	t       *testing.T
	opts    graphsim.Options
	sim     *graphsim.Server
	agent   *assembled
	conn    *grpc.ClientConn
	pool    pb.PoolServiceClient
	jobs    pb.JobServiceClient
	catalog pb.CatalogServiceClient

	// Set before start: the scheduler's limits (default generous) and the
	// shared budget's Redis (default none).
	limits      *scheduler.Limits
	budgetRedis string
	// repo, when set, is where the repository's objects live; logs, when
	// set, also receives the agent's log at Warn and above.
	repo repoConfig
	logs zapcore.Core
	// folderCache, when set, is how many folder paths a crawl keeps in
	// memory (backup.Config.FolderCache).
	folderCache int
}

// generous limits keep pacing out of the way: these tests are about content.
var generous = graphsim.Limits{AppPerMinute: 600_000, AppPer24h: 100_000_000, TenantPer5Min: 10_000_000}

func newE2E(t *testing.T, opts graphsim.Options, dataDir string) *e2e {
	t.Helper()
	return newE2EWith(t, opts, dataDir, nil)
}

// newE2EWith is newE2E with configure run before the agent starts.
func newE2EWith(t *testing.T, opts graphsim.Options, dataDir string, configure func(*e2e)) *e2e {
	t.Helper()
	if opts.Limits == nil {
		opts.Limits = &generous
	}
	sim, err := graphsim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	e := &e2e{t: t, sim: sim, opts: opts}
	if configure != nil {
		configure(e)
	}
	e.start(dataDir)
	return e
}

// start assembles the agent on dataDir and serves it; stop (at cleanup or
// explicitly) shuts it down like SIGTERM does.
func (e *e2e) start(dataDir string) {
	t := e.t
	// The scheduler is told generous limits whatever graphsim enforces: a
	// tighter graphsim is a tenant whose real budget is below the configured
	// one, which the scheduler must discover from the throttling signals.
	sc := scheduler.Config{Limits: scheduler.Limits{AppPerMinute: generous.AppPerMinute, AppPer24h: generous.AppPer24h, TenantPer5Min: generous.TenantPer5Min}}
	if e.limits != nil {
		sc.Limits = *e.limits
	}
	if f := e.opts.TimeScale; f > 1 {
		sc.Clock, sc.HeaderSecond = scheduler.Scaled(scheduler.RealClock{}, f), time.Duration(f*float64(time.Second))
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	if e.logs != nil {
		log = zap.New(zapcore.NewTee(log.Core(), e.logs))
	}
	a, err := assemble(log, agentConfig{
		dataDir: dataDir, graphURL: e.sim.GraphURL(), loginURL: e.sim.LoginURL(), roots: e.sim.CertPool(),
		maxJobs: 4, maxQueuedJobs: 100, downloadsPerJob: 4, scheduler: sc, budgetRedis: e.budgetRedis,
		repo: e.repo, folderCache: e.folderCache,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	go a.server.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///agent",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.agent, e.conn = a, conn
	e.pool, e.jobs, e.catalog = pb.NewPoolServiceClient(conn), pb.NewJobServiceClient(conn), pb.NewCatalogServiceClient(conn)
	t.Cleanup(e.stop)
}

func (e *e2e) stop() {
	if e.agent == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.conn.Close()
	e.agent.server.Shutdown(ctx)
	if err := e.agent.close(ctx); err != nil {
		e.t.Errorf("close agent: %v", err)
	}
	e.agent = nil
}

// addApps adds every graphsim app to the pool, organization app first.
func (e *e2e) addApps() {
	if err := addSimApps(e.t.Context(), e.pool, e.sim); err != nil {
		e.t.Fatal(err)
	}
}

// source is one backup source of the tenant and the drives it covers.
type source struct {
	name   string
	submit func(*pb.SubmitJobRequest)
	drives []string
}

func (e *e2e) sources() []source {
	var out []source
	for _, u := range e.sim.Tenant().Users {
		if !u.HasOneDrive {
			continue
		}
		upn := u.UserPrincipalName
		out = append(out, source{name: "onedrive-" + strings.Split(upn, "@")[0],
			submit: func(r *pb.SubmitJobRequest) {
				r.Source = &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: upn}}
			}, drives: []string{u.DriveID}})
	}
	for _, s := range e.sim.Tenant().Sites {
		url := s.WebURL
		out = append(out, source{name: "site-" + s.Name,
			submit: func(r *pb.SubmitJobRequest) {
				r.Source = &pb.SubmitJobRequest_SharepointSite{SharepointSite: &pb.SharePointSiteSource{Site: url}}
			}, drives: s.DriveIDs})
	}
	return out
}

// runJobs submits one job per source and waits for all to end.
func (e *e2e) runJobs(prefix string, srcs []source, mode pb.BackupMode) map[string]*pb.Job {
	t := e.t
	ids := map[string]string{}
	for _, s := range srcs {
		req := &pb.SubmitJobRequest{JobId: prefix + "-" + s.name, TenantId: e.sim.Tenant().ID, Mode: mode}
		s.submit(req)
		if _, err := e.jobs.SubmitJob(t.Context(), req); err != nil {
			t.Fatalf("submit %s: %v", req.JobId, err)
		}
		ids[s.name] = req.JobId
	}
	out := map[string]*pb.Job{}
	for name, id := range ids {
		out[name] = e.wait(id)
	}
	return out
}

func (e *e2e) wait(jobID string) *pb.Job {
	ctx, cancel := context.WithTimeout(e.t.Context(), 2*time.Minute)
	defer cancel()
	j, err := watchToEnd(ctx, e.jobs, jobID)
	if err != nil {
		e.t.Fatalf("watch %s: %v", jobID, err)
	}
	return j
}

// items lists a restore point's items by path.
func (e *e2e) items(rp string) map[string]*pb.Item {
	out := map[string]*pb.Item{}
	token := ""
	for {
		resp, err := e.catalog.ListItems(e.t.Context(), &pb.ListItemsRequest{RestorePointId: rp, PageSize: 37, PageToken: token})
		if err != nil {
			e.t.Fatalf("list items of %s: %v", rp, err)
		}
		for _, it := range resp.Items {
			out[it.DriveId+":"+it.Path] = it
		}
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}

func (e *e2e) readHash(rp, itemID string) (string, int64) {
	stream, err := e.catalog.ReadItem(e.t.Context(), &pb.ReadItemRequest{RestorePointId: rp, ItemId: itemID})
	if err != nil {
		e.t.Fatal(err)
	}
	h := quickxor.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return h.Base64(), n
		}
		if err != nil {
			e.t.Fatalf("read %s: %v", itemID, err)
		}
		if len(resp.Data) > 1<<20 {
			e.t.Fatalf("ReadItem message of %d bytes", len(resp.Data))
		}
		h.Write(resp.Data)
		n += int64(len(resp.Data))
	}
}

// checkAgainstTenant checks that a restore point holds exactly graphsim's
// current files of the given drives, with their sizes and hashes; with
// readAll it also reads every file back.
func (e *e2e) checkAgainstTenant(rp string, drives []string, readAll bool) {
	t := e.t
	got := e.items(rp)
	files := 0
	for _, d := range drives {
		want, err := e.sim.DriveItems(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if w.Malware {
				continue
			}
			key := d + ":/" + w.Path
			g, ok := got[key]
			if !ok {
				t.Errorf("restore point %s lacks %s", rp, key)
				continue
			}
			delete(got, key)
			if w.Folder {
				if !g.Folder {
					t.Errorf("%s: folder stored as a file", key)
				}
				continue
			}
			files++
			if g.Size != w.Size || g.QuickXorHash != w.QuickXorHash || g.ItemId != w.ID {
				t.Errorf("%s: stored %d bytes %s id %s, tenant has %d bytes %s id %s", key, g.Size, g.QuickXorHash, g.ItemId, w.Size, w.QuickXorHash, w.ID)
			}
			if readAll {
				if h, n := e.readHash(rp, g.ItemId); h != w.QuickXorHash || n != w.Size {
					t.Errorf("%s: read back %d bytes %s, want %d bytes %s", key, n, h, w.Size, w.QuickXorHash)
				}
			}
		}
	}
	for key := range got {
		if !strings.Contains(key, "list:") {
			t.Errorf("restore point %s holds %s, which the tenant does not", rp, key)
		}
	}
	if files == 0 {
		t.Fatalf("restore point %s: no files compared", rp)
	}
}

func TestBackupEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name        string
		folderCache int
	}{
		{"default", 0},
		// Every other folder's path is read back from the restore point
		// being staged.
		{"one folder in memory", 1},
	} {
		t.Run(tc.name, func(t *testing.T) { testBackupEndToEnd(t, tc.folderCache) })
	}
}

func testBackupEndToEnd(t *testing.T, folderCache int) {
	e := newE2EWith(t, graphsim.Options{
		Seed: 11, Users: 3, Sites: 2, FilesPerDrive: 100, Apps: 3, MaxFileSize: 1 << 20,
		Faults: graphsim.Faults{UnprovisionedOneDrives: -1},
	}, t.TempDir(), func(e *e2e) { e.folderCache = folderCache })
	e.addApps()
	srcs := e.sources()

	full := e.runJobs("full", srcs, pb.BackupMode_BACKUP_MODE_UNSPECIFIED)
	fullRU := e.sim.Stats().Tenant.RU
	before := map[string]map[string]*pb.Item{}
	for _, s := range srcs {
		j := full[s.name]
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED || j.RestorePointId == "" {
			t.Fatalf("full job %s: %v", s.name, j)
		}
		e.checkAgainstTenant(j.RestorePointId, s.drives, true)
		before[s.name] = e.items(j.RestorePointId)
	}

	// About 1 % of the files change.
	e.sim.ResetStats()
	changes := e.sim.Mutate(graphsim.MutationRequest{Create: 2, Modify: 1, Rename: 1, Delete: 1})
	inc := e.runJobs("inc", srcs, pb.BackupMode_BACKUP_MODE_INCREMENTAL)
	incRU := e.sim.Stats().Tenant.RU
	for _, s := range srcs {
		j := inc[s.name]
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("incremental job %s: %v", s.name, j)
		}
		e.checkAgainstTenant(j.RestorePointId, s.drives, false)
		// The old restore point is unchanged.
		if got := e.items(full[s.name].RestorePointId); fmt.Sprint(len(got)) != fmt.Sprint(len(before[s.name])) {
			t.Errorf("%s: full restore point changed: %d items, was %d", s.name, len(got), len(before[s.name]))
		}
	}
	// Changed files read back correctly from the new restore points.
	for _, c := range changes.Affected {
		if c.Kind != "created" && c.Kind != "modified" || c.Folder {
			continue
		}
		for _, s := range srcs {
			for _, d := range s.drives {
				if d != c.DriveID {
					continue
				}
				want, _, err := e.sim.ItemContent(d, c.ItemID)
				if err != nil {
					t.Fatal(err)
				}
				h := quickxor.New()
				io.Copy(h, want)
				if got, _ := e.readHash(inc[s.name].RestorePointId, c.ItemID); got != h.Base64() {
					t.Errorf("%s %s: read back %s, want %s", c.Kind, c.ItemID, got, h.Base64())
				}
			}
		}
	}
	ratio := float64(incRU) / float64(fullRU)
	t.Logf("RU: full %d, incremental %d (%.2f %%) for %d changes", fullRU, incRU, 100*ratio, len(changes.Changes))
	if ratio >= 0.05 {
		t.Errorf("incremental cost %.1f %% of the full run's RU, want < 5 %%", 100*ratio)
	}

	e.checkMetrics(full, inc)

	verify, err := e.catalog.VerifyRepository(t.Context(), &pb.VerifyRepositoryRequest{ReadData: true})
	if err != nil || len(verify.Errors) != 0 || verify.ChunksChecked == 0 {
		t.Errorf("verify: %v, %v", verify, err)
	}

	// Reading what is not there is NOT_FOUND; a forged page token is INVALID_ARGUMENT.
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"unknown restore point", func() error {
			_, err := e.catalog.ListItems(t.Context(), &pb.ListItemsRequest{RestorePointId: "rp-999"})
			return err
		}(), codes.NotFound},
		{"unknown item", func() error {
			s, err := e.catalog.ReadItem(t.Context(), &pb.ReadItemRequest{RestorePointId: full[srcs[0].name].RestorePointId, ItemId: "nope"})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}(), codes.NotFound},
		{"forged page token", func() error {
			_, err := e.catalog.ListItems(t.Context(), &pb.ListItemsRequest{RestorePointId: full[srcs[0].name].RestorePointId, PageToken: "forged"})
			return err
		}(), codes.InvalidArgument},
	} {
		if got := status.Code(tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

// TestBackupUnderFaults runs full and incremental backups while graphsim
// answers with transient 5xx, resets connections (also mid-download), hands
// out expired download URLs, kills delta tokens and throttles the tenant
// with production load: every job still succeeds with content identical to
// the tenant's.
func TestBackupUnderFaults(t *testing.T) {
	// The tenant really grants 60 RU a minute, far below what the scheduler
	// was told, and production users start by taking twice that: a storm
	// of 429s without RateLimit headers that the scheduler must ride out by
	// pausing the tenant. The storm ends once it has throttled the backup,
	// however fast this machine runs the backup.
	limits := graphsim.Limits{AppPerMinute: 100_000, AppPer24h: 100_000_000, TenantPer5Min: 300}
	e := newE2E(t, graphsim.Options{
		Seed: 12, Users: 2, Sites: 1, FilesPerDrive: 60, Apps: 2, MaxFileSize: 2 << 20,
		Limits: &limits, TimeScale: 60, ProductionLoad: 120,
		Faults: graphsim.Faults{
			TransientErrorRate: 0.05, ConnectionResetRate: 0.03, ExpiredDownloadURLRate: 0.1,
			DeadDeltaTokenRate: 0.2, UnprovisionedOneDrives: -1,
		},
	}, t.TempDir())
	stormDone := make(chan struct{})
	defer close(stormDone)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stormDone:
				return
			case <-tick.C:
			}
			if st := e.sim.Stats().Tenant; st.Throttled429+st.Throttled503 >= 5 {
				e.sim.SetProductionLoad(0)
				return
			}
		}
	}()
	e.addApps()
	srcs := e.sources()
	full := e.runJobs("full", srcs, pb.BackupMode_BACKUP_MODE_FULL)
	for _, s := range srcs {
		if j := full[s.name]; j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%s under faults: %v", s.name, j)
		}
		e.checkAgainstTenant(full[s.name].RestorePointId, s.drives, true)
	}
	e.sim.Mutate(graphsim.MutationRequest{Create: 3, Modify: 3, Rename: 2, Delete: 2})
	inc := e.runJobs("inc", srcs, pb.BackupMode_BACKUP_MODE_INCREMENTAL)
	for _, s := range srcs {
		if j := inc[s.name]; j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%s incremental under faults: %v", s.name, j)
		}
		e.checkAgainstTenant(inc[s.name].RestorePointId, s.drives, true)
	}
	st := e.sim.Stats().Tenant
	t.Logf("graphsim: %d requests, %d×429, %d×503, %d violations", st.Requests, st.Throttled429, st.Throttled503, st.RetryAfterViolations)
	if st.Throttled429+st.Throttled503 == 0 {
		t.Error("no throttling: the storm did not happen")
	}
	if st.RetryAfterViolations != 0 {
		t.Errorf("%d Retry-After violations", st.RetryAfterViolations)
	}
}

// TestMalwareAndUnprovisionedOneDrive: a file flagged as malware cannot be
// downloaded; the job ends PARTIALLY_SUCCEEDED listing exactly those files.
// A user without a OneDrive is not an error.
func TestMalwareAndUnprovisionedOneDrive(t *testing.T) {
	e := newE2E(t, graphsim.Options{
		Seed: 13, Users: 4, Sites: 1, FilesPerDrive: 80, Apps: 1, MaxFileSize: 64 << 10,
		Faults: graphsim.Faults{MalwareRate: 0.05, UnprovisionedOneDrives: 0.5},
	}, t.TempDir())
	e.addApps()
	var without []string
	for _, u := range e.sim.Tenant().Users {
		if !u.HasOneDrive {
			without = append(without, u.UserPrincipalName)
		}
	}
	if len(without) == 0 {
		t.Fatal("graphsim made no user without a OneDrive; the test checks nothing")
	}
	for i, upn := range without {
		name := fmt.Sprintf("user%d", i)
		j := e.runJobs("nodrive", []source{{name: name, submit: func(r *pb.SubmitJobRequest) {
			r.Source = &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: upn}}
		}}}, 0)[name]
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED || j.Progress.ItemsBackedUp != 0 {
			t.Errorf("user without OneDrive: %v", j)
		}
	}
	for _, s := range e.sources() {
		j := e.runJobs("malware", []source{s}, 0)[s.name]
		var flagged []string
		for _, d := range s.drives {
			items, _ := e.sim.DriveItems(d)
			for _, it := range items {
				if it.Malware {
					flagged = append(flagged, it.ID)
				}
			}
		}
		if len(flagged) == 0 {
			if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
				t.Errorf("%s: %v", s.name, j)
			}
			continue
		}
		var listed []string
		for _, f := range j.FailedItems {
			listed = append(listed, f.ItemId)
			if !strings.Contains(f.Reason, "malware") || f.Path == "" {
				t.Errorf("%s: failed item %v", s.name, f)
			}
		}
		slices.Sort(flagged)
		slices.Sort(listed)
		if j.State != pb.JobState_JOB_STATE_PARTIALLY_SUCCEEDED || !slices.Equal(flagged, listed) || j.RestorePointId == "" {
			t.Errorf("%s: state %v, failed %v, want %v", s.name, j.State, listed, flagged)
		}
	}
}

// TestCreateApplications registers two applications in the simulated Entra
// through the organization app, and uses their tokens against Graph.
func TestCreateApplications(t *testing.T) {
	e := newE2E(t, graphsim.Options{Seed: 14, Users: 1, Sites: 1, FilesPerDrive: 5, Apps: 1}, t.TempDir())
	tenant := e.sim.Tenant().ID
	if _, err := e.pool.CreateApplication(t.Context(), &pb.CreateApplicationRequest{TenantId: tenant, Count: 1}); err == nil {
		t.Fatal("CreateApplication without an organization app succeeded")
	}
	e.addApps()
	resp, err := e.pool.CreateApplication(t.Context(), &pb.CreateApplicationRequest{TenantId: tenant, DisplayName: "backup pool", Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Applications) != 2 {
		t.Fatalf("created %d applications", len(resp.Applications))
	}
	registered := map[string]bool{}
	for _, app := range e.sim.Tenant().Apps {
		registered[app.ClientID] = true
	}
	for _, app := range resp.Applications {
		if !registered[app.ClientId] || app.State != pb.ApplicationState_APPLICATION_STATE_READY || app.OrganizationApp ||
			!strings.HasPrefix(app.DisplayName, "backup pool ") || len(app.Thumbprint) != 40 {
			t.Errorf("created %v", app)
		}
		a, err := e.agent.pool.App(tenant, app.ClientId)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := a.Token(t.Context())
		if err != nil {
			t.Fatalf("token of created app: %v", err)
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.sim.GraphURL()+"/v1.0/sites?search=*", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := e.sim.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("Graph with the created app's token: %s (consent missing?)", res.Status)
		}
	}
	list, err := e.pool.ListApplications(t.Context(), &pb.ListApplicationsRequest{TenantId: tenant})
	if err != nil || len(list.Applications) != 3 {
		t.Fatalf("list after create: %v, %v", list, err)
	}
}
