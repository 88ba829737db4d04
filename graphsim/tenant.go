package graphsim

import (
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// contentEpoch anchors generated timestamps, so a seed always yields the
// same tenant whatever the clock says.
var contentEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// tenant is the generated directory and SharePoint content. Users, sites and
// drives are fixed after generation; drive items change under mu.
type tenant struct {
	id, name, domain   string
	spHost, mySiteHost string
	seed               uint64

	users      []*user
	usersByKey map[string]*user // lower-case id and UPN
	sites      []*site
	sitesByID  map[string]*site // lower-case full id, collection id
	sitesByURL map[string]*site // lower-case "host/path"
	drives     []*drive
	drivesByID map[string]*drive

	mu          sync.RWMutex // guards every drive's mutable state
	mutations   uint64       // number of Mutate calls, seeds their choices
	deltaEpoch  uint64       // bumped to kill every outstanding delta token
	fileOptions fileGen
}

type user struct {
	id, displayName, givenName, surname string
	upn, mail, jobTitle, office         string
	drive                               *drive // nil: OneDrive not provisioned
}

type site struct {
	id, collectionID, webID string
	name, displayName       string
	webURL, description     string
	created                 time.Time
	libraries               []*drive
	lists                   []*list
}

type list struct {
	id, name, displayName, template, webURL string
	created                                 time.Time
	site                                    *site
	drive                                   *drive // document libraries only
	items                                   []genericListItem
}

type genericListItem struct {
	id                int
	title, status     string
	priority          string
	created, modified time.Time
	author            *user
}

// drive is a document library or a OneDrive.
type drive struct {
	index                 int
	id, name, description string
	driveType             string // documentLibrary | business
	webURL                string
	siteID                string
	site                  *site // nil for OneDrives
	owner                 *user // OneDrive owner
	list                  *list
	created               time.Time
	quotaTotal            int64

	// Mutable, guarded by tenant.mu.
	rootID      string
	items       map[string]*item    // current version of every item, tombstones included
	children    map[string][]string // folder id → live child ids, in creation order
	log         []logEntry          // change log ordered by seq
	seq         uint64              // last change sequence number
	itemCounter int                 // items created so far, seeds new ids
	files       idSet               // live files
	folders     idSet               // live non-root folders
}

type logEntry struct {
	seq uint64
	id  string
}

// item is one immutable version of a driveItem: a change replaces the map
// entry, so readers may keep and render a pointer after releasing the lock.
type item struct {
	id, uniqueID string
	name         string
	parentID     string
	folder, root bool
	deleted      bool
	size         int64
	childCount   int
	cVersion     int // content version (cTag, bytes)
	eVersion     int // any change (eTag)
	listItemID   int
	created      time.Time
	modified     time.Time
	createdBy    *user
	modifiedBy   *user
	seq          uint64
	mime         string
	text         bool
	malware      bool
	contentSeed  uint64
	hash         *hashCell
}

func (it *item) content() content {
	return content{seed: it.contentSeed, version: it.cVersion, size: it.size, text: it.text}
}

func (it *item) clone() *item { c := *it; return &c }

// idSet supports O(1) insert, delete and uniform random choice.
type idSet struct {
	ids []string
	pos map[string]int
}

func (s *idSet) add(id string) {
	if s.pos == nil {
		s.pos = map[string]int{}
	}
	s.pos[id] = len(s.ids)
	s.ids = append(s.ids, id)
}

func (s *idSet) remove(id string) {
	i, ok := s.pos[id]
	if !ok {
		return
	}
	last := s.ids[len(s.ids)-1]
	s.ids[i] = last
	s.pos[last] = i
	s.ids = s.ids[:len(s.ids)-1]
	delete(s.pos, id)
}

func (s *idSet) pick(r *rand.Rand) (string, bool) {
	if len(s.ids) == 0 {
		return "", false
	}
	return s.ids[r.IntN(len(s.ids))], true
}

type fileGen struct {
	sizeMix     []SizeClass
	maxSize     int64
	malwareRate float64
}

var (
	tenantNames = []string{"contoso", "fabrikam", "northwind", "tailspin", "adatum", "woodgrove", "litware", "proseware"}
	givenNames  = []string{"Adele", "Alex", "Allan", "Bianca", "Brian", "Carla", "Christie", "Debra", "Diego", "Emily",
		"Enrico", "Grady", "Henrietta", "Irvin", "Isaiah", "Johanna", "Joni", "Lee", "Lidia", "Lynne", "Megan",
		"Miriam", "Nestor", "Patti", "Pradeep", "Raul", "Sofia", "Tomas", "Ulrike", "Wei", "Yuki", "Zoe"}
	surnames = []string{"Vance", "Wilber", "Deyoung", "Pierce", "Johnson", "Nguyen", "Cline", "Berg", "Siciliani",
		"Braun", "Ortiz", "Archie", "Mitchell", "Sink", "Langer", "Lambert", "Sherman", "Holl", "Gonzalez", "Zrinyi",
		"Bowen", "Wilke", "Patel", "Kohler", "Tanaka", "Moreau", "Rossi", "Novak", "Schmidt", "Larsen"}
	jobTitles   = []string{"Marketing Assistant", "Developer", "Product Manager", "Accountant", "Paralegal", "Sales Rep", "Engineer", "Director"}
	offices     = []string{"12/1110", "18/2111", "20/1101", "131/1104", "Remote"}
	departments = []string{"Marketing", "Finance", "Human Resources", "Engineering", "Sales", "Legal", "Operations",
		"Support", "Research", "Projects", "Communications", "Procurement", "Facilities", "Design", "Compliance", "IT"}
	folderNames = []string{"Projects", "Archive", "Invoices", "Contracts", "Photos", "Reports", "Templates",
		"Meeting notes", "Drafts", "Customers", "Budgets", "Presentations", "2024", "2025", "Q1", "Q2", "Q3", "Q4", "Shared"}
	fileStems = []string{"Report", "Budget", "Proposal", "Invoice", "Contract", "Notes", "Plan", "Roadmap",
		"Summary", "Minutes", "Forecast", "Checklist", "Design", "Spec", "Overview", "Review", "Timesheet", "Inventory"}
)

type extInfo struct {
	ext, mime string
	text      bool
}

var (
	smallExts = []extInfo{{".docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", false},
		{".xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", false},
		{".txt", "text/plain", true}, {".csv", "text/csv", true}, {".md", "text/markdown", true},
		{".pdf", "application/pdf", false}, {".json", "application/json", true}}
	mediumExts = []extInfo{{".pdf", "application/pdf", false}, {".jpg", "image/jpeg", false}, {".png", "image/png", false},
		{".pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation", false},
		{".docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", false},
		{".log", "text/plain", true}, {".csv", "text/csv", true}}
	largeExts = []extInfo{{".mp4", "video/mp4", false}, {".zip", "application/x-zip-compressed", false},
		{".pst", "application/vnd.ms-outlook", false}, {".log", "text/plain", true}}
)

func newGUID(r *rand.Rand) string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], r.Uint64())
	binary.LittleEndian.PutUint64(b[8:], r.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func guidBytes(g string) []byte {
	var out []byte
	h := strings.ReplaceAll(g, "-", "")
	for i := 0; i+1 < len(h); i += 2 {
		var v byte
		_, _ = fmt.Sscanf(h[i:i+2], "%02x", &v)
		out = append(out, v)
	}
	return out
}

// itemID mimics SharePoint's 34-character driveItem ids ("01" + base32).
func itemID(seed uint64, driveIndex, n int) string {
	var b [20]byte
	binary.LittleEndian.PutUint64(b[0:], mix3(seed, uint64(driveIndex)+1, uint64(n)))
	binary.LittleEndian.PutUint64(b[8:], mix3(seed^0x5bd1e995, uint64(driveIndex)+1, uint64(n)))
	binary.LittleEndian.PutUint32(b[16:], uint32(mix3(seed, uint64(n), uint64(driveIndex)+7)))
	return "01" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}

func driveIDFor(collectionID, webID, listID string) string {
	var raw []byte
	raw = append(raw, guidBytes(collectionID)...)
	raw = append(raw, guidBytes(webID)...)
	raw = append(raw, guidBytes(listID)...)
	return "b!" + base64.RawURLEncoding.EncodeToString(raw)
}

func uniqueName(taken map[string]bool, name string) string {
	if !taken[strings.ToLower(name)] {
		taken[strings.ToLower(name)] = true
		return name
	}
	ext := path.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	for i := 2; ; i++ {
		n := fmt.Sprintf("%s (%d)%s", stem, i, ext)
		if !taken[strings.ToLower(n)] {
			taken[strings.ToLower(n)] = true
			return n
		}
	}
}

// generateTenant builds the whole tenant from the options' seed.
func generateTenant(o Options) *tenant {
	r := rand.New(rand.NewPCG(o.Seed, 0x6772617068736d)) // "graphsm"
	t := &tenant{
		seed:       o.Seed,
		usersByKey: map[string]*user{},
		sitesByID:  map[string]*site{},
		sitesByURL: map[string]*site{},
		drivesByID: map[string]*drive{},
		fileOptions: fileGen{
			sizeMix: o.SizeMix, maxSize: o.MaxFileSize, malwareRate: o.Faults.MalwareRate,
		},
	}
	t.id = newGUID(r)
	t.name = tenantNames[r.IntN(len(tenantNames))]
	t.domain = t.name + ".onmicrosoft.com"
	t.spHost = t.name + ".sharepoint.com"
	t.mySiteHost = t.name + "-my.sharepoint.com"

	takenUPN := map[string]bool{}
	for i := range o.Users {
		g, s := givenNames[r.IntN(len(givenNames))], surnames[r.IntN(len(surnames))]
		local := uniqueName(takenUPN, strings.ToLower(g+"."+s))
		u := &user{
			id: newGUID(r), givenName: g, surname: s, displayName: g + " " + s,
			upn: local + "@" + t.domain, mail: local + "@" + t.domain,
			jobTitle: jobTitles[r.IntN(len(jobTitles))], office: offices[r.IntN(len(offices))],
		}
		// The first user always has a OneDrive so small tenants have one.
		provisioned := i == 0 || r.Float64() >= o.Faults.UnprovisionedOneDrives
		t.users = append(t.users, u)
		t.usersByKey[u.id] = u
		t.usersByKey[strings.ToLower(u.upn)] = u
		if provisioned {
			d := t.newDrive(r, o, "OneDrive", "business", u, nil)
			personal := strings.NewReplacer(".", "_", "@", "_").Replace(u.upn)
			d.webURL = "https://" + t.mySiteHost + "/personal/" + personal + "/Documents"
			u.drive = d
		}
	}

	takenSite := map[string]bool{}
	for range o.Sites {
		dept := departments[r.IntN(len(departments))]
		display := uniqueName(takenSite, dept)
		slug := strings.ToLower(strings.NewReplacer(" ", "", "(", "", ")", "").Replace(display))
		s := &site{
			collectionID: newGUID(r), webID: newGUID(r),
			name: slug, displayName: display,
			webURL:      "https://" + t.spHost + "/sites/" + slug,
			description: "Team site of " + display,
			created:     contentEpoch.Add(-time.Duration(r.Int64N(int64(4 * 365 * 24 * time.Hour)))),
		}
		s.id = t.spHost + "," + s.collectionID + "," + s.webID
		t.sites = append(t.sites, s)
		t.sitesByID[strings.ToLower(s.id)] = s
		t.sitesByID[strings.ToLower(s.collectionID)] = s
		t.sitesByURL[strings.ToLower(t.spHost+"/sites/"+slug)] = s
		for l := range o.LibrariesPerSite {
			name, listName := "Documents", "Shared Documents"
			if l > 0 {
				name = fmt.Sprintf("Library %d", l+1)
				listName = name
			}
			d := t.newDrive(r, o, name, "documentLibrary", nil, s)
			d.webURL = s.webURL + "/" + url.PathEscape(listName)
			d.list = &list{id: d.list.id, name: listName, displayName: name, template: "documentLibrary",
				webURL: d.webURL, created: d.created, site: s, drive: d}
			s.libraries = append(s.libraries, d)
			s.lists = append(s.lists, d.list)
		}
		gl := &list{id: newGUID(r), name: "Tasks", displayName: "Tasks", template: "genericList",
			webURL: s.webURL + "/Lists/Tasks", created: s.created, site: s}
		for i := range o.ListItemsPerList {
			c := s.created.Add(time.Duration(r.Int64N(int64(contentEpoch.Sub(s.created)) + 1)))
			gl.items = append(gl.items, genericListItem{
				id: i + 1, title: fileStems[r.IntN(len(fileStems))] + fmt.Sprintf(" task %d", i+1),
				status:   []string{"Not Started", "In Progress", "Completed"}[r.IntN(3)],
				priority: []string{"(1) High", "(2) Normal", "(3) Low"}[r.IntN(3)],
				created:  c, modified: c, author: t.randomUser(r),
			})
		}
		s.lists = append(s.lists, gl)
	}
	for _, d := range t.drives {
		t.populateDrive(r, o, d)
	}
	return t
}

func (t *tenant) randomUser(r *rand.Rand) *user {
	if len(t.users) == 0 {
		return nil
	}
	return t.users[r.IntN(len(t.users))]
}

func (t *tenant) newDrive(r *rand.Rand, o Options, name, driveType string, owner *user, s *site) *drive {
	collection, web, listID := newGUID(r), newGUID(r), newGUID(r)
	d := &drive{
		index: len(t.drives), name: name, driveType: driveType, owner: owner, site: s,
		created:    contentEpoch.Add(-time.Duration(r.Int64N(int64(3 * 365 * 24 * time.Hour)))),
		quotaTotal: 1 << 40,
		items:      map[string]*item{},
		children:   map[string][]string{},
		list:       &list{id: listID},
	}
	if s != nil {
		collection, web = s.collectionID, s.webID
		d.siteID = s.id
	} else {
		d.siteID = t.mySiteHost + "," + collection + "," + web
	}
	d.id = driveIDFor(collection, web, listID)
	t.drives = append(t.drives, d)
	t.drivesByID[d.id] = d
	return d
}

// populateDrive creates the root, a folder tree and the files of a drive.
func (t *tenant) populateDrive(r *rand.Rand, o Options, d *drive) {
	root := &item{
		id: itemID(t.seed, d.index, 0), uniqueID: newGUID(r), name: "root", folder: true, root: true,
		cVersion: 1, eVersion: 1, created: d.created, modified: d.created,
	}
	d.rootID = root.id
	t.commit(d, root)

	taken := map[string]map[string]bool{}
	takenIn := func(parent string) map[string]bool {
		if taken[parent] == nil {
			taken[parent] = map[string]bool{}
		}
		return taken[parent]
	}
	depth := map[string]int{root.id: 0}
	parents := []string{root.id}
	for range o.FoldersPerDrive {
		// Prefer shallow parents so trees look like real libraries.
		var parent string
		for {
			parent = parents[r.IntN(len(parents))]
			if depth[parent] < 4 {
				break
			}
		}
		f := t.newItem(r, d, parent, true, uniqueName(takenIn(parent), folderNames[r.IntN(len(folderNames))]))
		f.created, f.modified = t.generatedTimes(r, d.created)
		t.commit(d, f)
		depth[f.id] = depth[parent] + 1
		parents = append(parents, f.id)
	}
	for range o.FilesPerDrive {
		parent := parents[r.IntN(len(parents))]
		f := t.newFile(r, d, parent, takenIn(parent))
		f.created, f.modified = t.generatedTimes(r, d.created)
		t.commit(d, f)
	}
	// Folder sizes and child counts bottom-up, then fix versions so that
	// generation leaves no trace of intermediate states in the log.
	var sizeOf func(id string) int64
	sizeOf = func(id string) int64 {
		it := d.items[id]
		if !it.folder {
			return it.size
		}
		var total int64
		for _, c := range d.children[id] {
			total += sizeOf(c)
		}
		it.size = total
		it.childCount = len(d.children[id])
		return total
	}
	sizeOf(root.id)
}

func (t *tenant) generatedTimes(r *rand.Rand, driveCreated time.Time) (time.Time, time.Time) {
	span := contentEpoch.Sub(driveCreated)
	c := driveCreated.Add(time.Duration(r.Int64N(int64(span) + 1)))
	m := c.Add(time.Duration(r.Int64N(int64(contentEpoch.Sub(c)) + 1)))
	return c.Truncate(time.Second), m.Truncate(time.Second)
}

func (t *tenant) newItem(r *rand.Rand, d *drive, parent string, folder bool, name string) *item {
	d.itemCounter++
	by := t.randomUser(r)
	if d.owner != nil {
		by = d.owner
	}
	id := itemID(t.seed, d.index, d.itemCounter)
	return &item{
		id: id, uniqueID: newGUID(r), name: name, parentID: parent, folder: folder,
		cVersion: 1, eVersion: 1, listItemID: d.itemCounter, createdBy: by, modifiedBy: by,
		contentSeed: stringSeed(t.seed, id),
	}
}

func (t *tenant) newFile(r *rand.Rand, d *drive, parent string, taken map[string]bool) *item {
	size := t.fileOptions.drawSize(r)
	exts := smallExts
	switch {
	case size >= 32<<20:
		exts = largeExts
	case size >= 256<<10:
		exts = mediumExts
	}
	e := exts[r.IntN(len(exts))]
	name := fileStems[r.IntN(len(fileStems))] + fmt.Sprintf(" %d", 1+r.IntN(999)) + e.ext
	f := t.newItem(r, d, parent, false, uniqueName(taken, name))
	f.size, f.mime, f.text = size, e.mime, e.text
	f.malware = t.fileOptions.malwareRate > 0 && r.Float64() < t.fileOptions.malwareRate
	f.hash = &hashCell{}
	return f
}

func (g fileGen) drawSize(r *rand.Rand) int64 {
	var total float64
	for _, c := range g.sizeMix {
		total += c.Weight
	}
	x := r.Float64() * total
	class := g.sizeMix[len(g.sizeMix)-1]
	for _, c := range g.sizeMix {
		if x < c.Weight {
			class = c
			break
		}
		x -= c.Weight
	}
	size := class.Min
	if class.Max > class.Min {
		lo := math.Log(float64(max(class.Min, 1)))
		hi := math.Log(float64(class.Max))
		size = int64(math.Exp(lo + r.Float64()*(hi-lo)))
		size = min(max(size, class.Min), class.Max)
	}
	if g.maxSize > 0 {
		size = min(size, g.maxSize)
	}
	return size
}

// commit records a new version of an item: it gets the next sequence number
// and a change-log entry, and the live sets and child lists follow it.
// Callers hold t.mu for writing (or own the tenant during generation).
func (t *tenant) commit(d *drive, it *item) {
	d.seq++
	it.seq = d.seq
	prev, existed := d.items[it.id]
	d.items[it.id] = it
	d.log = append(d.log, logEntry{seq: it.seq, id: it.id})
	if it.root {
		return
	}
	set := &d.files
	if it.folder {
		set = &d.folders
	}
	switch {
	case it.deleted && existed && !prev.deleted:
		set.remove(it.id)
		kids := d.children[it.parentID]
		for i, c := range kids {
			if c == it.id {
				d.children[it.parentID] = append(kids[:i:i], kids[i+1:]...)
				break
			}
		}
	case !it.deleted && !existed:
		set.add(it.id)
		d.children[it.parentID] = append(d.children[it.parentID], it.id)
	}
}

// path returns the item's path below the drive root ("" for the root).
// Callers hold t.mu.
func (d *drive) path(id string) string {
	var parts []string
	for {
		it := d.items[id]
		if it == nil || it.root {
			break
		}
		parts = append(parts, it.name)
		id = it.parentID
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// liveItems returns the current live items of a drive sorted by sequence
// number (parents before children after generation). Callers hold t.mu.
func (d *drive) liveItems() []*item {
	out := make([]*item, 0, len(d.items))
	for _, it := range d.items {
		if !it.deleted {
			out = append(out, it)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

func (t *tenant) lookupUser(key string) *user {
	return t.usersByKey[strings.ToLower(key)]
}
