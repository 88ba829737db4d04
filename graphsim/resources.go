package graphsim

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// JSON shapes of Graph resources, as Microsoft serialises them.

type identity struct {
	DisplayName string `json:"displayName,omitempty"`
	ID          string `json:"id,omitempty"`
	Email       string `json:"email,omitempty"`
}

type identitySet struct {
	User        *identity `json:"user,omitempty"`
	Application *identity `json:"application,omitempty"`
}

type itemReference struct {
	DriveType string `json:"driveType,omitempty"`
	DriveID   string `json:"driveId,omitempty"`
	ID        string `json:"id,omitempty"`
	Name      string `json:"name,omitempty"`
	Path      string `json:"path,omitempty"`
	SiteID    string `json:"siteId,omitempty"`
}

type hashesJSON struct {
	QuickXorHash string `json:"quickXorHash,omitempty"`
}

type fileFacet struct {
	MimeType string      `json:"mimeType,omitempty"`
	Hashes   *hashesJSON `json:"hashes,omitempty"`
}

type folderFacet struct {
	ChildCount int `json:"childCount"`
}

type stateFacet struct {
	State string `json:"state"`
}

type malwareFacet struct {
	Description string `json:"description"`
}

type fileSystemInfo struct {
	CreatedDateTime      string `json:"createdDateTime"`
	LastModifiedDateTime string `json:"lastModifiedDateTime"`
}

type driveItemJSON struct {
	ODataContext         string          `json:"@odata.context,omitempty"`
	ODataType            string          `json:"@odata.type,omitempty"`
	DownloadURL          string          `json:"@microsoft.graph.downloadUrl,omitempty"`
	CreatedDateTime      string          `json:"createdDateTime,omitempty"`
	ETag                 string          `json:"eTag,omitempty"`
	ID                   string          `json:"id"`
	LastModifiedDateTime string          `json:"lastModifiedDateTime,omitempty"`
	Name                 string          `json:"name,omitempty"`
	WebURL               string          `json:"webUrl,omitempty"`
	CTag                 string          `json:"cTag,omitempty"`
	Size                 *int64          `json:"size,omitempty"`
	CreatedBy            *identitySet    `json:"createdBy,omitempty"`
	LastModifiedBy       *identitySet    `json:"lastModifiedBy,omitempty"`
	ParentReference      *itemReference  `json:"parentReference,omitempty"`
	File                 *fileFacet      `json:"file,omitempty"`
	Folder               *folderFacet    `json:"folder,omitempty"`
	Root                 *struct{}       `json:"root,omitempty"`
	Deleted              *stateFacet     `json:"deleted,omitempty"`
	Malware              *malwareFacet   `json:"malware,omitempty"`
	FileSystemInfo       *fileSystemInfo `json:"fileSystemInfo,omitempty"`
}

type quotaJSON struct {
	Deleted   int64  `json:"deleted"`
	Remaining int64  `json:"remaining"`
	State     string `json:"state"`
	Total     int64  `json:"total"`
	Used      int64  `json:"used"`
}

type driveJSON struct {
	ODataContext         string       `json:"@odata.context,omitempty"`
	CreatedDateTime      string       `json:"createdDateTime"`
	Description          string       `json:"description"`
	ID                   string       `json:"id"`
	LastModifiedDateTime string       `json:"lastModifiedDateTime"`
	Name                 string       `json:"name"`
	WebURL               string       `json:"webUrl"`
	DriveType            string       `json:"driveType"`
	CreatedBy            *identitySet `json:"createdBy,omitempty"`
	LastModifiedBy       *identitySet `json:"lastModifiedBy,omitempty"`
	Owner                *identitySet `json:"owner,omitempty"`
	Quota                *quotaJSON   `json:"quota,omitempty"`
}

type siteCollectionJSON struct {
	Hostname string `json:"hostname"`
}

