//go:build !linux

package catalog

import bolt "go.etcd.io/bbolt"

// dropMappedPages is a no-op where madvise is not used.
func dropMappedPages(*bolt.Tx) {}
