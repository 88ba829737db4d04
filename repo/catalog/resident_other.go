//go:build !linux

package catalog

// dropMappedPages is a no-op where madvise is not used.
func (c *Catalog) dropMappedPages() {}