type siteJSON struct {
	ODataContext         string              `json:"@odata.context,omitempty"`
	CreatedDateTime      string              `json:"createdDateTime"`
	Description          string              `json:"description"`
	ID                   string              `json:"id"`
	LastModifiedDateTime string              `json:"lastModifiedDateTime"`
	Name                 string              `json:"name"`
	WebURL               string              `json:"webUrl"`
	DisplayName          string              `json:"displayName"`
	Root                 *struct{}           `json:"root,omitempty"`
	SiteCollection       *siteCollectionJSON `json:"siteCollection,omitempty"`
}

type listInfoJSON struct {
	ContentTypesEnabled bool   `json:"contentTypesEnabled"`
	Hidden              bool   `json:"hidden"`
	Template            string `json:"template"`
}

type listJSON struct {
	ODataContext         string         `json:"@odata.context,omitempty"`
	ODataETag            string         `json:"@odata.etag"`
	CreatedDateTime      string         `json:"createdDateTime"`
	Description          string         `json:"description"`
	ETag                 string         `json:"eTag"`
	ID                   string         `json:"id"`
	LastModifiedDateTime string         `json:"lastModifiedDateTime"`
	Name                 string         `json:"name"`
	WebURL               string         `json:"webUrl"`
	DisplayName          string         `json:"displayName"`
	CreatedBy            *identitySet   `json:"createdBy,omitempty"`
	ParentReference      *itemReference `json:"parentReference,omitempty"`
	List                 listInfoJSON   `json:"list"`
}

type contentTypeJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type listItemJSON struct {
	ODataETag            string           `json:"@odata.etag"`
	CreatedDateTime      string           `json:"createdDateTime"`
	ETag                 string           `json:"eTag"`
	ID                   string           `json:"id"`
	LastModifiedDateTime string           `json:"lastModifiedDateTime"`
	WebURL               string           `json:"webUrl"`
	CreatedBy            *identitySet     `json:"createdBy,omitempty"`
	LastModifiedBy       *identitySet     `json:"lastModifiedBy,omitempty"`
	ParentReference      *itemReference   `json:"parentReference,omitempty"`
	ContentType          *contentTypeJSON `json:"contentType,omitempty"`
	FieldsContext        string           `json:"fields@odata.context,omitempty"`
	Fields               map[string]any   `json:"fields,omitempty"`
}

type userJSON struct {
	ODataContext      string   `json:"@odata.context,omitempty"`
	BusinessPhones    []string `json:"businessPhones"`
	DisplayName       string   `json:"displayName"`
	GivenName         string   `json:"givenName"`
	JobTitle          string   `json:"jobTitle"`
	Mail              string   `json:"mail"`
	MobilePhone       *string  `json:"mobilePhone"`
	OfficeLocation    string   `json:"officeLocation"`
	PreferredLanguage string   `json:"preferredLanguage"`
	Surname           string   `json:"surname"`
	UserPrincipalName string   `json:"userPrincipalName"`
	ID                string   `json:"id"`
}

type collection[T any] struct {
	ODataContext  string `json:"@odata.context"`
	ODataNextLink string `json:"@odata.nextLink,omitempty"`
	Value         []T    `json:"value"`
}

func ts(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func userIdentity(u *user) *identitySet {
	if u == nil {
		return &identitySet{User: &identity{DisplayName: "System Account"}}
	}
	return &identitySet{User: &identity{DisplayName: u.displayName, ID: u.id, Email: u.mail}}
}

func renderUser(u *user) userJSON {
	return userJSON{BusinessPhones: []string{}, DisplayName: u.displayName, GivenName: u.givenName,
		JobTitle: u.jobTitle, Mail: u.mail, OfficeLocation: u.office, PreferredLanguage: "en-US",
		Surname: u.surname, UserPrincipalName: u.upn, ID: u.id}
}

func (s *Server) rootSite() *site {
	t := s.tenant
	return &site{id: t.spHost + "," + guidFromSeed(t.seed, 1) + "," + guidFromSeed(t.seed, 2),
		name: "", displayName: "Communication site", webURL: "https://" + t.spHost,
		description: "", created: contentEpoch.Add(-5 * 365 * 24 * time.Hour)}
}

func guidFromSeed(seed uint64, n uint64) string {
	a, b := mix3(seed, n, 0x726f6f74), mix3(seed, n, 0x73697465)
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", uint32(a), uint16(a>>32), uint16(a>>48)&0xfff,
		uint16(b)&0x3fff|0x8000, (b>>16)&0xffffffffffff)
}

