package graphsim

import (
	"math/rand/v2"
	"strings"
	"time"
)

// MutationRequest asks for changes spread over the tenant's drives.
type MutationRequest struct {
	Create, Modify, Rename, Delete int
}

// Change describes one changed item.
type Change struct {
	// Kind is created, modified, renamed or deleted; in
	// MutationResult.Affected also "ancestor" for a folder whose size or
	// child count changed because of a change below it.
	Kind     string `json:"kind"`
	DriveID  string `json:"drive_id"`
	ItemID   string `json:"item_id"`
	Name     string `json:"name,omitempty"`
	OldName  string `json:"old_name,omitempty"`
	ParentID string `json:"parent_id,omitempty"`
	Folder   bool   `json:"folder,omitempty"`
	Size     int64  `json:"size,omitempty"`
}

// MutationResult lists what a Mutate call changed.
type MutationResult struct {
	// Changes are the requested operations in the order applied (a deleted
	// folder is one change).
	Changes []Change `json:"changes"`
	// Affected is every item whose state a delta query will report, once,
	// with its final kind: deleted beats created beats modified beats
	// renamed beats ancestor. Deleting a folder deletes its subtree.
	Affected []Change `json:"affected"`
}

var kindRank = map[string]int{"ancestor": 0, "renamed": 1, "modified": 2, "created": 3, "deleted": 4}

type mutation struct {
	s        *Server
	t        *tenant
	r        *rand.Rand
	now      time.Time
	res      MutationResult
	affected map[string]int // drive|item → index in res.Affected
}

// Mutate applies changes chosen deterministically from the seed and the
// number of earlier Mutate calls, so incremental runs have work.
func (s *Server) Mutate(req MutationRequest) MutationResult {
	t := s.tenant
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mutations++
	m := &mutation{s: s, t: t, r: rand.New(rand.NewPCG(t.seed^0x6d7574617465, t.mutations)),
		now: s.clock.Now().UTC().Truncate(time.Second), affected: map[string]int{},
		res: MutationResult{Changes: []Change{}, Affected: []Change{}}}
	if len(t.drives) == 0 {
		return m.res
	}
	for range req.Create {
		m.create()
	}
	for range req.Modify {
		m.modify()
	}
	for range req.Rename {
		m.rename()
	}
	for range req.Delete {
		m.delete()
	}
	return m.res
}

// ExpireDeltaTokens makes every delta token handed out so far dead: using
// one gives 410 resyncChangesApplyDifferences.
func (s *Server) ExpireDeltaTokens() {
	s.tenant.mu.Lock()
	s.tenant.deltaEpoch++
	s.tenant.mu.Unlock()
}

func (m *mutation) note(d *drive, it *item, kind string) {
	k := d.id + "|" + it.id
	c := Change{Kind: kind, DriveID: d.id, ItemID: it.id, Name: it.name, ParentID: it.parentID, Folder: it.folder, Size: it.size}
	if it.deleted {
		c.Name = ""
	}
	if i, ok := m.affected[k]; ok {
		if kindRank[kind] < kindRank[m.res.Affected[i].Kind] {
			c.Kind = m.res.Affected[i].Kind
		}
		m.res.Affected[i] = c
		return
	}
	m.affected[k] = len(m.res.Affected)
	m.res.Affected = append(m.res.Affected, c)
}

// pickDrive returns a random drive whose set is not empty.
func (m *mutation) pick(set func(*drive) *idSet) (*drive, string, bool) {
	for range 4 * len(m.t.drives) {
		d := m.t.drives[m.r.IntN(len(m.t.drives))]
		if id, ok := set(d).pick(m.r); ok {
			return d, id, true
		}
	}
	return nil, "", false
}

// touchAncestors gives every folder above parentID a new version with its
// size adjusted by sizeDelta.
func (m *mutation) touchAncestors(d *drive, parentID string, sizeDelta int64) {
	for id := parentID; id != ""; {
		f := d.items[id].clone()
		f.size += sizeDelta
		f.childCount = len(d.children[f.id])
		f.eVersion++
		f.cVersion++
		f.modified = m.now
		m.t.commit(d, f)
		m.note(d, f, "ancestor")
		if f.root {
			break
		}
		id = f.parentID
	}
}

