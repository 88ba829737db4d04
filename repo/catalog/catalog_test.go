package catalog

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(time.Second)
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func openTest(t *testing.T) (*Catalog, *fakeClock, string) {
	t.Helper()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(path, Options{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, clk, path
}

func mkItem(drive, id, path string, rev int) Item {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", drive, id, rev)))
	return Item{
		DriveID: drive, ItemID: id, Path: path, Name: path[strings.LastIndexByte(path, '/')+1:],
		Size: int64(100 + rev), ModTime: time.Unix(int64(1700000000+rev), 0).UTC(),
		ETag: fmt.Sprintf("e%d", rev), CTag: fmt.Sprintf("c-%s-%d", id, rev), QuickXorHash: fmt.Sprintf("q-%s-%d", id, rev),
		SHA256: h, Chunks: []ChunkID{ChunkID(h), ChunkID(sha256.Sum256(h[:]))},
	}
}

func listAll(t *testing.T, c *Catalog, rp RestorePointID, prefix string, pageSize int) []Item {
	t.Helper()
	var out []Item
	tok := ""
	for pages := 0; ; pages++ {
		items, next, err := c.ListItems(context.Background(), ListItemsRequest{RestorePoint: rp, PathPrefix: prefix, PageSize: pageSize, PageToken: tok})
		if err != nil {
			t.Fatalf("ListItems(%s, %q, page %d): %v", rp, prefix, pages, err)
		}
		if pageSize > 0 && len(items) > pageSize {
			t.Fatalf("page of %d > %d", len(items), pageSize)
		}
		out = append(out, items...)
		if next == "" {
			return out
		}
		if len(items) == 0 {
			t.Fatal("empty page with a next token")
		}
		tok = next
	}
}

func commit(t *testing.T, c *Catalog, base RestorePointID, fn func(tx *Txn)) (RestorePoint, int64) {
	t.Helper()
	ctx := context.Background()
	tx, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: "onedrive:u1", Base: base})
	if err != nil {
		t.Fatal(err)
	}
	fn(tx)
	rp, err := tx.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rp, tx.RowsWritten()
}

