package repo_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/repo"
)

func TestForgetAndPruneReclaimSpace(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	r := openRepo(t, t.TempDir(), repo.Options{Clock: clk.Now, PackSize: 1 << 20})
	// Day 0: 40 files; each later day changes 10 of them.
	cur := map[string]file{}
	for i := 0; i < 40; i++ {
		f := file{id: fmt.Sprint("f", i), path: fmt.Sprintf("/f%02d", i), data: randomData(uint64(i), 150<<10)}
		cur[f.id] = f
	}
	var all []file
	for _, f := range cur {
		all = append(all, f)
	}
	rp := commitFiles(t, r, "onedrive:u", "", all)
	var rps []repo.RestorePoint
	rps = append(rps, rp)
	for day := 1; day <= 4; day++ {
		clk.Advance(24 * time.Hour)
		var changed []file
		for i := 0; i < 10; i++ {
			id := fmt.Sprint("f", (day*10+i)%40)
			f := cur[id]
			f.data = randomData(uint64(1000*day+i), 150<<10)
			cur[id] = f
			changed = append(changed, f)
		}
		rp = commitFiles(t, r, "onedrive:u", rp.ID, changed)
		rps = append(rps, rp)
	}
	before, _ := r.Stats(ctx)

	dry, err := r.Forget(ctx, repo.ForgetPolicy{KeepLast: 2, DryRun: true})
	if err != nil || len(dry) != 3 {
		t.Fatalf("dry-run forget: %d %v", len(dry), err)
	}
	gone, err := r.Forget(ctx, repo.ForgetPolicy{KeepLast: 2})
	if err != nil || len(gone) != 3 || gone[0].ID != rps[0].ID {
		t.Fatalf("forget: %+v %v", gone, err)
	}
	dryPrune, err := r.Prune(ctx, repo.PruneOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	before.RestorePoints -= len(gone) // the forget was real; the prune was not
	if st, _ := r.Stats(ctx); st != before {
		t.Fatalf("dry-run prune changed stats: %+v → %+v", before, st)
	}
	rep, err := r.Prune(ctx, repo.PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prune: %+v", rep)
	if rep.ChunksRemoved != dryPrune.ChunksRemoved || rep.ChunksRemoved != 30 || rep.PacksDeleted+rep.PacksRewritten == 0 || rep.BytesFreed <= 0 {
		t.Fatalf("prune report %+v (dry run %+v): want the 30 chunks only the forgotten days used", rep, dryPrune)
	}
	after, _ := r.Stats(ctx)
	if after.Chunks != before.Chunks-30 || after.BytesOnDisk >= before.BytesOnDisk {
		t.Fatalf("stats %+v → %+v", before, after)
	}
	// Kept restore points are intact: day 3 (rps[3]) sees day-3 data or older.
	for _, f := range cur {
		if got := readItem(t, r, rps[4].ID, f.id); !bytes.Equal(got, f.data) {
			t.Fatalf("%s differs after prune", f.path)
		}
	}
	items, _, _ := r.ListItems(ctx, repo.ListItemsRequest{RestorePoint: rps[3].ID, PageSize: 100})
	for _, it := range items {
		if _, err := r.OpenItem(ctx, rps[3].ID, it.ItemID); err != nil {
			t.Fatal(err)
		}
		_ = readItem(t, r, rps[3].ID, it.ItemID)
	}
	verifyClean(t, r, true)
	again, err := r.Prune(ctx, repo.PruneOptions{})
	if err != nil || again.ChunksRemoved != 0 || again.PacksDeleted != 0 || again.PacksRewritten != 0 {
		t.Fatalf("second prune: %+v %v", again, err)
	}
	if _, err := r.Forget(ctx, repo.ForgetPolicy{}); err == nil {
		t.Fatal("forget without a policy succeeded")
	}
}

// TestPruneSparesRunningSession: chunks a running session wrote, or
// deduplicated against while they were unreferenced, survive a prune.
// Protection is per pack, so an unreferenced chunk sharing a pack with one
// the session uses waits for a prune after the session.
func TestPruneSparesRunningSession(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{})
	old := file{id: "old", path: "/old", data: randomData(1, 200<<10)}
	neighbour := file{id: "neighbour", path: "/neighbour", data: randomData(5, 100<<10)}
	gone := file{id: "gone", path: "/gone", data: randomData(2, 200<<10)}
	rp0 := commitFiles(t, r, "site:s", "", []file{gone}) // a pack of its own
	rp1 := commitFiles(t, r, "site:s", "", []file{old, neighbour})
	rp2 := commitFiles(t, r, "site:s", "", []file{{id: "new", path: "/new", data: randomData(3, 10)}})
	for _, rp := range []repo.RestorePoint{rp0, rp1} {
		if err := r.ForgetRestorePoint(ctx, rp.ID); err != nil {
			t.Fatal(err)
		}
	}
	// A job runs: it re-stores "old" (deduplicated against a chunk nothing
	// references now) and writes something new, then prune runs.
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s", Base: rp2.ID})
	st, err := s.Store(ctx, bytes.NewReader(old.data))
	if err != nil || st.NewChunks != 0 {
		t.Fatalf("dedup: %+v %v", st, err)
	}
	fresh := file{id: "fresh", path: "/fresh", data: randomData(4, 300<<10)}
	if _, err := s.StoreItem(ctx, itemMeta(fresh), bytes.NewReader(fresh.data)); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Prune(ctx, repo.PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksRemoved != 1 {
		t.Fatalf("prune removed %d chunks, want only the unreferenced, unused one", rep.ChunksRemoved)
	}
	meta := itemMeta(old)
	meta.Size, meta.SHA256, meta.Chunks = st.Size, st.SHA256, st.Chunks
	if err := s.PutItem(ctx, meta); err != nil {
		t.Fatal(err)
	}
	rp3, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []file{old, fresh} {
		if got := readItem(t, r, rp3.ID, f.id); !bytes.Equal(got, f.data) {
			t.Fatalf("%s lost to prune", f.path)
		}
	}
	verifyClean(t, r, true)
	after, err := r.Prune(ctx, repo.PruneOptions{})
	if err != nil || after.ChunksRemoved != 1 {
		t.Fatalf("prune after the session: %+v %v; want the neighbour's chunk removed", after, err)
	}
	verifyClean(t, r, true)
	// The pruned content is gone for LookupVersion too: the engine downloads again.
	s2, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s", Base: rp3.ID})
	defer s2.Abort()
	if _, ok, err := s2.LookupVersion(ctx, "drive1", "gone", itemMeta(gone).CTag, ""); ok || err != nil {
		t.Fatalf("lookup of pruned version: %v %v", ok, err)
	}
	if _, ok, err := s2.LookupVersion(ctx, "drive1", "old", itemMeta(old).CTag, ""); !ok || err != nil {
		t.Fatalf("lookup of kept version: %v %v", ok, err)
	}
	if err := r.ForgetRestorePoint(ctx, rp3.ID); !errors.Is(err, repo.ErrInUse) {
		t.Fatalf("forget base of running session: %v", err)
	}
}

// hookFS runs hook once, the first time path is opened.
type hookFS struct {
	repo.FS
	path string
	hook func()
}

func (h *hookFS) Open(name string) (repo.File, error) {
	if name == h.path && h.hook != nil {
		hook := h.hook
		h.hook = nil
		hook()
	}
	return h.FS.Open(name)
}

// TestPruneMovesProtectionWithRepackedChunks: a session that deduplicates
// against a chunk while Prune is copying it out of a mostly dead pack keeps
// it protected in its new pack, so a second prune during the session does
// not remove it.
func TestPruneMovesProtectionWithRepackedChunks(t *testing.T) {
	ctx := context.Background()
	fsys := &hookFS{FS: repo.OSFS{}}
	r := openRepo(t, t.TempDir(), repo.Options{FS: fsys, PackSize: 64 << 20})
	small := file{id: "small", path: "/small", data: randomData(1, 50<<10)}
	rpA := commitFiles(t, r, "site:a", "", []file{small,
		{id: "big1", path: "/big1", data: randomData(2, 400<<10)},
		{id: "big2", path: "/big2", data: randomData(3, 400<<10)}})
	keep := commitFiles(t, r, "site:keep", "", []file{small}) // refers to small's chunk in pack A
	if err := r.ForgetRestorePoint(ctx, rpA.ID); err != nil {
		t.Fatal(err)
	}
	chunk := smallChunk(t, r, keep.ID, small.id)
	packA, ok := repo.PackFileOf(r, chunk)
	if !ok {
		t.Fatal("small's chunk is not stored")
	}

	s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	var st repo.Stored
	fsys.path, fsys.hook = packA, func() { // Prune is about to copy pack A
		st, err = s.Store(ctx, bytes.NewReader(small.data))
	}
	rep, perr := r.Prune(ctx, repo.PruneOptions{})
	if perr != nil || rep.PacksRewritten != 1 {
		t.Fatalf("prune: %+v %v; want pack A rewritten", rep, perr)
	}
	if err != nil || st.NewChunks != 0 {
		t.Fatalf("store during prune: %+v %v; want deduplicated", st, err)
	}
	// Now only the session refers to the chunk, in its new pack.
	if err := r.ForgetRestorePoint(ctx, keep.ID); err != nil {
		t.Fatal(err)
	}
	if rep, err := r.Prune(ctx, repo.PruneOptions{}); err != nil || rep.ChunksRemoved != 0 {
		t.Fatalf("second prune: %+v %v; want the session's chunk kept", rep, err)
	}
	meta := itemMeta(small)
	meta.Size, meta.SHA256, meta.Chunks = st.Size, st.SHA256, st.Chunks
	if err := s.PutItem(ctx, meta); err != nil {
		t.Fatal(err)
	}
	rp, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := readItem(t, r, rp.ID, small.id); !bytes.Equal(got, small.data) {
		t.Fatal("the session's item lost its content")
	}
	verifyClean(t, r, true)
}

// smallChunk returns the one chunk of a small item.
func smallChunk(t *testing.T, r *repo.Repository, rp repo.RestorePointID, id string) repo.ChunkID {
	t.Helper()
	it, err := r.Item(context.Background(), rp, id)
	if err != nil || len(it.Chunks) != 1 {
		t.Fatalf("item %s: %+v %v", id, it, err)
	}
	return it.Chunks[0]
}