func (m *mutation) takenNames(d *drive, parentID string) map[string]bool {
	taken := map[string]bool{}
	for _, id := range d.children[parentID] {
		taken[strings.ToLower(d.items[id].name)] = true
	}
	return taken
}

func (m *mutation) create() {
	d := m.t.drives[m.r.IntN(len(m.t.drives))]
	parent := d.rootID
	if n := len(d.folders.ids); n > 0 && m.r.IntN(n+1) < n {
		parent = d.folders.ids[m.r.IntN(n)]
	}
	f := m.t.newFile(m.r, d, parent, m.takenNames(d, parent))
	f.created, f.modified = m.now, m.now
	m.t.commit(d, f)
	m.res.Changes = append(m.res.Changes, Change{Kind: "created", DriveID: d.id, ItemID: f.id, Name: f.name, ParentID: parent, Size: f.size})
	m.note(d, f, "created")
	m.touchAncestors(d, parent, f.size)
}

func (m *mutation) modify() {
	d, id, ok := m.pick(func(d *drive) *idSet { return &d.files })
	if !ok {
		return
	}
	old := d.items[id]
	f := old.clone()
	f.cVersion++
	f.eVersion++
	// Edits change the size a little; tiny files may grow.
	f.size = max(old.size+old.size*int64(m.r.IntN(21)-10)/100+int64(m.r.IntN(2048)), 0)
	if m.t.fileOptions.maxSize > 0 {
		f.size = min(f.size, m.t.fileOptions.maxSize)
	}
	f.modified = m.now
	f.modifiedBy = m.t.randomUser(m.r)
	if d.owner != nil {
		f.modifiedBy = d.owner
	}
	f.hash = &hashCell{}
	m.t.commit(d, f)
	m.res.Changes = append(m.res.Changes, Change{Kind: "modified", DriveID: d.id, ItemID: f.id, Name: f.name, ParentID: f.parentID, Size: f.size})
	m.note(d, f, "modified")
	m.touchAncestors(d, f.parentID, f.size-old.size)
}

func (m *mutation) rename() {
	set := func(d *drive) *idSet { return &d.files }
	if m.r.IntN(5) == 0 {
		set = func(d *drive) *idSet { return &d.folders }
	}
	d, id, ok := m.pick(set)
	if !ok {
		if d, id, ok = m.pick(func(d *drive) *idSet { return &d.files }); !ok {
			return
		}
	}
	old := d.items[id]
	f := old.clone()
	ext := ""
	if !f.folder {
		if i := strings.LastIndex(f.name, "."); i > 0 {
			ext = f.name[i:]
		}
	}
	stem := fileStems[m.r.IntN(len(fileStems))]
	if f.folder {
		stem = folderNames[m.r.IntN(len(folderNames))]
	}
	f.name = uniqueName(m.takenNames(d, f.parentID), stem+" (renamed)"+ext)
	f.eVersion++
	f.modified = m.now
	m.t.commit(d, f)
	m.res.Changes = append(m.res.Changes, Change{Kind: "renamed", DriveID: d.id, ItemID: f.id, Name: f.name, OldName: old.name, ParentID: f.parentID, Folder: f.folder, Size: f.size})
	m.note(d, f, "renamed")
}

func (m *mutation) delete() {
	set := func(d *drive) *idSet { return &d.files }
	if m.r.IntN(10) == 0 {
		set = func(d *drive) *idSet { return &d.folders }
	}
	d, id, ok := m.pick(set)
	if !ok {
		if d, id, ok = m.pick(func(d *drive) *idSet { return &d.files }); !ok {
			return
		}
	}
	target := d.items[id]
	m.res.Changes = append(m.res.Changes, Change{Kind: "deleted", DriveID: d.id, ItemID: id, Name: target.name, ParentID: target.parentID, Folder: target.folder, Size: target.size})
	m.deleteTree(d, id)
	m.touchAncestors(d, target.parentID, -target.size)
}

// deleteTree records tombstones for an item and, children first, its subtree.
func (m *mutation) deleteTree(d *drive, id string) {
	for _, c := range append([]string(nil), d.children[id]...) {
		m.deleteTree(d, c)
	}
	f := d.items[id].clone()
	f.deleted = true
	f.eVersion++
	f.modified = m.now
	m.t.commit(d, f)
	m.note(d, f, "deleted")
}
