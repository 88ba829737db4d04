package graphsim_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

func TestSitesDrivesUsersAndLists(t *testing.T) {
	o := small(graphsim.NewManualClock(t0))
	o.Sites = 5
	o.Users = 6
	o.LibrariesPerSite = 2
	o.Faults.UnprovisionedOneDrives = 0.5
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	tn := s.Tenant()

	// getAllSites pages with $top and nextLink.
	var ids []string
	next := "/sites/getAllSites?$top=2"
	for next != "" {
		page := c.mustGet(next)
		if !strings.HasSuffix(page["@odata.context"].(string), "$metadata#sites") {
			t.Fatalf("@odata.context %v", page["@odata.context"])
		}
		for _, v := range page["value"].([]any) {
			ids = append(ids, v.(map[string]any)["id"].(string))
		}
		next, _ = page["@odata.nextLink"].(string)
	}
	var want []string
	for _, st := range tn.Sites {
		want = append(want, st.ID)
	}
	sort.Strings(ids)
	sort.Strings(want)
	if !reflect.DeepEqual(ids, want) {
		t.Fatalf("getAllSites %v, want %v", ids, want)
	}
	if got := c.mustGet("/sites?search=*")["value"].([]any); len(got) != len(tn.Sites) {
		t.Fatalf("search=* returned %d sites", len(got))
	}
	st := tn.Sites[0]
	if got := c.mustGet("/sites?search=" + url.QueryEscape(st.DisplayName))["value"].([]any); len(got) == 0 {
		t.Fatalf("search %q found nothing", st.DisplayName)
	}

	// By id, by hostname:/path, by hostname:/path:/drives.
	u, _ := url.Parse(st.WebURL)
	for _, p := range []string{"/sites/" + st.ID, "/sites/" + u.Host + ":" + u.Path, "/sites/" + url.PathEscape(st.ID)} {
		if got := c.mustGet(p); got["id"] != st.ID || got["webUrl"] != st.WebURL {
			t.Fatalf("GET %s: %v", p, got)
		}
	}
	drives := c.mustGet("/sites/" + u.Host + ":" + u.Path + ":/drives")["value"].([]any)
	if len(drives) != 2 || drives[0].(map[string]any)["driveType"] != "documentLibrary" {
		t.Fatalf("site drives %v", drives)
	}
	if r := c.get("/sites/" + u.Host + ":/sites/nope"); r.status != 404 || r.errorCode(t) != "itemNotFound" {
		t.Fatalf("unknown site: %d %s", r.status, r.body)
	}

	// Users and their OneDrives.
	users := c.mustGet("/users?$top=4")
	if len(users["value"].([]any)) != 4 || users["@odata.nextLink"] == nil {
		t.Fatalf("users page: %v", users)
	}
	var sawMissing bool
	for _, usr := range tn.Users {
		r := c.get("/users/" + usr.UserPrincipalName + "/drive")
		if usr.HasOneDrive {
			if r.status != 200 || r.json(t)["driveType"] != "business" || r.json(t)["id"] != usr.DriveID {
				t.Fatalf("drive of %s: %d %s", usr.UserPrincipalName, r.status, r.body)
			}
			continue
		}
		sawMissing = true
		if r.status != 404 || r.errorCode(t) != "ResourceNotFound" || !strings.Contains(string(r.body), "User's mysite not found") {
			t.Fatalf("unprovisioned OneDrive of %s: %d %s", usr.UserPrincipalName, r.status, r.body)
		}
	}
	if !sawMissing {
		t.Fatal("no unprovisioned OneDrive generated")
	}

	// Lists: libraries and the generic list, items with fields.
	lists := c.mustGet("/sites/" + st.ID + "/lists")["value"].([]any)
	if len(lists) != 3 {
		t.Fatalf("%d lists, want 2 libraries + Tasks", len(lists))
	}
	for _, l := range lists {
		lm := l.(map[string]any)
		items := c.mustGet("/sites/" + st.ID + "/lists/" + lm["id"].(string) + "/items?expand=fields")["value"].([]any)
		if len(items) == 0 {
			t.Fatalf("list %v has no items", lm["displayName"])
		}
		fields := items[0].(map[string]any)["fields"].(map[string]any)
		if lm["list"].(map[string]any)["template"] == "documentLibrary" && fields["FileLeafRef"] == nil ||
			lm["list"].(map[string]any)["template"] == "genericList" && fields["Title"] == nil {
			t.Fatalf("list %v item fields %v", lm["displayName"], fields)
		}
	}

	// Items, children and path addressing agree.
	d := tn.Drives[0].ID
	root := c.mustGet("/drives/" + d + "/root")
	if root["root"] == nil || root["folder"] == nil {
		t.Fatalf("root %v", root)
	}
	kids := c.mustGet("/drives/" + d + "/root/children")["value"].([]any)
	if len(kids) == 0 {
		t.Fatal("root has no children")
	}
	kid := kids[0].(map[string]any)
	byPath := c.mustGet("/drives/" + d + "/root:/" + url.PathEscape(kid["name"].(string)) + ":")
	if byPath["id"] != kid["id"] || kid["parentReference"].(map[string]any)["path"] != "/drives/"+d+"/root:" {
		t.Fatalf("path addressing %v vs %v", byPath["id"], kid)
	}
	if r := c.get("/drives/" + d + "/items/01NOPE"); r.status != 404 || r.errorCode(t) != "itemNotFound" {
		t.Fatalf("unknown item: %d %s", r.status, r.body)
	}
	// Permissions need Sites.FullControl.All: the backup app is refused, the
	// organization app is not, and both pay 5 RU.
	if r := c.get("/drives/" + d + "/items/" + kid["id"].(string) + "/permissions"); r.status != 403 {
		t.Fatalf("permissions without FullControl: %d", r.status)
	}
	org := newClient(t, s, appByOrg(s, true))
	if r := org.get("/drives/" + d + "/items/" + kid["id"].(string) + "/permissions"); r.status != 200 {
		t.Fatalf("permissions with FullControl: %d %s", r.status, r.body)
	}
	org.mustGet("/drives/" + d + "/items/" + kid["id"].(string) + "?$expand=permissions")
	for _, a := range s.Stats().Apps {
		if a.ClientID == appByOrg(s, true).ClientID && a.RU != 10 {
			t.Fatalf("org app RU %d, want 5 + 5", a.RU)
		}
	}
}

