package repo

// protection is what a writer session keeps from Prune: whole packs, by
// index slot, for chunks that an index lists, and the chunks it is writing
// that no index lists yet. Protecting packs rather than chunks keeps it
// small however many chunks a job refers to (a drive of 200,000 small
// files is 200,000 chunks but a handful of packs); the price is that Prune
// leaves a protected pack whole until the session ends. Guarded by
// Repository.mu; pack slots are stable while the repository is open.
type protection struct {
	packs map[uint32]struct{}
	// pending are chunks claimed by the session and not yet in the index:
	// being encoded, or in its open pack. Bounded by one pack's chunks.
	pending map[ChunkID]struct{}
}

func newProtection() *protection {
	return &protection{packs: map[uint32]struct{}{}, pending: map[ChunkID]struct{}{}}
}

// covers reports whether indexed chunk id, at loc, is protected.
func (p *protection) covers(id ChunkID, loc location) bool {
	if _, ok := p.pending[id]; ok {
		return true
	}
	_, ok := p.packs[loc.pack]
	return ok
}

// indexed moves the chunks of a pack that has just been indexed at slot
// from pending to the pack's protection.
func (p *protection) indexed(slot uint32, entries []blobEntry) {
	p.packs[slot] = struct{}{}
	for _, e := range entries {
		delete(p.pending, e.id)
	}
}

// protections returns every protection Prune must honour: open sessions'
// and those of sessions that ended while a prune ran. Callers hold r.mu.
func (r *Repository) protections() []*protection {
	out := make([]*protection, 0, len(r.sessions)+len(r.retired))
	for s := range r.sessions {
		out = append(out, s.prot)
	}
	return append(out, r.retired...)
}

// protected reports whether indexed chunk id, at loc, is protected by any
// session. Callers hold r.mu.
func (r *Repository) protected(id ChunkID, loc location) bool {
	for _, p := range r.protections() {
		if p.covers(id, loc) {
			return true
		}
	}
	return false
}

// moveProtection extends protections of the slots chunks were copied from
// to the slot they were copied to: Prune repacks and then deletes those
// packs, and a session that referred to the chunks there must keep them
// in their new pack. Callers hold r.mu.
func (r *Repository) moveProtection(from map[uint32]struct{}, to uint32) {
	for _, p := range r.protections() {
		for slot := range from {
			if _, ok := p.packs[slot]; ok {
				p.packs[to] = struct{}{}
				break
			}
		}
	}
}