func TestIncrementalCarriesUnchangedItemsByReference(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	const n = 2000
	full, fullRows := commit(t, c, "", func(tx *Txn) {
		for i := 0; i < n; i++ {
			d := []string{"dA", "dB"}[i%2]
			if err := tx.Put(ctx, mkItem(d, fmt.Sprintf("it%05d", i), fmt.Sprintf("/docs/f%05d.txt", i), 0)); err != nil {
				t.Fatal(err)
			}
		}
		_ = tx.SetDeltaLink("dA", "linkA1")
		_ = tx.SetDeltaLink("dB", "linkB1")
	})
	if full.Items != n {
		t.Fatalf("full has %d items, want %d", full.Items, n)
	}
	// 1 % changes: 14 changed, 4 deleted, 1 moved, 1 new.
	inc, incRows := commit(t, c, full.ID, func(tx *Txn) {
		for i := 0; i < 14; i++ {
			j := i * 100
			d := []string{"dA", "dB"}[j%2]
			_ = tx.Put(ctx, mkItem(d, fmt.Sprintf("it%05d", j), fmt.Sprintf("/docs/f%05d.txt", j), 1))
		}
		for _, j := range []int{3, 5, 7, 9} {
			_ = tx.Delete(ctx, []string{"dA", "dB"}[j%2], fmt.Sprintf("it%05d", j))
		}
		_ = tx.Put(ctx, mkItem("dA", "it00002", "/moved/f00002.txt", 0))
		_ = tx.Put(ctx, mkItem("dB", "new1", "/docs/new1.txt", 0))
		// Re-putting an unchanged item costs nothing.
		_ = tx.Put(ctx, mkItem("dA", "it00010", "/docs/f00010.txt", 0))
		_ = tx.SetDeltaLink("dA", "linkA2")
	})
	if fullRows < 3*n {
		t.Fatalf("full restore point wrote %d rows, expected at least %d", fullRows, 3*n)
	}
	const changes = 20
	if incRows > 6*changes {
		t.Fatalf("incremental with %d changes wrote %d rows (full wrote %d): not by reference", changes, incRows, fullRows)
	}
	t.Logf("full: %d rows for %d items; incremental: %d rows for %d changes (%.2f%%)", fullRows, n, incRows, changes, 100*float64(incRows)/float64(fullRows))

	if inc.Items != n-4+1 || inc.ItemsWritten != 16 || inc.ItemsDeleted != 4 {
		t.Fatalf("incremental stats: items %d written %d deleted %d", inc.Items, inc.ItemsWritten, inc.ItemsDeleted)
	}
	got := listAll(t, c, inc.ID, "", 333)
	if len(got) != n-4+1 {
		t.Fatalf("incremental lists %d items, want %d", len(got), n-4+1)
	}
	byID := map[string]Item{}
	for _, it := range got {
		byID[it.DriveID+"/"+it.ItemID] = it
	}
	if it := byID["dA/it00000"]; it.CTag != "c-it00000-1" {
		t.Fatalf("changed item has cTag %q", it.CTag)
	}
	if it := byID["dA/it00002"]; it.Path != "/moved/f00002.txt" {
		t.Fatalf("moved item at %q", it.Path)
	}
	if _, ok := byID["dB/it00003"]; ok {
		t.Fatal("deleted item still listed")
	}
	if it := byID["dB/it00011"]; it.CTag != "c-it00011-0" || len(it.Chunks) != 2 {
		t.Fatalf("inherited item: %+v", it)
	}
	// The full restore point is unchanged.
	if fullItems := listAll(t, c, full.ID, "", 0); len(fullItems) != n {
		t.Fatalf("full lists %d after incremental", len(fullItems))
	}
	if it, err := c.Item(ctx, full.ID, "it00002"); err != nil || it.Path != "/docs/f00002.txt" {
		t.Fatalf("full item it00002: %+v %v", it, err)
	}
	if it, err := c.Item(ctx, inc.ID, "it00002"); err != nil || it.Path != "/moved/f00002.txt" {
		t.Fatalf("incremental item it00002: %+v %v", it, err)
	}
	if _, err := c.Item(ctx, inc.ID, "it00003"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted item: %v", err)
	}
	// The moved item is not listed at its old path.
	if old := listAll(t, c, inc.ID, "/docs/f00002", 0); len(old) != 0 {
		t.Fatalf("old path still lists %+v", old)
	}
	link, rp, err := c.DeltaLink(ctx, "t1", "onedrive:u1", "dA")
	if err != nil || link != "linkA2" || rp != inc.ID {
		t.Fatalf("deltaLink dA = %q %s %v", link, rp, err)
	}
	link, _, _ = c.DeltaLink(ctx, "t1", "onedrive:u1", "dB")
	if link != "linkB1" {
		t.Fatalf("deltaLink dB carried = %q", link)
	}
}

