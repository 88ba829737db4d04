package backup

import (
	"errors"
	"testing"
)

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
