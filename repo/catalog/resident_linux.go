package catalog

import (
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// dropMappedPages tells the kernel that the catalogue's memory map need not
// stay resident in this process. bbolt reads through a shared, read-only
// file mapping; a lookup or insert with a random key touches a few pages,
// and each fault also maps the neighbouring cached pages (the kernel's
// fault-around: 64 KiB), as does every page a commit frees. Without this,
// the process's RSS grows towards the catalogue's size although those pages
// are only page cache. Dropping them is safe for a MAP_SHARED file mapping:
// the next access faults the same bytes back in.
//
// tx must be open: a read transaction keeps bbolt from remapping, and in a
// write transaction the only remap is the writer's own, at commit.
func dropMappedPages(tx *bolt.Tx) {
	size := int(tx.Size())
	if size <= 0 {
		return
	}
	// Best effort: an error only costs memory.
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, tx.DB().Info().Data, uintptr(size), unix.MADV_DONTNEED)
}