func (s *Server) renderSite(st *site, withContext bool) siteJSON {
	j := siteJSON{CreatedDateTime: ts(st.created), Description: st.description, ID: st.id,
		LastModifiedDateTime: ts(contentEpoch), Name: st.name, WebURL: st.webURL, DisplayName: st.displayName,
		SiteCollection: &siteCollectionJSON{Hostname: s.tenant.spHost}}
	if st.webURL == "https://"+s.tenant.spHost {
		j.Root = &struct{}{}
	}
	if withContext {
		j.ODataContext = s.metadata("sites/$entity")
	}
	return j
}

// renderDrive needs t.mu held (reads the root size).
func (s *Server) renderDrive(d *drive) driveJSON {
	j := driveJSON{CreatedDateTime: ts(d.created), Description: d.description, ID: d.id,
		LastModifiedDateTime: ts(d.items[d.rootID].modified), Name: d.name, WebURL: d.webURL, DriveType: d.driveType,
		CreatedBy: userIdentity(nil)}
	used := d.items[d.rootID].size
	j.Quota = &quotaJSON{Remaining: d.quotaTotal - used, State: "normal", Total: d.quotaTotal, Used: used}
	if d.owner != nil {
		j.Owner = userIdentity(d.owner)
	} else {
		j.Owner = &identitySet{User: &identity{DisplayName: "System Account"}}
	}
	return j
}

// itemView is what rendering an item needs, captured under t.mu.
type itemView struct {
	d          *drive
	it         *item
	parentName string
	path       string // path of the item below the root, "" for root
}

func (s *Server) viewOf(d *drive, it *item) itemView {
	v := itemView{d: d, it: it}
	if !it.root {
		if p := d.items[it.parentID]; p != nil {
			v.parentName = p.name
		}
		v.path = d.path(it.id)
	}
	return v
}

type renderMode int

const (
	renderItem  renderMode = iota // GET item: parentReference with path
	renderDelta                   // delta: no path, deleted items stripped
)

// render builds the driveItem JSON. It may compute the quickXorHash, so it
// runs without t.mu held.
func (s *Server) render(v itemView, mode renderMode, clientID string) driveItemJSON {
	it, d := v.it, v.d
	ref := &itemReference{DriveType: d.driveType, DriveID: d.id, SiteID: d.siteID}
	if !it.root {
		ref.ID = it.parentID
	}
	if it.deleted {
		// OneDrive for Business: deleted items carry no name and no cTag.
		return driveItemJSON{ODataType: "#microsoft.graph.driveItem", ID: it.id, ParentReference: ref,
			Deleted: &stateFacet{State: "deleted"}, LastModifiedDateTime: ts(it.modified)}
	}
	size := it.size
	j := driveItemJSON{
		CreatedDateTime: ts(it.created), ETag: fmt.Sprintf(`"{%s},%d"`, strings.ToUpper(it.uniqueID), it.eVersion),
		ID: it.id, LastModifiedDateTime: ts(it.modified), Name: it.name,
		CTag: fmt.Sprintf(`"c:{%s},%d"`, strings.ToUpper(it.uniqueID), it.cVersion), Size: &size,
		CreatedBy: userIdentity(it.createdBy), LastModifiedBy: userIdentity(it.modifiedBy), ParentReference: ref,
		FileSystemInfo: &fileSystemInfo{CreatedDateTime: ts(it.created), LastModifiedDateTime: ts(it.modified)},
	}
	if mode == renderDelta {
		j.ODataType = "#microsoft.graph.driveItem"
	}
	if it.root {
		j.Root = &struct{}{}
		j.WebURL = d.webURL
	} else {
		j.WebURL = d.webURL + "/" + escapePath(v.path)
		if mode == renderItem {
			ref.Name = v.parentName
			parentPath := v.path[:max(strings.LastIndex(v.path, "/"), 0)]
			ref.Path = "/drives/" + d.id + "/root:"
			if parentPath != "" {
				ref.Path += "/" + parentPath
			}
		}
	}
	if it.folder {
		j.Folder = &folderFacet{ChildCount: it.childCount}
		return j
	}
	j.File = &fileFacet{MimeType: it.mime, Hashes: &hashesJSON{QuickXorHash: it.hash.get(it.content())}}
	if it.malware {
		j.Malware = &malwareFacet{Description: "Trojan:Win32/Simulated!graphsim"}
	} else {
		j.DownloadURL = s.downloadURL(d, it, clientID)
	}
	return j
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, x := range parts {
		parts[i] = url.PathEscape(x)
	}
	return strings.Join(parts, "/")
}

