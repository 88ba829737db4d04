package repo_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"testing"

	"github.com/backup-proxy/backup-proxy/repo"
	"github.com/backup-proxy/backup-proxy/repo/faultfs"
)

// corruptFixture builds two restore points: /a unchanged in both, /b
// changed in the second, /c deleted in the second, /d only in the second.
// Every file is one chunk and every pack holds one chunk.
type corruptFixture struct {
	dir      string
	rp1, rp2 repo.RestorePointID
	chunk    map[string]repo.ChunkID // "a", "b1", "b2", "c", "d"
}

func newCorruptFixture(t *testing.T, encrypted bool) *corruptFixture {
	t.Helper()
	ctx := context.Background()
	fx := &corruptFixture{dir: t.TempDir(), chunk: map[string]repo.ChunkID{}}
	r := openRepo(t, fx.dir, repo.Options{PackSize: 64 << 10, DisableEncryption: !encrypted})
	a := file{id: "a", path: "/docs/a", data: randomData(1, 300<<10)}
	b1 := file{id: "b", path: "/docs/b", data: textData(2, 300<<10)}
	c := file{id: "c", path: "/c", data: randomData(3, 200<<10)}
	rp1 := commitFiles(t, r, "site:x", "", []file{a, b1, c})
	b2 := file{id: "b", path: "/docs/b", data: textData(4, 300<<10)}
	d := file{id: "d", path: "/d", data: randomData(5, 100<<10)}
	s, _ := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: "site:x", Base: rp1.ID})
	for _, f := range []file{b2, d} {
		if _, err := s.StoreItem(ctx, itemMeta(f), bytes.NewReader(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.DeleteItem(ctx, "drive1", "c")
	rp2, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fx.rp1, fx.rp2 = rp1.ID, rp2.ID
	for key, ref := range map[string]struct {
		rp repo.RestorePointID
		id string
	}{"a": {rp1.ID, "a"}, "b1": {rp1.ID, "b"}, "c": {rp1.ID, "c"}, "b2": {rp2.ID, "b"}, "d": {rp2.ID, "d"}} {
		it, err := r.Item(ctx, ref.rp, ref.id)
		if err != nil || len(it.Chunks) != 1 {
			t.Fatalf("%s: %v %d chunks", key, err, len(it.Chunks))
		}
		fx.chunk[key] = it.Chunks[0]
	}
	verifyClean(t, r, true)
	_ = r.Close()
	return fx
}

func (fx *corruptFixture) packOf(t *testing.T, r *repo.Repository, key string) string {
	p, ok := repo.PackFileOf(r, fx.chunk[key])
	if !ok {
		t.Fatalf("no pack for %s", key)
	}
	return p
}

func flipBit(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0x10
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	dirStoreOnly(t, "it damages pack and index files in place")
	tests := []struct {
		name     string
		target   string // whose pack or index file to damage
		damage   func(t *testing.T, pack, index string)
		readData bool
		kind     repo.ProblemKind
	}{
		{"flip a bit in a chunk", "a", func(t *testing.T, pack, _ string) { flipBit(t, pack, 5000) }, true, repo.ProblemChunkDamaged},
		{"flip a bit in a compressed chunk", "b1", func(t *testing.T, pack, _ string) { flipBit(t, pack, 100) }, true, repo.ProblemChunkDamaged},
		{"flip a bit in a pack trailer", "b2", func(t *testing.T, pack, _ string) { flipBit(t, pack, -20) }, false, repo.ProblemPackDamaged},
		{"truncate a pack", "a", func(t *testing.T, pack, _ string) { _ = os.Truncate(pack, 1000) }, false, repo.ProblemPackTruncated},
		{"zero-length pack", "d", func(t *testing.T, pack, _ string) { _ = os.Truncate(pack, 0) }, false, repo.ProblemPackTruncated},
		{"delete a pack", "c", func(t *testing.T, pack, _ string) { _ = os.Remove(pack) }, false, repo.ProblemPackMissing},
		{"damage an index file", "a", func(t *testing.T, _, index string) { flipBit(t, index, 30) }, false, repo.ProblemIndexDamaged},
		{"zero-length index file", "b2", func(t *testing.T, _, index string) { _ = os.Truncate(index, 0) }, false, repo.ProblemIndexDamaged},
		{"delete an index file", "d", func(t *testing.T, _, index string) { _ = os.Remove(index) }, false, repo.ProblemChunkMissing},
	}
	// Which (restore point, path) pairs each chunk's damage must name.
	for _, enc := range []bool{true, false} {
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s/encrypted=%v", tc.name, enc), func(t *testing.T) {
				fx := newCorruptFixture(t, enc)
				want := map[string][]string{
					"a":  {string(fx.rp1) + " /docs/a", string(fx.rp2) + " /docs/a"},
					"b1": {string(fx.rp1) + " /docs/b"},
					"b2": {string(fx.rp2) + " /docs/b"},
					"c":  {string(fx.rp1) + " /c"},
					"d":  {string(fx.rp2) + " /d"},
				}[tc.target]
				r := openRepo(t, fx.dir, repo.Options{})
				pack := fx.packOf(t, r, tc.target)
				index, _ := repo.IndexFileOf(r, fx.chunk[tc.target])
				_ = r.Close()
				tc.damage(t, pack, index)

				r = openRepo(t, fx.dir, repo.Options{})
				rep, err := r.Verify(context.Background(), repo.VerifyOptions{ReadData: tc.readData})
				if err != nil {
					t.Fatal(err)
				}
				if rep.OK() || !rep.Corrupt() {
					t.Fatalf("damage not detected: %+v", rep)
				}
				found := false
				for _, p := range rep.Problems {
					found = found || p.Kind == tc.kind
				}
				if !found {
					t.Fatalf("problems %v, want a %s", rep.Problems, tc.kind)
				}
				var got []string
				for _, d := range rep.DamagedItems {
					got = append(got, string(d.RestorePoint)+" "+d.Path)
				}
				sort.Strings(got)
				sort.Strings(want)
				if fmt.Sprint(got) != fmt.Sprint(want) || rep.DamagedItemCount != len(want) {
					t.Fatalf("damaged items %v, want %v (problems %v)", got, want, rep.Problems)
				}
				t.Logf("%v → %v", rep.Problems, got)
			})
		}
	}
}