func TestRestorePointAndDeltaLinkVisibleTogether(t *testing.T) {
	c, _, path := openTest(t)
	ctx := context.Background()
	tx, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: "site:s1"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3*flushEvery; i++ { // several flushed batches
		if err := tx.Put(ctx, mkItem("d1", fmt.Sprint("i", i), fmt.Sprint("/f", i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.SetDeltaLink("d1", "L1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.DeltaLink(ctx, "t1", "site:s1", "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deltaLink visible before commit: %v", err)
	}
	if rps, _ := c.ListRestorePoints(ctx, "t1", ""); len(rps) != 0 {
		t.Fatalf("restore point visible before commit: %v", rps)
	}
	// A crash before commit: close without committing and reopen.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if rps, _ := c2.ListRestorePoints(ctx, "", ""); len(rps) != 0 {
		t.Fatalf("uncommitted restore point survived a crash: %v", rps)
	}
	gc, err := c2.GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if gc.RowsRemoved != 2*3*flushEvery || gc.VersionsRemoved != 3*flushEvery {
		t.Fatalf("gc of abandoned rows: %+v", gc)
	}
	tx2, _ := c2.Begin(ctx, BeginOptions{Tenant: "t1", Source: "site:s1"})
	_ = tx2.Put(ctx, mkItem("d1", "x", "/x", 0))
	_ = tx2.SetDeltaLink("d1", "L2")
	rp, err := tx2.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if link, id, err := c2.DeltaLink(ctx, "t1", "site:s1", "d1"); err != nil || link != "L2" || id != rp.ID {
		t.Fatalf("deltaLink after commit: %q %s %v", link, id, err)
	}
	// An aborted transaction leaves nothing visible.
	tx3, _ := c2.Begin(ctx, BeginOptions{Tenant: "t1", Source: "site:s1", Base: rp.ID})
	_ = tx3.SetDeltaLink("d1", "L3")
	_ = tx3.Abort()
	if _, err := tx3.Commit(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after abort: %v", err)
	}
	if link, _, _ := c2.DeltaLink(ctx, "t1", "site:s1", "d1"); link != "L2" {
		t.Fatalf("aborted deltaLink leaked: %q", link)
	}
}

func TestListItemsPagingByPrefix(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	var want []Item
	rp, _ := commit(t, c, "", func(tx *Txn) {
		for i := 0; i < 250; i++ {
			d := []string{"drive-a", "drive-b", "drive-c"}[i%3]
			p := fmt.Sprintf("/%s/f%03d", []string{"Docs", "Docs/Sub", "Pictures", "Docsx"}[i%4], i)
			it := mkItem(d, fmt.Sprintf("id%03d", i), p, 0)
			want = append(want, it)
			_ = tx.Put(ctx, it)
		}
	})
	sort.Slice(want, func(i, j int) bool {
		a, b := want[i], want[j]
		if a.DriveID != b.DriveID {
			return a.DriveID < b.DriveID
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.ItemID < b.ItemID
	})
	for _, tc := range []struct {
		prefix string
		page   int
	}{
		{"", 1}, {"", 7}, {"", 100}, {"", 0}, {"", 10000},
		{"/Docs/", 3}, {"/Docs", 13}, {"/Pictures/f1", 2}, {"/nothing", 5},
	} {
		t.Run(fmt.Sprintf("%q/%d", tc.prefix, tc.page), func(t *testing.T) {
			var exp []string
			for _, it := range want {
				if strings.HasPrefix(it.Path, tc.prefix) {
					exp = append(exp, it.DriveID+":"+it.Path)
				}
			}
			var got []string
			for _, it := range listAll(t, c, rp.ID, tc.prefix, tc.page) {
				got = append(got, it.DriveID+":"+it.Path)
			}
			if !reflect.DeepEqual(got, exp) {
				t.Fatalf("got %d items %v…, want %d %v…", len(got), head(got), len(exp), head(exp))
			}
		})
	}
	_, tok, err := c.ListItems(ctx, ListItemsRequest{RestorePoint: rp.ID, PageSize: 2})
	if err != nil || tok == "" {
		t.Fatal(err)
	}
	other, _ := commit(t, c, rp.ID, func(*Txn) {})
	for _, bad := range []ListItemsRequest{
		{RestorePoint: other.ID, PageToken: tok},
		{RestorePoint: rp.ID, PageToken: "garbage"},
		{RestorePoint: rp.ID, PageToken: "1." + string(rp.ID) + ".zz"},
		{RestorePoint: "nope"},
	} {
		if _, _, err := c.ListItems(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("%+v: %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, _, err := c.ListItems(ctx, ListItemsRequest{RestorePoint: "rp-999"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown restore point: %v", err)
	}
}

func head(s []string) []string {
	if len(s) > 4 {
		return s[:4]
	}
	return s
}

func TestLookupVersion(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	commit(t, c, "", func(tx *Txn) {
		_ = tx.Put(ctx, mkItem("d1", "a", "/a", 1))
		_ = tx.Put(ctx, mkItem("d1", "b", "/b", 1))
	})
	tests := []struct {
		name, drive, item, ctag, qxh string
		found                        bool
	}{
		{"by cTag", "d1", "a", "c-a-1", "", true},
		{"by quickXorHash", "d1", "a", "", "q-a-1", true},
		{"stale cTag, same content", "d1", "a", "c-a-2", "q-a-1", true},
		{"other revision", "d1", "a", "c-a-2", "q-a-2", false},
		{"other item", "d1", "b", "c-a-1", "", false},
		{"other drive", "d2", "a", "c-a-1", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it, ok, err := c.LookupVersion(ctx, "t1", tc.drive, tc.item, tc.ctag, tc.qxh)
			if err != nil || ok != tc.found {
				t.Fatalf("found=%v err=%v", ok, err)
			}
			if ok && (it.ItemID != tc.item || len(it.Chunks) != 2) {
				t.Fatalf("got %+v", it)
			}
		})
	}
	if _, _, err := c.LookupVersion(ctx, "t1", "d1", "a", "", ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("lookup without tags: %v", err)
	}
}

func TestDriveResetAndRemoval(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	r1, _ := commit(t, c, "", func(tx *Txn) {
		_ = tx.Put(ctx, mkItem("d1", "a", "/a", 0))
		_ = tx.Put(ctx, mkItem("d2", "b", "/b", 0))
		_ = tx.SetDeltaLink("d1", "L1")
		_ = tx.SetDeltaLink("d2", "L2")
	})
	r2, _ := commit(t, c, r1.ID, func(tx *Txn) {
		if err := tx.RemoveDrive("d2"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Put(ctx, mkItem("d2", "x", "/x", 0)); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("put into removed drive: %v", err)
		}
	})
	if got := listAll(t, c, r2.ID, "", 0); len(got) != 1 || got[0].DriveID != "d1" || len(r2.Drives) != 1 {
		t.Fatalf("after removal: %+v drives %+v", got, r2.Drives)
	}
	// d2 comes back in a later restore point: its old items must not resurface.
	r3, _ := commit(t, c, r2.ID, func(tx *Txn) {
		_ = tx.Put(ctx, mkItem("d2", "c", "/c", 0))
	})
	if got := listAll(t, c, r3.ID, "", 0); len(got) != 2 || got[1].ItemID != "c" {
		t.Fatalf("re-added drive: %+v", got)
	}
	r4, _ := commit(t, c, r3.ID, func(tx *Txn) {
		if err := tx.ResetDrive("d1"); err != nil {
			t.Fatal(err)
		}
		_ = tx.Put(ctx, mkItem("d1", "z", "/z", 0))
		if err := tx.ResetDrive("d1"); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("reset after changes: %v", err)
		}
	})
	got := listAll(t, c, r4.ID, "", 0)
	if len(got) != 2 || got[0].ItemID != "z" || got[1].ItemID != "c" || r4.Items != 2 {
		t.Fatalf("after reset: %+v (%d)", got, r4.Items)
	}
	if link, _, _ := c.DeltaLink(ctx, "t1", "onedrive:u1", "d1"); link != "L1" {
		t.Fatalf("reset drive without new deltaLink: deltaLink %q should come from the restore point that has one", link)
	}
}

func TestForgetKeepsLatestAndPolicies(t *testing.T) {
	tests := []struct {
		name       string
		keepLast   int
		keepWithin time.Duration
		wantKept   int
	}{
		{"keep last 2", 2, 0, 2},
		{"keep last 0 within 150m", 0, 150 * time.Minute, 2},
		{"keep within 1ns keeps newest", 0, time.Nanosecond, 1},
		{"union of rules", 1, 210 * time.Minute, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, clk, _ := openTest(t)
			ctx := context.Background()
			var base RestorePointID
			for i := 0; i < 5; i++ {
				rp, _ := commit(t, c, base, func(tx *Txn) {
					_ = tx.Put(ctx, mkItem("d", "a", "/a", i))
				})
				base = rp.ID
				clk.Advance(time.Hour)
			}
			gone, err := c.Forget(ctx, ForgetPolicy{KeepLast: tc.keepLast, KeepWithin: tc.keepWithin})
			if err != nil {
				t.Fatal(err)
			}
			left, _ := c.ListRestorePoints(ctx, "t1", "onedrive:u1")
			if len(left) != tc.wantKept || len(gone) != 5-tc.wantKept {
				t.Fatalf("kept %d forgot %d, want kept %d", len(left), len(gone), tc.wantKept)
			}
			if left[len(left)-1].ID != base {
				t.Fatal("newest restore point was forgotten")
			}
		})
	}
	c, _, _ := openTest(t)
	if _, err := c.Forget(context.Background(), ForgetPolicy{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty policy: %v", err)
	}
}

func TestForgetRefusesBaseOfRunningJob(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	r1, _ := commit(t, c, "", func(tx *Txn) { _ = tx.Put(ctx, mkItem("d", "a", "/a", 0)) })
	r2, _ := commit(t, c, r1.ID, func(tx *Txn) { _ = tx.Put(ctx, mkItem("d", "b", "/b", 0)) })
	tx, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: "onedrive:u1", Base: r1.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ForgetRestorePoint(ctx, r1.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("forget base of running job: %v", err)
	}
	gone, _ := c.Forget(ctx, ForgetPolicy{KeepLast: 1})
	if len(gone) != 0 {
		t.Fatalf("forgot %v while it is a base", gone)
	}
	if _, err := c.GC(ctx, false); err != nil {
		t.Fatal(err)
	}
	_ = tx.Put(ctx, mkItem("d", "c", "/c", 0))
	r3, err := tx.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, c, r3.ID, "", 0); len(got) != 2 {
		t.Fatalf("branch from r1: %+v", got)
	}
	if got := listAll(t, c, r2.ID, "", 0); len(got) != 2 {
		t.Fatalf("r2: %+v", got)
	}
}

// TestModel drives random transactions, branches, forgets and GCs against an
// in-memory model and checks every live restore point after every step.
func TestModel(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4}
	if testing.Short() {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runModel(t, seed) })
	}
}

