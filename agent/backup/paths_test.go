package backup

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/backup-proxy/backup-proxy/repo"
)

// TestFolderPathsOutliveTheCache crawls 200 nested folders with room for two
// in memory: every path must come back from the restore point being staged.
// The run has no Graph client, so asking Graph instead would panic.
func TestFolderPathsOutliveTheCache(t *testing.T) {
	ctx := t.Context()
	r, err := repo.Open(t.TempDir(), repo.Options{Create: true, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sess, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t", Source: "onedrive:u"})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Abort()
	p := newPathIndex(&jobRun{e: &Engine{cfg: Config{FolderCache: 2}}, log: zaptest.NewLogger(t), sess: sess}, "d")
	put := func(id, path string) {
		t.Helper()
		if err := sess.PutItem(ctx, repo.Item{DriveID: "d", ItemID: id, Path: path, Folder: true}); err != nil {
			t.Fatal(err)
		}
	}
	p.setRoot("root")
	put("root", "/")
	want := map[string]string{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		id, parent := fmt.Sprintf("f%03d", i), "root"
		if i > 0 {
			parent = fmt.Sprintf("f%03d", rng.IntN(i)) // some earlier folder, likely evicted
		}
		pp, err := p.path(ctx, parent)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = pp + "/" + id
		p.setFolder(id, want[id])
		put(id, want[id])
	}
	for id, w := range want {
		if got, err := p.path(ctx, id); err != nil || got != w {
			t.Errorf("path of %s = %q, %v; want %q", id, got, err, w)
		}
	}
	if len(p.folders) > 2 {
		t.Errorf("%d folders in memory, want at most 2", len(p.folders))
	}
	if got, _ := p.path(ctx, "root"); got != "" {
		t.Errorf("root path %q, want \"\"", got)
	}
}

func TestTranslateUsesLongestRenamedAncestor(t *testing.T) {
	p := &pathIndex{renames: map[string]string{
		"/2024/Q1":       "/2024/Projects",          // Q1 renamed
		"/2024/Q1/Draft": "/2024/Projects/Proposal", // and a folder inside it, in the same run
		"/Old":           "/Archive/Old",            // moved
	}}
	tests := []struct{ in, want string }{
		{"/2024/Q1", "/2024/Projects"},
		{"/2024/Q1/a.docx", "/2024/Projects/a.docx"},
		{"/2024/Q1/Draft/b.docx", "/2024/Projects/Proposal/b.docx"},
		{"/2024/Q10/c.docx", "/2024/Q10/c.docx"}, // a sibling sharing the prefix string is not a descendant
		{"/Old/x/y.txt", "/Archive/Old/x/y.txt"},
		{"/Other/z.txt", "/Other/z.txt"},
	}
	for _, tt := range tests {
		if got := p.translate(tt.in); got != tt.want {
			t.Errorf("translate(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestInflightKeepsOnlyTheLatestVersion(t *testing.T) {
	f := &inflight{seq: map[string]uint64{}}
	var recorded []string
	record := func(what string) func() error {
		return func() error { recorded = append(recorded, what); return nil }
	}

	old := f.start("a")
	newer := f.start("a") // the item repeats later in the crawl
	if err := f.finish("a", old, record("old a")); err != nil {
		t.Fatal(err)
	}
	if err := f.finish("a", newer, record("new a")); err != nil {
		t.Fatal(err)
	}

	b := f.start("b")
	f.supersede("b") // b was deleted (or recorded without download) meanwhile
	f.finish("b", b, record("b"))

	c := f.start("c")
	f.supersedeAll() // the drive was reset
	f.finish("c", c, record("c"))

	d := f.start("d")
	wantErr := errors.New("repository failed")
	if err := f.finish("d", d, func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("finish returned %v, want the record error", err)
	}

	if len(recorded) != 1 || recorded[0] != "new a" {
		t.Errorf("recorded %v, want only the newest version of a", recorded)
	}
	if len(f.seq) != 0 {
		t.Errorf("entries left after every download ended: %v", f.seq)
	}
}
