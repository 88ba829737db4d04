package repo

// Test hooks: locate a chunk's pack and index file so corruption tests can
// damage exactly the files an item depends on.

// PackFileOf returns the path of the pack holding chunk id.
func PackFileOf(r *Repository, id ChunkID) (string, bool) {
	_, pack, ok := r.locate(id)
	if !ok {
		return "", false
	}
	return r.store.(*DirStore).path(packKey(pack)), true
}

// IndexFileOf returns the path of an index file listing the pack of chunk id.
func IndexFileOf(r *Repository, id ChunkID) (string, bool) {
	_, pack, ok := r.locate(id)
	if !ok {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, packs := range r.idx.files {
		for _, p := range packs {
			if p == pack {
				return r.store.(*DirStore).path(indexKey(name)), true
			}
		}
	}
	return "", false
}

// SetCompactIndexChunks sets how many chunks the index files compaction
// writes list, until the returned function restores it.
func SetCompactIndexChunks(n int) (restore func()) {
	old := compactIndexChunks
	compactIndexChunks = n
	return func() { compactIndexChunks = old }
}