// ---- sites ----

func (s *Server) routeSites(c *call, segs []string) route {
	if len(segs) == 0 || len(segs) == 1 && (segs[0] == "getAllSites" || segs[0] == "getAllSites()") {
		if c.r.Method != http.MethodGet {
			return methodNotAllowed(2)
		}
		all := len(segs) == 1
		return route{cost: 2, roles: readSites, run: func(c *call) { s.listSites(c, all) }}
	}
	st, rest := s.lookupSite(segs)
	if st == nil {
		return notFound(1, readSites, "itemNotFound", "Requested site could not be found")
	}
	if c.r.Method != http.MethodGet {
		return methodNotAllowed(2)
	}
	switch {
	case len(rest) == 0:
		return route{cost: 1, roles: readSites, run: func(c *call) { c.ok(200, s.renderSite(st, true)) }}
	case rest[0] == "drives" && len(rest) == 1:
		return route{cost: 2, roles: readSites, run: func(c *call) {
			s.tenant.mu.RLock()
			out := collection[driveJSON]{ODataContext: s.metadata("drives"), Value: []driveJSON{}}
			for _, d := range st.libraries {
				out.Value = append(out.Value, s.renderDrive(d))
			}
			s.tenant.mu.RUnlock()
			c.ok(200, out)
		}}
	case rest[0] == "drives":
		for _, d := range st.libraries {
			if d.id == rest[1] {
				return s.routeDrive(c, d, rest[2:])
			}
		}
		return notFound(1, readSites, "itemNotFound", "The resource could not be found.")
	case rest[0] == "drive":
		if len(st.libraries) == 0 {
			return notFound(1, readSites, "itemNotFound", "The resource could not be found.")
		}
		return s.routeDrive(c, st.libraries[0], rest[1:])
	case rest[0] == "lists":
		return s.routeLists(c, st, rest[1:])
	}
	return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", rest[0]))
}

// lookupSite resolves the site addressed by segs (id, "root", or
// "{hostname}:/server/relative/path:") and returns the remaining segments.
func (s *Server) lookupSite(segs []string) (*site, []string) {
	t := s.tenant
	first := segs[0]
	if first == "root" {
		return s.rootSite(), segs[1:]
	}
	if host, ok := strings.CutSuffix(first, ":"); ok {
		// Path addressing: the path runs until a segment ending in ':'.
		var parts []string
		rest := segs[1:]
		for len(rest) > 0 {
			seg := rest[0]
			rest = rest[1:]
			if p, done := strings.CutSuffix(seg, ":"); done {
				if p != "" {
					parts = append(parts, p)
				}
				break
			}
			parts = append(parts, seg)
		}
		if !strings.EqualFold(host, t.spHost) {
			return nil, nil
		}
		if len(parts) == 0 {
			return s.rootSite(), rest
		}
		return t.sitesByURL[strings.ToLower(host+"/"+strings.Join(parts, "/"))], rest
	}
	key := strings.ToLower(first)
	if st := t.sitesByID[key]; st != nil {
		return st, segs[1:]
	}
	if key == strings.ToLower(t.spHost) || strings.HasPrefix(key, strings.ToLower(s.rootSite().id)) {
		return s.rootSite(), segs[1:]
	}
	// "{hostname},{collection}" without the web id.
	if parts := strings.Split(key, ","); len(parts) == 2 {
		if st := t.sitesByID[parts[1]]; st != nil && strings.EqualFold(parts[0], t.spHost) {
			return st, segs[1:]
		}
	}
	return nil, nil
}

