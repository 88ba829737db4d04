package repo_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/lease"
	"github.com/backup-proxy/backup-proxy/repo"
)

// agents opens n repositories sharing one store, each with its own local
// catalogue and temp directory, the first creating the store, all sharing
// the key and a lease manager.
func agents(t *testing.T, n int, leases lease.Manager) []*repo.Repository {
	t.Helper()
	shared := t.TempDir()
	key := filepath.Join(t.TempDir(), "key")
	out := make([]*repo.Repository, n)
	for i := range out {
		local := t.TempDir()
		out[i] = openRepo(t, local, repo.Options{Store: testStore(t, shared, local), KeyFile: key, Leases: leases, LeaseTTL: 2 * time.Second})
	}
	return out
}

func listAll(t *testing.T, r *repo.Repository, rp repo.RestorePointID) map[string]repo.Item {
	t.Helper()
	out := map[string]repo.Item{}
	tok := ""
	for {
		items, next, err := r.ListItems(context.Background(), repo.ListItemsRequest{RestorePoint: rp, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			out[it.ItemID] = it
		}
		if next == "" {
			return out
		}
		tok = next
	}
}

// sameRestorePoint checks that b's copy of a restore point equals a's:
// record, every item, and the bytes read back.
func sameRestorePoint(t *testing.T, a, b *repo.Repository, id repo.RestorePointID) {
	t.Helper()
	ctx := context.Background()
	ra, err := a.RestorePoint(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.RestorePoint(ctx, id)
	if err != nil {
		t.Fatalf("the other agent: %v", err)
	}
	if !ra.Time.Equal(rb.Time) || ra.Items != rb.Items || ra.Bytes != rb.Bytes || ra.Base != rb.Base || len(ra.Drives) != len(rb.Drives) {
		t.Fatalf("restore point differs:\n%+v\n%+v", ra, rb)
	}
	for i := range ra.Drives {
		if ra.Drives[i] != rb.Drives[i] {
			t.Fatalf("drive differs: %+v vs %+v", ra.Drives[i], rb.Drives[i])
		}
	}
	ia, ib := listAll(t, a, id), listAll(t, b, id)
	if len(ia) != len(ib) {
		t.Fatalf("%d items vs %d", len(ia), len(ib))
	}
	for k, x := range ia {
		y := ib[k]
		if x.Path != y.Path || x.Size != y.Size || x.SHA256 != y.SHA256 || !x.ModTime.Equal(y.ModTime) || x.CTag != y.CTag || len(x.Chunks) != len(y.Chunks) {
			t.Fatalf("item %s differs:\n%+v\n%+v", k, x, y)
		}
		if !x.Folder && !bytes.Equal(readItem(t, a, id, k), readItem(t, b, id, k)) {
			t.Fatalf("item %s reads back differently", k)
		}
	}
}

func backup(t *testing.T, r *repo.Repository, src string, files []file, deletes ...string) repo.RestorePoint {
	t.Helper()
	ctx := context.Background()
	l, err := r.AcquireSource(ctx, "t1", src)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	base, err := r.LatestRestorePoint(ctx, "t1", src)
	if err != nil && !errors.Is(err, repo.ErrNotFound) {
		t.Fatal(err)
	}
	s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: src, Base: base.ID, Lease: l})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := s.StoreItem(ctx, itemMeta(f), bytes.NewReader(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range deletes {
		if err := s.DeleteItem(ctx, "drive1", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetDeltaLink("drive1", "delta-"+src+"-"+time.Now().String()); err != nil {
		t.Fatal(err)
	}
	rp, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

// Two agents take turns on one source: each imports what the other
// committed, bases its incremental on it, and both see identical restore
// points, down to the bytes.
func TestAgentsShareRestorePoints(t *testing.T) {
	ctx := context.Background()
	ag := agents(t, 2, lease.NewLocal("test", time.Now))
	a, b := ag[0], ag[1]
	files := []file{
		{id: "f1", path: "/a.txt", data: textData(1, 3000)},
		{id: "f2", path: "/b.bin", data: randomData(2, 700<<10)},
		{id: "f3", path: "/c.bin", data: randomData(3, 2<<20)},
	}
	full := backup(t, a, "s1", files)
	rep, err := b.Sync(ctx)
	if err != nil || rep.Imported != 1 {
		t.Fatalf("sync: %+v %v", rep, err)
	}
	sameRestorePoint(t, a, b, full.ID)

	// b writes the incremental: one changed, one deleted, one new.
	inc := backup(t, b, "s1", []file{
		{id: "f1", path: "/a.txt", data: textData(11, 3100)},
		{id: "f4", path: "/d.txt", data: textData(4, 500)},
	}, "f2")
	if inc.Base != full.ID {
		t.Fatalf("incremental based on %q, want %q", inc.Base, full.ID)
	}
	if _, err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	sameRestorePoint(t, b, a, inc.ID)
	got := listAll(t, a, inc.ID)
	if _, ok := got["f2"]; ok || len(got) != 3 {
		t.Fatalf("incremental items %v", got)
	}
	// The full restore point is unchanged on both.
	sameRestorePoint(t, a, b, full.ID)
	// a's next incremental is based on b's.
	if next := backup(t, a, "s1", nil); next.Base != inc.ID {
		t.Fatalf("a based its next restore point on %q, want b's %q", next.Base, inc.ID)
	}
	verifyClean(t, a, true)
	verifyClean(t, b, true)
}

// A lost catalogue comes back from the manifests.
func TestCatalogueRebuiltFromManifests(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := openRepo(t, dir, repo.Options{})
	full := backup(t, r, "s1", []file{{id: "f1", path: "/a", data: randomData(1, 1<<20)}, {id: "f2", path: "/b", data: textData(2, 100)}})
	inc := backup(t, r, "s1", []file{{id: "f3", path: "/c", data: textData(3, 100)}}, "f1")
	other := backup(t, r, "s2", []file{{id: "g1", path: "/g", data: textData(4, 100)}})
	want := map[repo.RestorePointID]map[string]repo.Item{}
	for _, id := range []repo.RestorePointID{full.ID, inc.ID, other.ID} {
		want[id] = listAll(t, r, id)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "catalog.db")); err != nil {
		t.Fatal(err)
	}
	r = openRepo(t, dir, repo.Options{})
	rep, err := r.Sync(ctx)
	if err != nil || rep.Imported != 3 || rep.Skipped != 0 {
		t.Fatalf("sync: %+v %v", rep, err)
	}
	for id, items := range want {
		got := listAll(t, r, id)
		if len(got) != len(items) {
			t.Fatalf("%s: %d items, want %d", id, len(got), len(items))
		}
		for k, it := range items {
			if g := got[k]; g.Path != it.Path || g.SHA256 != it.SHA256 || g.Size != it.Size {
				t.Fatalf("%s/%s: %+v, want %+v", id, k, g, it)
			}
		}
	}
	if link, _, err := r.DeltaLink(ctx, "t1", "s1", "drive1"); err != nil || link == "" {
		t.Fatalf("deltaLink after rebuild: %q %v", link, err)
	}
	verifyClean(t, r, true)
}

// One source is written by one agent at a time; prune stands down while
// another agent writes, and a writer waits for a running prune.
func TestLeasesKeepAgentsApart(t *testing.T) {
	ctx := context.Background()
	ag := agents(t, 2, lease.NewLocal("test", time.Now))
	a, b := ag[0], ag[1]
	backup(t, a, "s1", []file{{id: "f1", path: "/a", data: textData(1, 100)}})

	la, err := a.AcquireSource(ctx, "t1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = b.AcquireSource(short, "t1", "s1")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second writer of a source: %v, want it to wait", err)
	}
	if _, err := b.Prune(ctx, repo.PruneOptions{}); !errors.Is(err, repo.ErrBusy) {
		t.Fatalf("prune while another agent writes: %v, want ErrBusy", err)
	}
	if _, err := a.Prune(ctx, repo.PruneOptions{}); err != nil {
		t.Fatalf("prune beside this agent's own writer: %v", err)
	}
	if err := b.ForgetRestorePoint(ctx, mustLatest(t, b, "s1")); !errors.Is(err, repo.ErrInUse) {
		t.Fatalf("forget on a source another agent writes: %v, want ErrInUse", err)
	}
	la.Release()
	lb, err := b.AcquireSource(ctx, "t1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	lb.Release()
}

func mustLatest(t *testing.T, r *repo.Repository, src string) repo.RestorePointID {
	t.Helper()
	if _, err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	rp, err := r.LatestRestorePoint(context.Background(), "t1", src)
	if err != nil {
		t.Fatal(err)
	}
	return rp.ID
}

// A session whose lease was lost cannot commit, and leaves no restore point.
func TestCommitNeedsTheLease(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	leases := lease.NewLocal("test", clock.Now)
	ag := agents(t, 2, leases)
	a, b := ag[0], ag[1]
	l, err := a.AcquireSource(ctx, "t1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	s, err := a.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "s1", Lease: l})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StoreItem(ctx, itemMeta(file{id: "f1", path: "/a", data: []byte("x")}), bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour) // a's lease expires: a paused process
	lb, err := b.AcquireSource(ctx, "t1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release()
	if _, err := s.Commit(ctx); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("commit after the lease was lost: %v, want ErrLost", err)
	}
	for _, r := range ag {
		if _, err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if rps, _ := r.ListRestorePoints(ctx, "t1", "s1"); len(rps) != 0 {
			t.Fatalf("restore points after a failed commit: %v", rps)
		}
	}
}

// Forgetting reaches the other agents; a forgotten base keeps its manifest
// while a kept restore point needs it, so that an agent with an empty
// catalogue can still import the chain; prune then removes it.
func TestForgetAcrossAgents(t *testing.T) {
	ctx := context.Background()
	ag := agents(t, 3, lease.NewLocal("test", time.Now))
	a, b, c := ag[0], ag[1], ag[2]
	full := backup(t, a, "s1", []file{{id: "f1", path: "/a", data: randomData(1, 600<<10)}, {id: "f2", path: "/b", data: textData(2, 100)}})
	inc := backup(t, a, "s1", []file{{id: "f3", path: "/c", data: textData(3, 100)}})
	if _, err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.ForgetRestorePoint(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Sync(ctx)
	if err != nil || rep.Dropped != 1 {
		t.Fatalf("sync after forget: %+v %v", rep, err)
	}
	if _, err := b.RestorePoint(ctx, full.ID); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("forgotten restore point on the other agent: %v", err)
	}
	pr, err := a.Prune(ctx, repo.PruneOptions{})
	if err != nil || pr.ManifestsRemoved != 0 {
		t.Fatalf("prune while the incremental needs its base: %+v %v", pr, err)
	}
	// c starts empty: it imports the forgotten base for the incremental.
	rep, err = c.Sync(ctx)
	if err != nil || rep.Imported != 1 || rep.Skipped != 0 {
		t.Fatalf("fresh agent sync: %+v %v", rep, err)
	}
	sameRestorePoint(t, a, c, inc.ID)
	if _, err := c.RestorePoint(ctx, full.ID); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("fresh agent kept the forgotten base: %v", err)
	}
	// Once the incremental is forgotten too, prune drops both manifests.
	latest := backup(t, a, "s1", nil)
	if err := a.ForgetRestorePoint(ctx, inc.ID); err != nil {
		t.Fatal(err)
	}
	if pr, err = a.Prune(ctx, repo.PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	// latest is based on inc, which is based on full: both still needed.
	if pr.ManifestsRemoved != 0 {
		t.Fatalf("prune removed %d manifests the latest restore point needs", pr.ManifestsRemoved)
	}
	// A full restore point nothing descends from goes with the next prune.
	lone := commitFiles(t, a, "s2", "", []file{{id: "g1", path: "/g", data: textData(5, 100)}})
	commitFiles(t, a, "s2", "", []file{{id: "g2", path: "/h", data: textData(6, 100)}})
	if err := a.ForgetRestorePoint(ctx, lone.ID); err != nil {
		t.Fatal(err)
	}
	if pr, err = a.Prune(ctx, repo.PruneOptions{}); err != nil || pr.ManifestsRemoved != 1 {
		t.Fatalf("prune of a forgotten restore point nothing needs: %+v %v", pr, err)
	}
	if _, err := a.Store().Stat(ctx, "restorepoints/"+string(lone.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("manifest still there: %v", err)
	}
	for _, r := range ag {
		if _, err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		sameRestorePoint(t, a, r, latest.ID)
		if _, err := r.RestorePoint(ctx, lone.ID); !errors.Is(err, repo.ErrNotFound) {
			t.Fatalf("pruned restore point still listed: %v", err)
		}
		verifyClean(t, r, true)
	}
}

// A damaged manifest is refused, never half imported.
func TestDamagedManifestNotImported(t *testing.T) {
	ctx := context.Background()
	ag := agents(t, 2, lease.NewLocal("test", time.Now))
	a, b := ag[0], ag[1]
	rp := backup(t, a, "s1", []file{{id: "f1", path: "/a", data: textData(1, 100)}})
	key := "restorepoints/" + string(rp.ID)
	raw := getObject(t, a.Store(), key)
	raw[len(raw)/2] ^= 1
	putObject(t, a.Store(), key, raw)
	rep, err := b.Sync(ctx)
	if err != nil || rep.Imported != 0 || rep.Skipped != 1 {
		t.Fatalf("sync of a damaged manifest: %+v %v", rep, err)
	}
	if _, err := b.RestorePoint(ctx, rp.ID); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("damaged manifest imported: %v", err)
	}
	v, err := a.Verify(ctx, repo.VerifyOptions{})
	if err != nil || len(v.Problems) != 1 || v.Problems[0].Kind != repo.ProblemManifestDamaged {
		t.Fatalf("verify of a damaged manifest: %v %v", v.Problems, err)
	}
	if err := a.Store().Remove(ctx, key); err != nil {
		t.Fatal(err)
	}
	v, err = a.Verify(ctx, repo.VerifyOptions{})
	if err != nil || len(v.Problems) != 1 || v.Problems[0].Kind != repo.ProblemManifestMissing {
		t.Fatalf("verify of a missing manifest: %v %v", v.Problems, err)
	}
}
