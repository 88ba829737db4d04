package repo_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/backup-proxy/backup-proxy/repo"
	"github.com/backup-proxy/backup-proxy/repo/faultfs"
)

// TestWriteFaultAtEachStep fails one write step (create, write, fsync,
// rename, dir fsync) of a pack or an index file in the middle of a job and
// checks: the job fails, the repository verifies clean, earlier restore
// points read back, and the rerun deduplicates against what was durable.
func TestWriteFaultAtEachStep(t *testing.T) {
	dirStoreOnly(t, "it injects faults into the local file system")
	ctx := context.Background()
	// Calls of each step per pack (or index file): create 1, write 3
	// (header, blob, trailer), fsync 1, rename 1, dir fsync 1. Let two
	// packs through before the fault. The job's stream is long enough for
	// many more packs whatever the repository's random chunker key.
	ops := []struct {
		op    faultfs.Op
		after int
	}{
		{faultfs.OpCreate, 2}, {faultfs.OpWrite, 6}, {faultfs.OpSync, 2}, {faultfs.OpRename, 2}, {faultfs.OpSyncDir, 2},
	}
	for _, target := range []string{"pack", "index"} {
		for _, tc := range ops {
			after := tc.after
			if target == "index" && tc.op == faultfs.OpWrite {
				after = 2 // one write per index file
			}
			t.Run(fmt.Sprintf("%s/%s", target, tc.op), func(t *testing.T) {
				dir := t.TempDir()
				ffs := faultfs.New(repo.OSFS{}, dir)
				r := openRepo(t, dir, repo.Options{FS: ffs, PackSize: 256 << 10})
				old := file{id: "old", path: "/old", data: randomData(1, 700<<10)}
				rp1 := commitFiles(t, r, "onedrive:u", "", []file{old})

				job := file{id: "big", path: "/big", data: randomData(2, 24<<20)}
				ffs.Add(faultfs.Rule{Op: tc.op, PathContains: target, After: after, Times: 1})
				s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:u", Base: rp1.ID})
				if err != nil {
					t.Fatal(err)
				}
				_, err = s.StoreItem(ctx, itemMeta(job), bytes.NewReader(job.data))
				if err == nil {
					_, err = s.Commit(ctx)
				} else {
					_ = s.Abort()
				}
				if err == nil || ffs.Injected() != 1 {
					t.Fatalf("job with an injected %s fault: err=%v injected=%d", tc.op, err, ffs.Injected())
				}
				t.Logf("job failed as expected: %v", err)
				ffs.Clear()

				verifyClean(t, r, true)
				if rps, _ := r.ListRestorePoints(ctx, "t1", "onedrive:u"); len(rps) != 1 {
					t.Fatalf("restore points after failed job: %+v", rps)
				}
				if got := readItem(t, r, rp1.ID, "old"); !bytes.Equal(got, old.data) {
					t.Fatal("earlier restore point damaged")
				}

				// The rerun, in the same process, deduplicates.
				s2, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "onedrive:u", Base: rp1.ID})
				st, err := s2.Store(ctx, bytes.NewReader(job.data))
				if err != nil {
					t.Fatal(err)
				}
				meta := itemMeta(job)
				meta.Size, meta.SHA256, meta.Chunks = st.Size, st.SHA256, st.Chunks
				if err := s2.PutItem(ctx, meta); err != nil {
					t.Fatal(err)
				}
				rp2, err := s2.Commit(ctx)
				if err != nil {
					t.Fatal(err)
				}
				shared := len(st.Chunks) - st.NewChunks
				if shared < 1 {
					t.Fatalf("rerun shared no chunk with the failed job (%d chunks)", len(st.Chunks))
				}
				t.Logf("rerun: %d of %d chunks deduplicated", shared, len(st.Chunks))
				verifyClean(t, r, true)
				if got := readItem(t, r, rp2.ID, "big"); !bytes.Equal(got, job.data) {
					t.Fatal("rerun content differs")
				}

				// After a restart too; prune clears the debris.
				_ = r.Close()
				r2 := openRepo(t, dir, repo.Options{})
				verifyClean(t, r2, false)
				if _, err := r2.Prune(ctx, repo.PruneOptions{}); err != nil {
					t.Fatal(err)
				}
				rep := verifyClean(t, r2, true)
				if rep.OrphanPacks != 0 {
					t.Fatalf("%d orphan packs after prune", rep.OrphanPacks)
				}
				if got := readItem(t, r2, rp2.ID, "big"); !bytes.Equal(got, job.data) {
					t.Fatal("content differs after restart and prune")
				}
			})
		}
	}
}

// TestPruneFaultAtEachStep fails prune at each of its file steps and checks
// the repository stays valid and a second prune completes.
func TestPruneFaultAtEachStep(t *testing.T) {
	dirStoreOnly(t, "it injects faults into the local file system")
	ctx := context.Background()
	tests := []struct {
		name   string
		op     faultfs.Op
		target string
	}{
		{"repack pack create", faultfs.OpCreate, "pack"},
		{"repack pack fsync", faultfs.OpSync, "pack"},
		{"repack pack rename", faultfs.OpRename, "pack"},
		{"merged index create", faultfs.OpCreate, "index"},
		{"merged index rename", faultfs.OpRename, "index"},
		{"old index remove", faultfs.OpRemove, "index"},
		{"index dir fsync", faultfs.OpSyncDir, "index"},
		{"old pack remove", faultfs.OpRemove, "pack"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ffs := faultfs.New(repo.OSFS{}, dir)
			clk := newClock()
			r := openRepo(t, dir, repo.Options{FS: ffs, PackSize: 2 << 20, Clock: clk.Now})
			// Many small files share packs; forgetting half of them leaves
			// mostly-dead packs to rewrite and dead packs to delete.
			var all, keep, drop []file
			for i := 0; i < 60; i++ {
				f := file{id: fmt.Sprint("f", i), path: fmt.Sprintf("/f%02d", i), data: randomData(uint64(100+i), 100<<10)}
				all = append(all, f)
				if i%4 == 0 {
					keep = append(keep, f)
				} else {
					drop = append(drop, f)
				}
			}
			rpOld := commitFiles(t, r, "site:s", "", all)
			s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:s", Base: rpOld.ID})
			for _, f := range drop {
				_ = s.DeleteItem(ctx, "drive1", f.id)
			}
			rpNew, err := s.Commit(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.ForgetRestorePoint(ctx, rpOld.ID); err != nil {
				t.Fatal(err)
			}
			ffs.Add(faultfs.Rule{Op: tc.op, PathContains: tc.target, Times: 1})
			if _, err := r.Prune(ctx, repo.PruneOptions{}); err == nil {
				t.Fatalf("prune with an injected %s fault succeeded (injected %d)", tc.op, ffs.Injected())
			}
			ffs.Clear()
			check := func(r *repo.Repository) {
				verifyClean(t, r, true)
				for _, f := range keep {
					if got := readItem(t, r, rpNew.ID, f.id); !bytes.Equal(got, f.data) {
						t.Fatalf("%s differs", f.path)
					}
				}
			}
			check(r)
			rep, err := r.Prune(ctx, repo.PruneOptions{})
			if err != nil {
				t.Fatalf("second prune: %v", err)
			}
			check(r)
			_ = r.Close()
			r2 := openRepo(t, dir, repo.Options{})
			check(r2)
			st, _ := r2.Stats(ctx)
			if st.Chunks != int64(len(keep)) {
				t.Fatalf("%d chunks after prune, want %d (report %+v)", st.Chunks, len(keep), rep)
			}
		})
	}
}