type modelRP struct {
	id    RestorePointID
	items map[string]Item // drive/item → item
	links map[string]string
}

func runModel(t *testing.T, seed uint64) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, seed))
	drives := []string{"d1", "d2", "d3"}
	var live []*modelRP
	rev := 0
	for step := 0; step < 40; step++ {
		var base *modelRP
		if len(live) > 0 && rng.IntN(5) > 0 {
			base = live[rng.IntN(len(live))]
			if rng.IntN(2) == 0 {
				base = live[len(live)-1]
			}
		}
		m := &modelRP{items: map[string]Item{}, links: map[string]string{}}
		opts := BeginOptions{Tenant: "t1", Source: "onedrive:u1"}
		if base != nil {
			opts.Base = base.id
			for k, v := range base.items {
				m.items[k] = v
			}
			for k, v := range base.links {
				m.links[k] = v
			}
		}
		tx, err := c.Begin(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		touched := map[string]bool{}
		if base != nil && rng.IntN(6) == 0 {
			d := drives[rng.IntN(len(drives))]
			if rng.IntN(2) == 0 {
				_ = tx.RemoveDrive(d)
				delete(m.links, d)
			} else {
				_ = tx.ResetDrive(d)
				touched[d] = true
				m.links[d] = ""
			}
			for k := range m.items {
				if strings.HasPrefix(k, d+"/") {
					delete(m.items, k)
				}
			}
			touched["!"+d] = true
		}
		nops := 1 + rng.IntN(150) // past flushEvery: some staged rows are in the file
		for i := 0; i < nops; i++ {
			checkPath(t, tx, m, drives[rng.IntN(len(drives))], fmt.Sprintf("it%02d", rng.IntN(40)))
			d := drives[rng.IntN(len(drives))]
			if touched["!"+d] && !touched[d] {
				continue // removed drive
			}
			id := fmt.Sprintf("it%02d", rng.IntN(40))
			key := d + "/" + id
			if rng.IntN(4) == 0 {
				if err := tx.Delete(ctx, d, id); err != nil {
					t.Fatal(err)
				}
				delete(m.items, key)
			} else {
				rev++
				r := rev
				if old, ok := m.items[key]; ok && rng.IntN(3) == 0 {
					r = int(old.Size - 100) // same version, maybe moved
				}
				it := mkItem(d, id, fmt.Sprintf("/p%d/%s", rng.IntN(3), id), r)
				if err := tx.Put(ctx, it); err != nil {
					t.Fatal(err)
				}
				m.items[key] = it
			}
			if _, ok := m.links[d]; !ok {
				m.links[d] = ""
			}
			touched[d] = true
		}
		for d := range m.links {
			if touched[d] && rng.IntN(2) == 0 {
				l := fmt.Sprintf("L%d", step)
				_ = tx.SetDeltaLink(d, l)
				m.links[d] = l
			}
		}
		if rng.IntN(8) == 0 {
			_ = tx.Abort()
		} else {
			rp, err := tx.Commit(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m.id = rp.ID
			live = append(live, m)
		}
		if rng.IntN(5) == 0 && len(live) > 2 {
			i := rng.IntN(len(live) - 1)
			if err := c.ForgetRestorePoint(ctx, live[i].id); err != nil {
				t.Fatal(err)
			}
			live = append(live[:i], live[i+1:]...)
		}
		if rng.IntN(4) == 0 {
			if _, err := c.GC(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range live {
			checkModel(t, c, m, step)
		}
	}
	// A final GC keeps exactly the chunks of visible versions.
	gc, err := c.GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[ChunkID]struct{}{}
	for _, m := range live {
		checkModel(t, c, m, -1)
		for _, it := range m.items {
			for _, ch := range it.Chunks {
				want[ch] = struct{}{}
			}
		}
	}
	if !reflect.DeepEqual(gc.Chunks, want) {
		t.Fatalf("gc keeps %d chunks, model references %d", len(gc.Chunks), len(want))
	}
	if again, _ := c.GC(ctx, false); again.RowsRemoved+again.VersionsRemoved+again.ChainRemoved != 0 {
		t.Fatalf("second gc still removes %+v", again)
	}
}

// checkPath compares what the staging transaction says of an item's path
// with the model of the restore point being staged.
func checkPath(t *testing.T, tx *Txn, m *modelRP, drive, item string) {
	t.Helper()
	path, ok, err := tx.Path(context.Background(), drive, item)
	want, wantOK := m.items[drive+"/"+item]
	if err != nil || ok != wantOK || path != want.Path {
		t.Fatalf("staged path of %s/%s = %q, %v, %v; want %q, %v", drive, item, path, ok, err, want.Path, wantOK)
	}
}

func checkModel(t *testing.T, c *Catalog, m *modelRP, step int) {
	t.Helper()
	ctx := context.Background()
	got := listAll(t, c, m.id, "", 7)
	if len(got) != len(m.items) {
		t.Fatalf("step %d %s: lists %d items, model has %d", step, m.id, len(got), len(m.items))
	}
	var items, bytes int64
	for _, it := range got {
		want, ok := m.items[it.DriveID+"/"+it.ItemID]
		if !ok || !reflect.DeepEqual(it, want) {
			t.Fatalf("step %d %s: got %+v want %+v", step, m.id, it, want)
		}
		items++
		bytes += it.Size
		byID, err := c.ItemInDrive(ctx, m.id, it.DriveID, it.ItemID)
		if err != nil || !reflect.DeepEqual(byID, want) {
			t.Fatalf("step %d %s: by id %+v %v", step, m.id, byID, err)
		}
	}
	rp, err := c.RestorePoint(ctx, m.id)
	if err != nil {
		t.Fatal(err)
	}
	if rp.Items != items || rp.Bytes != bytes {
		t.Fatalf("step %d %s: stats items %d bytes %d, want %d %d", step, m.id, rp.Items, rp.Bytes, items, bytes)
	}
	links := map[string]string{}
	for _, d := range rp.Drives {
		links[d.ID] = d.DeltaLink
	}
	if !reflect.DeepEqual(links, m.links) {
		t.Fatalf("step %d %s: drives %v want %v", step, m.id, links, m.links)
	}
}

func TestConcurrentTransactions(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := fmt.Sprint("site:s", w%4)
			tx, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: src})
			if err != nil {
				errs <- err
				return
			}
			var inner sync.WaitGroup
			for g := 0; g < 4; g++ {
				inner.Add(1)
				go func() {
					defer inner.Done()
					for i := 0; i < 300; i++ {
						if err := tx.Put(ctx, mkItem("d", fmt.Sprintf("w%d-g%d-%d", w, g, i), fmt.Sprintf("/w%d/g%d/%d", w, g, i), 0)); err != nil {
							errs <- err
						}
					}
				}()
			}
			inner.Wait()
			if _, err := tx.Commit(ctx); err != nil {
				errs <- err
			}
			if _, err := c.GC(ctx, false); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rps, _ := c.ListRestorePoints(ctx, "t1", "")
	if len(rps) != 8 {
		t.Fatalf("%d restore points", len(rps))
	}
	for _, rp := range rps {
		if n := len(listAll(t, c, rp.ID, "", 500)); n != 1200 || rp.Items != 1200 {
			t.Fatalf("%s lists %d items (stats %d)", rp.ID, n, rp.Items)
		}
	}
}

func TestWalkVisibleSharesVersions(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	r1, _ := commit(t, c, "", func(tx *Txn) {
		_ = tx.Put(ctx, mkItem("d", "a", "/a", 0))
		_ = tx.Put(ctx, mkItem("d", "b", "/b", 0))
	})
	r2, _ := commit(t, c, r1.ID, func(tx *Txn) { _ = tx.Put(ctx, mkItem("d", "b", "/b", 1)) })
	got := map[string][]RestorePointID{}
	err := c.WalkVisible(ctx, func(v Visible) error {
		for _, rp := range v.RestorePoints {
			got[fmt.Sprintf("%s@%s", v.Item.Path, v.Item.CTag)] = append(got[fmt.Sprintf("%s@%s", v.Item.Path, v.Item.CTag)], rp.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]RestorePointID{
		"/a@c-a-0": {r1.ID, r2.ID},
		"/b@c-b-0": {r1.ID},
		"/b@c-b-1": {r2.ID},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("walk %v want %v", got, want)
	}
}

func TestVersionEncodingRoundTrip(t *testing.T) {
	for _, it := range []Item{
		mkItem("d", "a", "/a", 1),
		{DriveID: "d", ItemID: "zero-time", Path: "/z"},
		{DriveID: "d", ItemID: "folder", Name: "Documents", CTag: "c1", Folder: true},
		{DriveID: "d", ItemID: "x", Name: "ü名", Size: 1 << 40, ModTime: time.Date(1601, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Hour), Chunks: []ChunkID{{1}, {2}, {3}}},
	} {
		it.Path = ""
		got, err := decodeVersion(encodeVersion(&it))
		if err != nil {
			t.Fatal(err)
		}
		if len(it.Chunks) == 0 {
			it.Chunks = []ChunkID{}
		}
		if !reflect.DeepEqual(got, it) {
			t.Fatalf("round trip: %+v → %+v", it, got)
		}
	}
	enc := encodeVersion(&Item{DriveID: "d", ItemID: "a", Chunks: []ChunkID{{9}}})
	for n := 0; n < len(enc); n++ {
		if _, err := decodeVersion(enc[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	c, _, _ := openTest(t)
	ctx := context.Background()
	if _, err := c.Begin(ctx, BeginOptions{Tenant: "", Source: "s"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	if _, err := c.Begin(ctx, BeginOptions{Tenant: "t", Source: "s", Base: "rp-77"}); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	tx, _ := c.Begin(ctx, BeginOptions{Tenant: "t", Source: "s"})
	for _, it := range []Item{{}, {DriveID: "d", ItemID: "a\x00b", Path: "/x"}, {DriveID: "d", ItemID: "a", Path: "/x", Size: -1}} {
		if err := tx.Put(ctx, it); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("%+v: %v", it, err)
		}
	}
	rp, _ := tx.Commit(ctx)
	if _, err := c.Begin(ctx, BeginOptions{Tenant: "t", Source: "other", Base: rp.ID}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("base of another source: %v", err)
	}
}

// TestReopenWhileStaging lets the catalogue reopen its file after every few
// page allocations while a transaction stages items, first with a reader
// looking one up in a loop; then checks that a reader in progress defers
// the reopen instead of making it wait.
func TestReopenWhileStaging(t *testing.T) {
	c, _, _ := openTest(t)
	c.reopenAfter = 50
	ctx := context.Background()
	seed, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: "onedrive:u1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := seed.Put(ctx, mkItem("d1", "seed", "/seed", 0)); err != nil {
		t.Fatal(err)
	}
	base, err := seed.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := c.Begin(ctx, BeginOptions{Tenant: "t1", Source: "onedrive:u1", Base: base.ID})
	if err != nil {
		t.Fatal(err)
	}
	stage := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			id := fmt.Sprintf("it%04d", i)
			if err := tx.Put(ctx, mkItem("d1", id, "/f/"+id, i)); err != nil {
				t.Fatal(err)
			}
		}
	}

	done := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		defer close(readErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := c.ItemInDrive(ctx, base.ID, "d1", "seed"); err != nil {
				readErr <- err
				return
			}
		}
	}()
	stage(0, 500) // with the reader: reopens happen when it is between reads
	close(done)
	if err := <-readErr; err != nil {
		t.Fatalf("reader: %v", err)
	}
	stage(500, 1000) // alone: every flush past the threshold reopens
	if c.reopens.Load() == 0 {
		t.Fatal("the catalogue never reopened")
	}

	// Past the threshold, but a reader holds the catalogue: no reopen.
	c.reopenAfter = 1 << 40
	stage(1000, 1200)
	c.reopenAfter = 1
	before := c.reopens.Load()
	c.dbmu.RLock()
	err = c.maybeReopen()
	c.dbmu.RUnlock()
	if err != nil || c.reopens.Load() != before {
		t.Fatalf("reopen under a reader: %v, %d reopens, want none", err, c.reopens.Load()-before)
	}
	if err := c.maybeReopen(); err != nil || c.reopens.Load() != before+1 {
		t.Fatalf("reopen once the reader left: %v, %d reopens, want 1", err, c.reopens.Load()-before)
	}

	rp, err := tx.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, c, rp.ID, "", 500); len(got) != 1201 {
		t.Fatalf("restore point lists %d items, want 1201", len(got))
	}
}