func (s *Server) listSites(c *call, all bool) {
	search := strings.ToLower(strings.Trim(c.q.Get("search"), `"`))
	var match []*site
	for _, st := range s.tenant.sites {
		if all || search == "" || search == "*" ||
			strings.Contains(strings.ToLower(st.displayName), search) ||
			strings.Contains(strings.ToLower(st.name), search) ||
			strings.Contains(strings.ToLower(st.description), search) {
			match = append(match, st)
		}
	}
	from, to, next := s.page(c, len(match), 200, 1000)
	out := collection[siteJSON]{ODataContext: s.metadata("sites"), ODataNextLink: next, Value: []siteJSON{}}
	for _, st := range match[from:to] {
		out.Value = append(out.Value, s.renderSite(st, false))
	}
	c.ok(200, out)
}

// ---- lists ----

func (s *Server) routeLists(c *call, st *site, rest []string) route {
	if len(rest) == 0 {
		return route{cost: 2, roles: readSites, run: func(c *call) {
			out := collection[listJSON]{ODataContext: s.metadata("sites('" + st.id + "')/lists"), Value: []listJSON{}}
			for _, l := range st.lists {
				out.Value = append(out.Value, s.renderList(l, ""))
			}
			c.ok(200, out)
		}}
	}
	var l *list
	for _, x := range st.lists {
		if strings.EqualFold(x.id, rest[0]) || strings.EqualFold(x.displayName, rest[0]) || strings.EqualFold(x.name, rest[0]) {
			l = x
		}
	}
	if l == nil {
		return notFound(1, readSites, "itemNotFound", "The specified list was not found")
	}
	switch {
	case len(rest) == 1:
		return route{cost: 1, roles: readSites, run: func(c *call) {
			c.ok(200, s.renderList(l, s.metadata("sites('"+st.id+"')/lists/$entity")))
		}}
	case rest[1] == "items" && len(rest) == 2:
		return route{cost: 2, roles: readSites, run: func(c *call) { s.listItems(c, st, l, "") }}
	case rest[1] == "items" && len(rest) == 3:
		return route{cost: 1, roles: readSites, run: func(c *call) { s.listItems(c, st, l, rest[2]) }}
	}
	return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", rest[1]))
}

func (s *Server) renderList(l *list, ctx string) listJSON {
	etag := fmt.Sprintf(`"%s,1"`, l.id)
	return listJSON{ODataContext: ctx, ODataETag: etag, CreatedDateTime: ts(l.created), ETag: etag, ID: l.id,
		LastModifiedDateTime: ts(contentEpoch), Name: l.name, WebURL: l.webURL, DisplayName: l.displayName,
		CreatedBy: userIdentity(nil), ParentReference: &itemReference{SiteID: l.site.id},
		List: listInfoJSON{Template: l.template}}
}