func TestTransientReadErrorsAreNotCorruption(t *testing.T) {
	dirStoreOnly(t, "it injects read faults into the local file system")
	ctx := context.Background()
	fx := newCorruptFixture(t, true)
	tests := []struct {
		name      string
		rule      func(pack string) faultfs.Rule
		wantClean bool
	}{
		{"one transient error per pack read clears on retry", func(string) faultfs.Rule {
			return faultfs.Rule{Op: faultfs.OpRead, PathContains: "packs", Times: 1, Transient: true}
		}, true},
		{"transient error on open clears on retry", func(string) faultfs.Rule {
			return faultfs.Rule{Op: faultfs.OpOpen, PathContains: "packs", Times: 2, Transient: true}
		}, true},
		{"transient error on an index file clears on retry", func(string) faultfs.Rule {
			return faultfs.Rule{Op: faultfs.OpRead, PathContains: "index", Times: 1, Transient: true}
		}, true},
		{"persistent read error is unreadable, not corrupt", func(pack string) faultfs.Rule {
			return faultfs.Rule{Op: faultfs.OpRead, PathContains: pack, Transient: true}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ffs := faultfs.New(repo.OSFS{}, fx.dir)
			r := openRepo(t, fx.dir, repo.Options{FS: ffs})
			pack := fx.packOf(t, r, "a")
			ffs.Add(tc.rule(pack[len(fx.dir)+1:]))
			rep, err := r.Verify(ctx, repo.VerifyOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			if ffs.Injected() == 0 {
				t.Fatal("no fault injected")
			}
			if rep.Corrupt() {
				t.Fatalf("transient errors reported as corruption: %v", rep.Problems)
			}
			if rep.OK() != tc.wantClean {
				t.Fatalf("OK=%v, want %v: %v", rep.OK(), tc.wantClean, rep.Problems)
			}
			if !tc.wantClean {
				for _, d := range rep.DamagedItems {
					if d.Reason != repo.ProblemUnreadable {
						t.Fatalf("item %s reported as %s", d.Path, d.Reason)
					}
				}
			}
			if tc.wantClean {
				// Reading items retries the same way.
				ffs.Clear()
				ffs.Add(tc.rule(""))
				_ = readItem(t, r, fx.rp2, "a")
			}
			_ = r.Close()
		})
	}
}
