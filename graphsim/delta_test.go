package graphsim_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

// checkAgainstTenant compares crawled delta items with the simulator's
// own view of a drive.
func checkAgainstTenant(t *testing.T, s *graphsim.Server, driveID string, got map[string]map[string]any) {
	t.Helper()
	want, err := s.DriveItems(driveID)
	if err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, it := range got {
		if it["deleted"] == nil {
			live++
		}
	}
	if live != len(want) {
		t.Fatalf("drive %s: crawl has %d live items, tenant %d", driveID, live, len(want))
	}
	for _, w := range want {
		g := got[w.ID]
		if g == nil {
			t.Fatalf("item %s (%s) missing from crawl", w.ID, w.Path)
		}
		if g["name"] != w.Name || int64(g["size"].(float64)) != w.Size || g["eTag"] != w.ETag || g["cTag"] != w.CTag {
			t.Fatalf("item %s: crawl %v, tenant %+v", w.ID, g, w)
		}
		ref := g["parentReference"].(map[string]any)
		if ref["driveId"] != driveID || !w.Root && ref["id"] != w.ParentID || ref["path"] != nil {
			t.Fatalf("item %s parentReference %v, want parent %s and no path", w.ID, ref, w.ParentID)
		}
		if w.Folder {
			if g["folder"] == nil || g["file"] != nil {
				t.Fatalf("folder %s facets: %v", w.ID, g)
			}
			continue
		}
		h := g["file"].(map[string]any)["hashes"].(map[string]any)["quickXorHash"]
		if h != w.QuickXorHash || h == "" {
			t.Fatalf("item %s quickXorHash %v, want %s", w.ID, h, w.QuickXorHash)
		}
		if g["@microsoft.graph.downloadUrl"] == nil {
			t.Fatalf("file %s without downloadUrl", w.ID)
		}
	}
}

func TestFullDeltaCrawlEqualsGeneratedTenant(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	for _, d := range s.Tenant().Drives {
		items, all, deltaLink := c.crawl("/drives/" + d.ID + "/root/delta?$top=5")
		checkAgainstTenant(t, s, d.ID, items)
		if len(all) != len(items) {
			t.Fatalf("a quiet drive repeated items: %d raw, %d distinct", len(all), len(items))
		}
		if !strings.Contains(deltaLink, "token=") {
			t.Fatalf("deltaLink %s", deltaLink)
		}
		// Nothing changed: the deltaLink yields nothing.
		page := c.mustGet(deltaLink)
		if n := len(page["value"].([]any)); n != 0 || page["@odata.deltaLink"] == nil {
			t.Fatalf("quiet incremental: %d items, %v", n, page)
		}
	}
	// The SDK's form of the same request.
	d := s.Tenant().Drives[0].ID
	items, _, _ := c.crawl("/drives/" + d + "/items/root/delta()")
	checkAgainstTenant(t, s, d, items)
}