// listItems serves the items of a list (one item if id is set). Document
// library items mirror the drive's files and folders.
func (s *Server) listItems(c *call, st *site, l *list, id string) {
	expand := strings.Contains(c.q.Get("expand")+c.q.Get("$expand"), "fields")
	var all []listItemJSON
	ref := &itemReference{ID: l.id, SiteID: st.id}
	if l.drive != nil {
		d := l.drive
		s.tenant.mu.RLock()
		for _, it := range d.liveItems() {
			if it.root {
				continue
			}
			if id != "" && strconv.Itoa(it.listItemID) != id {
				continue
			}
			etag := fmt.Sprintf(`"%s,%d"`, it.uniqueID, it.eVersion)
			li := listItemJSON{ODataETag: etag, CreatedDateTime: ts(it.created), ETag: etag,
				ID: strconv.Itoa(it.listItemID), LastModifiedDateTime: ts(it.modified),
				WebURL: d.webURL + "/" + escapePath(d.path(it.id)), CreatedBy: userIdentity(it.createdBy),
				LastModifiedBy: userIdentity(it.modifiedBy), ParentReference: ref,
				ContentType: &contentTypeJSON{ID: "0x0101", Name: "Document"}}
			if it.folder {
				li.ContentType = &contentTypeJSON{ID: "0x0120", Name: "Folder"}
			}
			if expand {
				li.Fields = map[string]any{"@odata.etag": etag, "FileLeafRef": it.name, "id": li.ID,
					"ContentType": li.ContentType.Name, "Created": ts(it.created), "Modified": ts(it.modified),
					"FileSizeDisplay": strconv.FormatInt(it.size, 10), "_UIVersionString": fmt.Sprintf("%d.0", it.cVersion)}
			}
			all = append(all, li)
		}
		s.tenant.mu.RUnlock()
	} else {
		for _, gi := range l.items {
			if id != "" && strconv.Itoa(gi.id) != id {
				continue
			}
			etag := fmt.Sprintf(`"%s,%d"`, l.id, gi.id)
			li := listItemJSON{ODataETag: etag, CreatedDateTime: ts(gi.created), ETag: etag, ID: strconv.Itoa(gi.id),
				LastModifiedDateTime: ts(gi.modified), WebURL: fmt.Sprintf("%s/DispForm.aspx?ID=%d", l.webURL, gi.id),
				CreatedBy: userIdentity(gi.author), LastModifiedBy: userIdentity(gi.author), ParentReference: ref,
				ContentType: &contentTypeJSON{ID: "0x0100", Name: "Item"}}
			if expand {
				li.Fields = map[string]any{"@odata.etag": etag, "Title": gi.title, "Status": gi.status,
					"Priority": gi.priority, "id": li.ID, "ContentType": "Item", "Created": ts(gi.created), "Modified": ts(gi.modified)}
			}
			all = append(all, li)
		}
	}
	if id != "" {
		if len(all) == 0 {
			c.fail(404, "itemNotFound", "The specified list item was not found")
			return
		}
		c.ok(200, all[0])
		return
	}
	from, to, next := s.page(c, len(all), 200, 5000)
	out := collection[listItemJSON]{ODataContext: s.metadata("sites('" + st.id + "')/lists('" + l.id + "')/items"),
		ODataNextLink: next, Value: append([]listItemJSON{}, all[from:to]...)}
	c.ok(200, out)
}

// ---- users ----

func (s *Server) routeUsers(c *call, segs []string) route {
	if c.r.Method != http.MethodGet {
		return methodNotAllowed(0)
	}
	if len(segs) == 0 {
		return route{cost: 0, roles: readUsers, run: func(c *call) {
			users := s.tenant.users
			from, to, next := s.page(c, len(users), 100, 999)
			out := collection[userJSON]{ODataContext: s.metadata("users"), ODataNextLink: next, Value: []userJSON{}}
			for _, u := range users[from:to] {
				out.Value = append(out.Value, renderUser(u))
			}
			c.ok(200, out)
		}}
	}
	u := s.tenant.lookupUser(segs[0])
	missing := fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", segs[0])
	rest := segs[1:]
	if len(rest) == 0 {
		if u == nil {
			return notFound(0, readUsers, "Request_ResourceNotFound", missing)
		}
		return route{cost: 0, roles: readUsers, run: func(c *call) {
			j := renderUser(u)
			j.ODataContext = s.metadata("users/$entity")
			c.ok(200, j)
		}}
	}
	switch rest[0] {
	case "drive":
		if u == nil {
			return notFound(1, readSites, "Request_ResourceNotFound", missing)
		}
		if u.drive == nil {
			return notFound(1, readSites, "ResourceNotFound", "User's mysite not found.")
		}
		return s.routeDrive(c, u.drive, rest[1:])
	case "drives":
		if u == nil {
			return notFound(2, readSites, "Request_ResourceNotFound", missing)
		}
		return route{cost: 2, roles: readSites, run: func(c *call) {
			out := collection[driveJSON]{ODataContext: s.metadata("drives"), Value: []driveJSON{}}
			if u.drive != nil {
				s.tenant.mu.RLock()
				out.Value = append(out.Value, s.renderDrive(u.drive))
				s.tenant.mu.RUnlock()
			}
			c.ok(200, out)
		}}
	}
	return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", rest[0]))
}

