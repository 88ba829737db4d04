package graphsim_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graph/quickxor"
	"github.com/backup-proxy/backup-proxy/graphsim"
)

func biggestFile(t *testing.T, s *graphsim.Server, driveID string) graphsim.Item {
	t.Helper()
	items, err := s.DriveItems(driveID)
	if err != nil {
		t.Fatal(err)
	}
	var best graphsim.Item
	for _, it := range items {
		if !it.Folder && it.Size > best.Size {
			best = it
		}
	}
	if best.Size < 1000 {
		t.Fatalf("no file large enough in %s", driveID)
	}
	return best
}

func TestContentRedirectRangeAndExpiry(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	o := small(clock)
	o.MaxFileSize = 300 << 10
	o.DownloadURLLifetime = 10 * time.Minute
	o.TokenLifetime = 2 * time.Hour
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	d := s.Tenant().Drives[0].ID
	f := biggestFile(t, s, d)

	want, size, err := s.ItemContent(d, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes, _ := io.ReadAll(want)
	if int64(len(wantBytes)) != size || size != f.Size || quickxor.Base64(wantBytes) != f.QuickXorHash {
		t.Fatalf("oracle inconsistent: %d bytes, size %d, item %+v", len(wantBytes), size, f)
	}

	r := c.get("/drives/" + d + "/items/" + f.ID + "/content")
	loc := r.header.Get("Location")
	if r.status != 302 || loc == "" {
		t.Fatalf("/content: %d %v", r.status, r.header)
	}
	anon := &client{t: t, s: s, http: c.http} // pre-authenticated: no bearer token
	full := anon.get(loc)
	if full.status != 200 || !bytes.Equal(full.body, wantBytes) || full.header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("full download: %d, %d bytes", full.status, len(full.body))
	}

	for _, tc := range []struct {
		rng        string
		from, to   int64 // [from, to)
		wantStatus int
	}{
		{"bytes=0-99", 0, 100, 206},
		{"bytes=5000-", 5000, size, 206},
		{"bytes=-777", size - 777, size, 206},
		{fmt.Sprintf("bytes=%d-%d", size-10, size+500), size - 10, size, 206},
		{fmt.Sprintf("bytes=%d-", size), 0, 0, 416},
		{"bytes=0-1,5-6", 0, 0, 416},
	} {
		r := anon.do("GET", loc, nil, map[string]string{"Range": tc.rng})
		if r.status != tc.wantStatus {
			t.Fatalf("Range %s: status %d, want %d", tc.rng, r.status, tc.wantStatus)
		}
		if tc.wantStatus != 206 {
			continue
		}
		wantCR := fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to-1, size)
		if cr := r.header.Get("Content-Range"); cr != wantCR || !bytes.Equal(r.body, wantBytes[tc.from:tc.to]) {
			t.Fatalf("Range %s: Content-Range %q (want %q), body %d bytes", tc.rng, cr, wantCR, len(r.body))
		}
	}

	// The item's downloadUrl works the same way.
	meta := c.mustGet("/drives/" + d + "/items/" + f.ID)
	if r := anon.get(meta["@microsoft.graph.downloadUrl"].(string)); r.status != 200 || !bytes.Equal(r.body, wantBytes) {
		t.Fatalf("downloadUrl: %d", r.status)
	}
	if r := anon.get(loc[:len(loc)-20] + "AAAAAAAAAAAAAAAAAAAA"); r.status != 401 {
		t.Fatalf("tampered URL: %d", r.status)
	}
	clock.Advance(11 * time.Minute)
	if r := anon.get(loc); r.status != 401 {
		t.Fatalf("expired URL: %d %s", r.status, r.body)
	}
	if r := c.get("/drives/" + d + "/items/" + f.ID + "/content"); r.status != 302 || anon.get(r.header.Get("Location")).status != 200 {
		t.Fatalf("fresh URL after expiry failed")
	}
}

func TestContentIsDeterministicAndVersioned(t *testing.T) {
	o := small(graphsim.NewManualClock(t0))
	o.MaxFileSize = 200 << 10
	a, b := start(t, o), start(t, o)
	d := a.Tenant().Drives[0].ID
	if b.Tenant().Drives[0].ID != d {
		t.Fatal("same seed, different drive ids")
	}
	ia, _ := a.DriveItems(d)
	ib, _ := b.DriveItems(d)
	for i := range ia {
		if ia[i] != ib[i] {
			t.Fatalf("same seed, item %d differs: %+v vs %+v", i, ia[i], ib[i])
		}
	}
	// A modified file keeps most of its 4 KiB blocks.
	f := biggestFile(t, a, d)
	before := readAll(t, a, d, f.ID)
	var after []byte
	for range 50 {
		res := a.Mutate(graphsim.MutationRequest{Modify: 10})
		for _, ch := range res.Changes {
			if ch.ItemID == f.ID {
				after = readAll(t, a, d, f.ID)
			}
		}
		if after != nil {
			break
		}
	}
	if after == nil {
		t.Fatal("file never modified")
	}
	same, blocks := 0, 0
	for off := 0; off+4096 <= min(len(before), len(after)); off += 4096 {
		blocks++
		if bytes.Equal(before[off:off+4096], after[off:off+4096]) {
			same++
		}
	}
	if same*2 < blocks || same == blocks {
		t.Fatalf("%d of %d blocks unchanged after a modification; want most but not all", same, blocks)
	}
}

func readAll(t *testing.T, s *graphsim.Server, d, id string) []byte {
	t.Helper()
	r, _, err := s.ItemContent(d, id)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
