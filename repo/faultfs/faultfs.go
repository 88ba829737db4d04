// Package faultfs wraps a repo.FS and injects failures at chosen steps
// (create, write, fsync, rename, dir fsync, open, read, remove), optionally
// as transient errors, so tests can show the repository survives each one.
package faultfs

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/backup-proxy/backup-proxy/repo"
)

// Op is a file-system step.
type Op string

// Steps that can fail.
const (
	OpCreate  Op = "create"
	OpWrite   Op = "write"
	OpSync    Op = "sync"
	OpRename  Op = "rename"
	OpSyncDir Op = "syncdir"
	OpOpen    Op = "open"
	OpRead    Op = "read"
	OpRemove  Op = "remove"
	OpStat    Op = "stat"
)

// Rule injects Err into calls of Op on paths containing PathContains
// (relative to the root given to New; "" matches every path).
type Rule struct {
	Op           Op
	PathContains string
	After        int   // matching calls that succeed before the first failure
	Times        int   // failures to inject; 0 means every later call fails
	Err          error // default EIO
	Transient    bool  // wrap Err as a TransientError
}

// TransientError is an error that says it may go away on retry.
type TransientError struct{ Err error }

func (e *TransientError) Error() string   { return "transient: " + e.Err.Error() }
func (e *TransientError) Unwrap() error   { return e.Err }
func (e *TransientError) Temporary() bool { return true }

type rule struct {
	Rule
	seen, fired int
}

// FS is a fault-injecting repo.FS.
type FS struct {
	base repo.FS
	root string

	mu       sync.Mutex
	rules    []*rule
	injected int
}

var _ repo.FS = (*FS)(nil)

// New wraps base; rule paths are matched relative to root.
func New(base repo.FS, root string) *FS { return &FS{base: base, root: filepath.Clean(root)} }

// Add adds a rule.
func (f *FS) Add(r Rule) {
	if r.Err == nil {
		r.Err = syscall.EIO
	}
	f.mu.Lock()
	f.rules = append(f.rules, &rule{Rule: r})
	f.mu.Unlock()
}

// Clear removes every rule.
func (f *FS) Clear() {
	f.mu.Lock()
	f.rules = nil
	f.mu.Unlock()
}

// Injected returns how many failures were injected.
func (f *FS) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

func (f *FS) fault(op Op, paths ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.Op != op || !f.matches(r.PathContains, paths) {
			continue
		}
		r.seen++
		if r.seen <= r.After || (r.Times > 0 && r.fired >= r.Times) {
			continue
		}
		r.fired++
		f.injected++
		err := fmt.Errorf("injected %s fault on %s: %w", op, strings.Join(paths, " → "), r.Err)
		if r.Transient {
			return &TransientError{Err: err}
		}
		return err
	}
	return nil
}

func (f *FS) matches(sub string, paths []string) bool {
	if sub == "" {
		return true
	}
	for _, p := range paths {
		rel, err := filepath.Rel(f.root, p)
		if err != nil {
			rel = p
		}
		if strings.Contains(rel, sub) {
			return true
		}
	}
	return false
}

// MkdirAll implements repo.FS.
func (f *FS) MkdirAll(path string, perm fs.FileMode) error { return f.base.MkdirAll(path, perm) }

// CreateTemp implements repo.FS.
func (f *FS) CreateTemp(dir, pattern string) (repo.File, error) {
	if err := f.fault(OpCreate, filepath.Join(dir, pattern)); err != nil {
		return nil, err
	}
	file, err := f.base.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

// Open implements repo.FS.
func (f *FS) Open(name string) (repo.File, error) {
	if err := f.fault(OpOpen, name); err != nil {
		return nil, err
	}
	file, err := f.base.Open(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

// Rename implements repo.FS.
func (f *FS) Rename(oldpath, newpath string) error {
	if err := f.fault(OpRename, oldpath, newpath); err != nil {
		return err
	}
	return f.base.Rename(oldpath, newpath)
}

// Remove implements repo.FS.
func (f *FS) Remove(name string) error {
	if err := f.fault(OpRemove, name); err != nil {
		return err
	}
	return f.base.Remove(name)
}

// ReadDir implements repo.FS.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) { return f.base.ReadDir(name) }

// Stat implements repo.FS.
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	if err := f.fault(OpStat, name); err != nil {
		return nil, err
	}
	return f.base.Stat(name)
}

// SyncDir implements repo.FS.
func (f *FS) SyncDir(name string) error {
	if err := f.fault(OpSyncDir, name); err != nil {
		return err
	}
	return f.base.SyncDir(name)
}

type faultFile struct {
	repo.File
	fs *FS
}

func (ff *faultFile) Write(p []byte) (int, error) {
	if err := ff.fs.fault(OpWrite, ff.Name()); err != nil {
		// A failed write may still have put part of p on disk.
		n, _ := ff.File.Write(p[:len(p)/2])
		return n, err
	}
	return ff.File.Write(p)
}

func (ff *faultFile) Sync() error {
	if err := ff.fs.fault(OpSync, ff.Name()); err != nil {
		return err
	}
	return ff.File.Sync()
}

func (ff *faultFile) Read(p []byte) (int, error) {
	if err := ff.fs.fault(OpRead, ff.Name()); err != nil {
		return 0, err
	}
	return ff.File.Read(p)
}

func (ff *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := ff.fs.fault(OpRead, ff.Name()); err != nil {
		return 0, err
	}
	return ff.File.ReadAt(p, off)
}