// ---- drives and items ----

func (s *Server) routeDrives(c *call, segs []string) route {
	if len(segs) == 0 {
		return s.badRequest("Listing all drives is not supported with application permissions; use /sites/{id}/drives.")
	}
	d := s.tenant.drivesByID[segs[0]]
	if d == nil {
		return notFound(1, readSites, "itemNotFound", "The resource could not be found.")
	}
	return s.routeDrive(c, d, segs[1:])
}

// routeDrive serves the paths below a drive.
func (s *Server) routeDrive(c *call, d *drive, rest []string) route {
	if c.r.Method != http.MethodGet {
		return methodNotAllowed(2)
	}
	if len(rest) == 0 {
		return route{cost: 1, roles: readSites, run: func(c *call) {
			s.tenant.mu.RLock()
			j := s.renderDrive(d)
			s.tenant.mu.RUnlock()
			j.ODataContext = s.metadata("drives/$entity")
			c.ok(200, j)
		}}
	}
	// Item address: root, items/{id}, or root:/path:.
	var ref itemRef
	var action []string
	switch {
	case rest[0] == "root":
		ref, action = itemRef{root: true}, rest[1:]
	case rest[0] == "items" && len(rest) >= 2:
		ref, action = itemRef{id: rest[1], root: rest[1] == "root"}, rest[2:]
	case strings.HasPrefix(rest[0], "root:"):
		var parts []string
		if p := strings.Trim(strings.TrimPrefix(rest[0], "root:"), ":"); p != "" {
			parts = append(parts, p)
		}
		i := 1
		if !strings.HasSuffix(rest[0], ":") || rest[0] == "root:" {
			for ; i < len(rest); i++ {
				p, done := strings.CutSuffix(rest[i], ":")
				if p != "" {
					parts = append(parts, p)
				}
				if done {
					i++
					break
				}
			}
		}
		ref, action = itemRef{path: parts}, rest[i:]
	default:
		return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", rest[0]))
	}
	if len(action) == 0 {
		return route{cost: 1, roles: readSites, run: func(c *call) { s.getItem(c, d, ref) }}
	}
	switch a := action[0]; {
	case a == "children" && len(action) == 1:
		return route{cost: 2, roles: readSites, run: func(c *call) { s.listChildren(c, d, ref) }}
	case a == "content" && len(action) == 1:
		return route{cost: 1, roles: readSites, run: func(c *call) { s.redirectContent(c, d, ref) }}
	case a == "permissions" && len(action) == 1:
		return route{cost: 5, roles: readPerms, run: func(c *call) { s.listPermissions(c, d, ref) }}
	case strings.HasPrefix(a, "delta") && len(action) == 1:
		token := c.q.Get("token")
		if inner, ok := strings.CutPrefix(a, "delta("); ok {
			inner = strings.TrimSuffix(inner, ")")
			if v, ok := strings.CutPrefix(inner, "token="); ok {
				token = strings.Trim(v, "'")
			}
		} else if a != "delta" {
			break
		}
		cost := 2
		if token != "" {
			cost = 1
		}
		return route{cost: cost, roles: readSites, run: func(c *call) { s.serveDelta(c, d, ref, token) }}
	}
	return s.badRequest(fmt.Sprintf("Resource not found for the segment '%s'.", action[0]))
}