func TestDeltaAfterMutateReturnsExactlyTheChanges(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	links := map[string]string{}
	for _, d := range s.Tenant().Drives {
		_, _, dl := c.crawl("/drives/" + d.ID + "/root/delta")
		links[d.ID] = dl
	}

	res := s.Mutate(graphsim.MutationRequest{Create: 6, Modify: 6, Rename: 4, Delete: 4})
	if len(res.Changes) != 20 {
		t.Fatalf("%d changes, want 20: %+v", len(res.Changes), res.Changes)
	}
	want := map[string]map[string]graphsim.Change{}
	for _, a := range res.Affected {
		if want[a.DriveID] == nil {
			want[a.DriveID] = map[string]graphsim.Change{}
		}
		want[a.DriveID][a.ItemID] = a
	}
	for _, d := range s.Tenant().Drives {
		got, _, next := c.crawl(links[d.ID] + "&$top=3")
		if len(got) != len(want[d.ID]) {
			t.Fatalf("drive %s: delta returned %d items, mutation affected %d", d.ID, len(got), len(want[d.ID]))
		}
		current, _ := s.DriveItems(d.ID)
		byID := map[string]graphsim.Item{}
		for _, it := range current {
			byID[it.ID] = it
		}
		for id, ch := range want[d.ID] {
			g := got[id]
			if g == nil {
				t.Fatalf("drive %s: changed item %s (%s) missing from delta", d.ID, id, ch.Kind)
			}
			if ch.Kind == "deleted" {
				if g["deleted"] == nil || g["name"] != nil || g["cTag"] != nil {
					t.Fatalf("deleted item %s: %v", id, g)
				}
				continue
			}
			w := byID[id]
			if g["deleted"] != nil || g["name"] != w.Name || g["eTag"] != w.ETag || g["cTag"] != w.CTag {
				t.Fatalf("%s item %s: delta %v, tenant %+v", ch.Kind, id, g, w)
			}
		}
		if page := c.mustGet(next); len(page["value"].([]any)) != 0 {
			t.Fatalf("second incremental not empty: %v", page)
		}
	}

	kinds := map[string]int{}
	for _, ch := range res.Changes {
		kinds[ch.Kind]++
		if ch.Kind == "renamed" && (ch.OldName == "" || ch.OldName == ch.Name) {
			t.Fatalf("rename without a new name: %+v", ch)
		}
	}
	if kinds["created"] != 6 || kinds["modified"] != 6 || kinds["renamed"] != 4 || kinds["deleted"] != 4 {
		t.Fatalf("change kinds %v", kinds)
	}
}

func TestDeltaRepeatsItemsChangedDuringACrawl(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	d := s.Tenant().Drives[0].ID
	first := c.mustGet("/drives/" + d + "/root/delta?$top=4")
	var modifiedID string
	for range 20 {
		res := s.Mutate(graphsim.MutationRequest{Modify: 5})
		for _, ch := range res.Affected { // folders above a modified file change too
			for _, v := range first["value"].([]any) {
				if ch.DriveID == d && v.(map[string]any)["id"] == ch.ItemID {
					modifiedID = ch.ItemID
				}
			}
		}
		if modifiedID != "" {
			break
		}
	}
	if modifiedID == "" {
		t.Fatal("no mutation touched an item of the first page")
	}
	items, all, _ := c.crawl(first["@odata.nextLink"].(string))
	for _, v := range first["value"].([]any) {
		if _, again := items[v.(map[string]any)["id"].(string)]; !again {
			items[v.(map[string]any)["id"].(string)] = v.(map[string]any)
		}
	}
	seen := 0
	for _, it := range all {
		if it["id"] == modifiedID {
			seen++
		}
	}
	if seen != 1 {
		t.Fatalf("item modified mid-crawl seen %d times after the first page, want once more", seen)
	}
	checkAgainstTenant(t, s, d, items)
}

func TestDeltaTokenLatestAndDeadToken(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	d := s.Tenant().Drives[1].ID

	latest := c.mustGet("/drives/" + d + "/root/delta?token=latest")
	if len(latest["value"].([]any)) != 0 || latest["@odata.deltaLink"] == nil {
		t.Fatalf("token=latest: %v", latest)
	}
	s.ExpireDeltaTokens()
	r := c.get(latest["@odata.deltaLink"].(string))
	if r.status != 410 || r.errorCode(t) != "resyncChangesApplyDifferences" {
		t.Fatalf("dead token: %d %s", r.status, r.body)
	}
	loc := r.header.Get("Location")
	if _, err := url.Parse(loc); err != nil || loc == "" {
		t.Fatalf("Location %q", loc)
	}
	items, _, _ := c.crawl(loc)
	checkAgainstTenant(t, s, d, items)

	if r := c.get("/drives/" + d + "/root/delta?token=garbage"); r.status != 400 {
		t.Fatalf("malformed token: %d", r.status)
	}
}

func TestDeltaOnTheUserAndSiteDriveAddresses(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	tn := s.Tenant()
	u := tn.Users[0]
	items, _, _ := c.crawl("/users/" + u.UserPrincipalName + "/drive/root/delta")
	checkAgainstTenant(t, s, u.DriveID, items)
	items, _, _ = c.crawl("/sites/" + tn.Sites[0].ID + "/drive/root/delta")
	checkAgainstTenant(t, s, tn.Sites[0].DriveIDs[0], items)
}
