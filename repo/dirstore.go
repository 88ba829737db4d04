package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DirStore keeps a repository's objects as files under a local directory:
// each object is written temp file → fsync → rename → fsync dir, so it
// exists whole under its name or not at all, also across a crash.
type DirStore struct {
	fsys FS
	root string
	tmp  string
}

var _ Store = (*DirStore)(nil)

// NewDirStore returns the store of the directory root, reached through fsys
// (nil: the real file system).
func NewDirStore(root string, fsys FS) *DirStore {
	if fsys == nil {
		fsys = OSFS{}
	}
	return &DirStore{fsys: fsys, root: root, tmp: filepath.Join(root, "tmp")}
}

// WithTempDir returns the store with its temp files in dir, which must be
// on the same file system as the store. Agents sharing a directory store
// each need their own: Open empties the temp directory.
func (d *DirStore) WithTempDir(dir string) *DirStore {
	c := *d
	c.tmp = dir
	return &c
}

func (d *DirStore) path(key string) string { return filepath.Join(d.root, filepath.FromSlash(key)) }

// TempDir implements Store.
func (d *DirStore) TempDir() string { return d.tmp }

// String implements Store.
func (d *DirStore) String() string { return d.root }

// CreateTemp implements Store.
func (d *DirStore) CreateTemp(pattern string) (File, error) {
	f, err := d.fsys.CreateTemp(d.TempDir(), pattern)
	if err != nil {
		return nil, fmt.Errorf("create temp file in %s: %w", d.TempDir(), err)
	}
	return f, nil
}

// Publish implements Store.
func (d *DirStore) Publish(_ context.Context, f File, key string) error {
	tmp := f.Name()
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = d.fsys.Remove(tmp)
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		_ = d.fsys.Remove(tmp)
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	dst := d.path(key)
	dir := filepath.Dir(dst)
	err := d.fsys.Rename(tmp, dst)
	if errors.Is(err, fs.ErrNotExist) {
		// The first object of its directory: make it, durably, and retry.
		if err = d.mkdir(dir); err == nil {
			err = d.fsys.Rename(tmp, dst)
		}
	}
	if err != nil {
		_ = d.fsys.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, dst, err)
	}
	if err := d.fsys.SyncDir(dir); err != nil {
		// The file is in place but may not survive a crash; the caller
		// treats it as not written (it is then an orphan at worst).
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// mkdir creates dir and makes its entry durable in every parent up to root.
func (d *DirStore) mkdir(dir string) error {
	if err := d.fsys.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if err := d.fsys.SyncDir(p); err != nil {
			return fmt.Errorf("fsync dir %s: %w", p, err)
		}
		if p == d.root || p == filepath.Dir(p) || !strings.HasPrefix(p, d.root) {
			return nil
		}
	}
}

// Open implements Store.
func (d *DirStore) Open(_ context.Context, key string) (Object, error) {
	f, err := d.fsys.Open(d.path(key))
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return dirObject{File: f, size: fi.Size()}, nil
}

type dirObject struct {
	File
	size int64
}

func (o dirObject) Size() int64 { return o.size }

// Stat implements Store.
func (d *DirStore) Stat(_ context.Context, key string) (ObjectInfo, error) {
	fi, err := d.fsys.Stat(d.path(key))
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements Store. It walks the directory of prefix's last complete
// path element; the temp directory is never listed.
func (d *DirStore) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	return d.walk(ctx, start, prefix, fn)
}

func (d *DirStore) walk(ctx context.Context, dirKey, prefix string, fn func(ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := d.fsys.ReadDir(d.path(dirKey))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", d.path(dirKey), err)
	}
	for _, e := range entries {
		key := path.Join(dirKey, e.Name())
		if filepath.Join(d.root, key) == d.tmp {
			continue
		}
		if e.IsDir() {
			if strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/") {
				if err := d.walk(ctx, key, prefix, fn); err != nil {
					return err
				}
			}
			continue
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			continue
		}
		info := ObjectInfo{Key: key}
		if fi, err := e.Info(); err == nil {
			info.Size, info.ModTime = fi.Size(), fi.ModTime()
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements Store: every file is removed, then every directory
// they were in is fsynced once.
func (d *DirStore) Remove(_ context.Context, keys ...string) error {
	dirs := map[string]struct{}{}
	for _, key := range keys {
		p := d.path(key)
		if err := d.fsys.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		dirs[filepath.Dir(p)] = struct{}{}
	}
	for dir := range dirs {
		if err := d.fsys.SyncDir(dir); err != nil {
			return fmt.Errorf("fsync dir %s: %w", dir, err)
		}
	}
	return nil
}

// writeObject publishes data as the object key.
func writeObject(ctx context.Context, st Store, key string, data []byte) error {
	kind := key // "config"; "index-*.tmp" for index files, and so on
	if i := strings.IndexByte(key, '/'); i >= 0 {
		kind = key[:i]
	}
	f, err := st.CreateTemp(kind + "-*.tmp")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		discardTemp(f)
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return st.Publish(ctx, f, key)
}

// discardTemp closes and removes a temp file that will not be published.
// Temp files are always local, whatever the store.
func discardTemp(f File) {
	_ = f.Close()
	_ = os.Remove(f.Name())
}

// readObject reads a whole (small) object.
func readObject(ctx context.Context, st Store, key string) ([]byte, error) {
	o, err := st.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	b := make([]byte, o.Size())
	if _, err := o.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && len(b) == 0) {
		return nil, err
	}
	return b, nil
}