type itemRef struct {
	root bool
	id   string
	path []string
}

// find resolves an item reference. Callers hold t.mu.
func (d *drive) find(ref itemRef) *item {
	switch {
	case ref.root:
		return d.items[d.rootID]
	case ref.id != "":
		it := d.items[ref.id]
		if it == nil || it.deleted {
			return nil
		}
		return it
	}
	cur := d.items[d.rootID]
	for _, name := range ref.path {
		var next *item
		for _, id := range d.children[cur.id] {
			if ch := d.items[id]; strings.EqualFold(ch.name, name) {
				next = ch
				break
			}
		}
		if next == nil {
			return nil
		}
		cur = next
	}
	return cur
}

func (s *Server) getItem(c *call, d *drive, ref itemRef) {
	s.tenant.mu.RLock()
	it := d.find(ref)
	var v itemView
	if it != nil {
		v = s.viewOf(d, it)
	}
	s.tenant.mu.RUnlock()
	if it == nil {
		c.fail(404, "itemNotFound", "The resource could not be found.")
		return
	}
	j := s.render(v, renderItem, c.tok.clientID)
	j.ODataContext = s.metadata("drives('" + d.id + "')/items/$entity")
	c.ok(200, j)
}

func (s *Server) listChildren(c *call, d *drive, ref itemRef) {
	s.tenant.mu.RLock()
	parent := d.find(ref)
	var views []itemView
	if parent != nil {
		for _, id := range d.children[parent.id] {
			views = append(views, s.viewOf(d, d.items[id]))
		}
	}
	s.tenant.mu.RUnlock()
	if parent == nil {
		c.fail(404, "itemNotFound", "The resource could not be found.")
		return
	}
	from, to, next := s.page(c, len(views), 200, 1000)
	out := collection[driveItemJSON]{ODataContext: s.metadata("drives('" + d.id + "')/items('" + parent.id + "')/children"),
		ODataNextLink: next, Value: []driveItemJSON{}}
	for _, v := range views[from:to] {
		out.Value = append(out.Value, s.render(v, renderItem, c.tok.clientID))
	}
	c.ok(200, out)
}

func (s *Server) listPermissions(c *call, d *drive, ref itemRef) {
	s.tenant.mu.RLock()
	it := d.find(ref)
	s.tenant.mu.RUnlock()
	if it == nil {
		c.fail(404, "itemNotFound", "The resource could not be found.")
		return
	}
	owner := "Owners"
	if d.owner != nil {
		owner = d.owner.displayName
	}
	c.ok(200, map[string]any{
		"@odata.context": s.metadata("drives('" + d.id + "')/items('" + it.id + "')/permissions"),
		"value": []map[string]any{{
			"id": "aTowIy5mfG1lbWJlcnNoaXB8" + it.uniqueID[:8], "roles": []string{"owner"},
			"grantedToV2":   map[string]any{"siteGroup": map[string]any{"displayName": owner, "id": "3"}},
			"grantedTo":     map[string]any{"user": map[string]any{"displayName": owner}},
			"inheritedFrom": map[string]any{},
		}},
	})
}

func (s *Server) redirectContent(c *call, d *drive, ref itemRef) {
	s.tenant.mu.RLock()
	it := d.find(ref)
	s.tenant.mu.RUnlock()
	switch {
	case it == nil:
		c.fail(404, "itemNotFound", "The resource could not be found.")
	case it.folder:
		c.fail(400, "invalidRequest", "Cannot download a folder.")
	case it.malware:
		c.fail(403, "malwareDetected", "The file is infected with a virus and cannot be downloaded.")
	default:
		c.w.Header().Set("Location", s.downloadURL(d, it, c.tok.clientID))
		c.w.Header().Set("Content-Length", "0")
		c.w.WriteHeader(http.StatusFound)
	}
}
