package repo_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/backup-proxy/backup-proxy/internal/s3server"
	"github.com/backup-proxy/backup-proxy/repo"
)

// The repository tests are its conformance suite: with REPO_TEST_STORE=s3
// they run against an S3 store (a versitygw server on loopback, started
// once for the package) instead of the directory store. The few tests that
// damage files in place or inject faults into the local file system run on
// the directory store only (dirStoreOnly).
var s3srv *s3server.Server

const conformanceBucket = "conformance"

func TestMain(m *testing.M) {
	switch os.Getenv("REPO_TEST_STORE") {
	case "", "dir":
	case "s3":
		dir, err := os.MkdirTemp("", "repo-s3-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if s3srv, err = s3server.Start(dir); err != nil {
			fmt.Fprintln(os.Stderr, "REPO_TEST_STORE=s3:", err)
			os.Exit(2)
		}
		code := m.Run()
		_ = s3srv.Stop()
		_ = os.RemoveAll(dir)
		os.Exit(code)
	default:
		fmt.Fprintln(os.Stderr, "REPO_TEST_STORE: want dir or s3")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// onS3 reports whether the suite runs against S3.
func onS3() bool { return s3srv != nil }

// dirStoreOnly skips a test that works on the files of a directory store.
func dirStoreOnly(t testing.TB, why string) {
	t.Helper()
	if onS3() {
		t.Skip("directory store only: " + why)
	}
}

// testStore returns the store of the repository named by key, with its
// temp files under local: nil (the directory store of the repository's own
// directory) when key == local on the directory suite.
func testStore(t testing.TB, key, local string) repo.Store {
	t.Helper()
	if !onS3() {
		if key == local {
			return nil
		}
		return repo.NewDirStore(key, nil).WithTempDir(filepath.Join(local, "tmp"))
	}
	sum := sha256.Sum256([]byte(key))
	st, err := repo.NewS3Store(context.Background(), repo.S3Options{
		Endpoint: s3srv.Endpoint(), Bucket: conformanceBucket, Prefix: hex.EncodeToString(sum[:8]) + "/",
		AccessKey: s3srv.AccessKey(), SecretKey: s3srv.SecretKey(), TempDir: filepath.Join(local, "tmp"),
		CreateBucket: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// withStore fills in the suite's store for a direct repo.Open of dir.
func withStore(t testing.TB, dir string, opts repo.Options) repo.Options {
	t.Helper()
	if opts.Store == nil {
		opts.Store = testStore(t, dir, dir)
	}
	return opts
}

// countObjects counts the objects of r's store under prefix.
func countObjects(t testing.TB, r *repo.Repository, prefix string) int {
	t.Helper()
	n := 0
	if err := r.Store().List(context.Background(), prefix, func(repo.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// getObject reads a whole object of st.
func getObject(t testing.TB, st repo.Store, key string) []byte {
	t.Helper()
	o, err := st.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b := make([]byte, o.Size())
	if _, err := o.ReadAt(b, 0); err != nil && len(b) > 0 {
		t.Fatal(err)
	}
	return b
}

// putObject replaces an object of st, as damage or an edit would.
func putObject(t testing.TB, st repo.Store, key string, data []byte) {
	t.Helper()
	f, err := st.CreateTemp("test-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := st.Publish(context.Background(), f, key); err != nil {
		t.Fatal(err)
	}
}