func certKey(cred *graphsim.AppCredential) string {
	return base64.StdEncoding.EncodeToString(cred.Cert.Raw)
}

func TestCreateConsentRotateAndDeleteAnApp(t *testing.T) {
	clock := graphsim.NewManualClock(t0)
	s := start(t, small(clock))
	org := newClient(t, s, appByOrg(s, true))
	backup := appByOrg(s, false)

	// A fresh credential for the new app (reuse graphsim's generator via a
	// throwaway registration on the backup app).
	cred, err := s.AddAppCertificate(backup.ClientID, t0.Add(-time.Hour), t0.Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if r := newClient(t, s, backup).postJSON("/applications", map[string]any{"displayName": "x"}); r.status != 403 {
		t.Fatalf("backup app creating apps: %d", r.status)
	}
	r := org.postJSON("/applications", map[string]any{
		"displayName":    "pool app",
		"keyCredentials": []map[string]any{{"type": "AsymmetricX509Cert", "usage": "Verify", "key": certKey(cred), "displayName": "CN=pool"}},
		"requiredResourceAccess": []map[string]any{{"resourceAppId": "00000003-0000-0000-c000-000000000000",
			"resourceAccess": []map[string]any{{"id": "332a536c-c7ef-4017-ab91-336970924f0d", "type": "Role"}}}},
	})
	if r.status != 201 {
		t.Fatalf("create application: %d %s", r.status, r.body)
	}
	created := r.json(t)
	appID, objID := created["appId"].(string), created["id"].(string)
	if len(created["keyCredentials"].([]any)) != 1 {
		t.Fatalf("keyCredentials %v", created["keyCredentials"])
	}
	newApp := graphsim.App{ClientID: appID, Credentials: []*graphsim.AppCredential{cred}}
	if res := requestToken(t, s, s.Tenant().ID, appID, goodAssertion(s, newApp, "PS256").sign(t), nil); res.code() != 7000229 {
		t.Fatalf("token before service principal: %d %v", res.status, res.body)
	}

	r = org.postJSON("/servicePrincipals", map[string]any{"appId": appID})
	if r.status != 201 {
		t.Fatalf("create service principal: %d %s", r.status, r.body)
	}
	spID := r.json(t)["id"].(string)
	graphSP := org.mustGet("/servicePrincipals?$filter=" + url.QueryEscape("appId eq '00000003-0000-0000-c000-000000000000'"))["value"].([]any)[0].(map[string]any)
	var roleID string
	for _, role := range graphSP["appRoles"].([]any) {
		if role.(map[string]any)["value"] == "Sites.Read.All" {
			roleID = role.(map[string]any)["id"].(string)
		}
	}
	pool := newClient(t, s, newApp)
	site := "/sites/" + s.Tenant().Sites[0].ID
	if r := pool.get(site); r.status != 403 {
		t.Fatalf("unconsented app reading sites: %d", r.status)
	}
	r = org.postJSON("/servicePrincipals/"+spID+"/appRoleAssignments", map[string]any{
		"principalId": spID, "resourceId": graphSP["id"], "appRoleId": roleID})
	if r.status != 201 {
		t.Fatalf("appRoleAssignment: %d %s", r.status, r.body)
	}
	pool = newClient(t, s, newApp) // roles are fixed in a token when it is issued
	if r := pool.get(site); r.status != 200 {
		t.Fatalf("consented app reading sites: %d %s", r.status, r.body)
	}

	// Rotation: replace the certificate; the old one stops working.
	rotated, err := s.AddAppCertificate(backup.ClientID, t0.Add(-time.Hour), t0.Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{"keyCredentials": []map[string]any{{"type": "AsymmetricX509Cert", "usage": "Verify", "key": certKey(rotated)}}})
	if r := org.do(http.MethodPatch, "/applications/"+objID, strings.NewReader(string(patch)), nil); r.status != 204 {
		t.Fatalf("PATCH keyCredentials: %d %s", r.status, r.body)
	}
	if res := requestToken(t, s, s.Tenant().ID, appID, goodAssertion(s, newApp, "PS256").sign(t), nil); res.code() != 700027 {
		t.Fatalf("old certificate after rotation: %v", res.body)
	}
	newApp.Credentials = []*graphsim.AppCredential{rotated}
	token(t, s, newApp)

	if r := org.do(http.MethodDelete, "/applications/"+objID, nil, nil); r.status != 204 {
		t.Fatalf("DELETE application: %d", r.status)
	}
	if res := requestToken(t, s, s.Tenant().ID, appID, goodAssertion(s, newApp, "PS256").sign(t), nil); res.code() != 700016 {
		t.Fatalf("deleted app token: %v", res.body)
	}
}

func TestControlEndpoints(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	c := newClient(t, s, appByOrg(s, false))
	c.get("/sites/" + s.Tenant().Sites[0].ID)
	anon := &client{t: t, s: s, http: c.http}

	stats := anon.get(s.URL() + "/_sim/stats")
	var shape map[string]any
	if err := json.Unmarshal(stats.body, &shape); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		sort.Strings(k)
		return k
	}
	if got := keys(shape); !reflect.DeepEqual(got, []string{"apps", "tenant"}) {
		t.Fatalf("stats keys %v", got)
	}
	appKeys := []string{"bytes", "client_id", "requests", "retry_after_violations", "ru", "throttled_429", "throttled_503"}
	apps := shape["apps"].([]any)
	if len(apps) != 2 {
		t.Fatalf("%d apps in stats", len(apps))
	}
	for _, a := range apps {
		if got := keys(a.(map[string]any)); !reflect.DeepEqual(got, appKeys) {
			t.Fatalf("app stats keys %v", got)
		}
	}
	tenantKeys := []string{"bytes", "production_throttled", "requests", "retry_after_violations", "ru", "throttled_429", "throttled_503"}
	if got := keys(shape["tenant"].(map[string]any)); !reflect.DeepEqual(got, tenantKeys) {
		t.Fatalf("tenant stats keys %v", got)
	}
	if shape["tenant"].(map[string]any)["requests"].(float64) != 1 {
		t.Fatalf("tenant requests %v", shape["tenant"])
	}
	if r := anon.do("POST", s.URL()+"/_sim/stats/reset", nil, nil); r.status != 200 || s.Stats().Tenant.Requests != 0 {
		t.Fatalf("reset: %d %+v", r.status, s.Stats().Tenant)
	}

	r := anon.do("POST", s.URL()+"/_sim/mutate?create=2&modify=1&rename=1&delete=1", nil, nil)
	var res graphsim.MutationResult
	if err := json.Unmarshal(r.body, &res); err != nil || r.status != 200 || len(res.Changes) != 5 {
		t.Fatalf("mutate: %d %s", r.status, r.body)
	}
	if r := anon.do("POST", s.URL()+"/_sim/mutate?create=x", nil, nil); r.status != 400 {
		t.Fatalf("bad mutate: %d", r.status)
	}
}

func TestWriteState(t *testing.T) {
	s := start(t, small(graphsim.NewManualClock(t0)))
	dir := t.TempDir()
	if err := s.WriteState(dir); err != nil {
		t.Fatal(err)
	}
	checkStateDir(t, dir, s.URL(), 2)
}
