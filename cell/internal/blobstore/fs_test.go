package blobstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/blobstore/blobstoretest"
)

func newFS(t *testing.T, root string) *blobstore.FS {
	t.Helper()
	s, err := blobstore.NewFS(root, blobstore.WithMaxSize(blobstoretest.MaxSize))
	if err != nil {
		t.Fatalf("NewFS: %v", err)
	}
	return s
}

func TestFS(t *testing.T) {
	blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
		root := t.TempDir()
		s := newFS(t, root)
		// Whatever a subtest did, no temp file may be left behind.
		t.Cleanup(func() {
			entries, err := os.ReadDir(filepath.Join(root, "tmp"))
			if err != nil {
				t.Errorf("read temp dir: %v", err)
			}
			for _, e := range entries {
				t.Errorf("temp file left behind: %s", e.Name())
			}
		})
		return s
	})
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A crash between writing a Put's temp file and renaming it leaves a temp
// file: it is no blob, and NewFS removes it once it is an hour old.
func TestFSLeftoverTempFile(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newFS(t, root)
	keep, _, err := s.Put(ctx, bytes.NewReader([]byte("a blob")))
	if err != nil {
		t.Fatal(err)
	}

	content := []byte("a message whose Put crashed before the rename")
	stale := filepath.Join(root, "tmp", "put-1234")
	young := filepath.Join(root, "tmp", "put-5678")
	for _, p := range []string{stale, young} {
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Open(ctx, sha(content)); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open(content of a temp file) = %v, want ErrNotFound", err)
	}
	var seen []string
	err = s.Walk(ctx, func(ref string, _ int64, _ time.Time) error {
		seen = append(seen, ref)
		return nil
	})
	if err != nil || len(seen) != 1 || seen[0] != keep {
		t.Errorf("Walk = %v, %v; want only %s", seen, err, keep)
	}

	long := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, long, long); err != nil {
		t.Fatal(err)
	}
	s = newFS(t, root)
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temp file still there after NewFS: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("young temp file (a Put in progress elsewhere?) removed by NewFS: %v", err)
	}
	if _, err := s.Stat(ctx, keep); err != nil {
		t.Errorf("blob gone after NewFS: %v", err)
	}
}

// The layout and permissions are as documented, and Walk sees only blobs
// in their places.
func TestFSLayout(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "blobs")
	s := newFS(t, root)
	ref, _, err := s.Put(ctx, bytes.NewReader([]byte("where am I")))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, ref[:2], ref[2:4], ref)
	if s.Path(ref) != p {
		t.Errorf("Path = %s, want %s", s.Path(ref), p)
	}
	for _, c := range []struct {
		path string
		perm fs.FileMode
	}{
		{root, 0o700},
		{filepath.Join(root, "tmp"), 0o700},
		{filepath.Join(root, ref[:2]), 0o700},
		{filepath.Join(root, ref[:2], ref[2:4]), 0o700},
		{p, 0o600},
	} {
		info, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got&^c.perm != 0 {
			t.Errorf("%s: mode %v, want at most %v", c.path, got, c.perm)
		}
	}

	// Strangers: a non-ref name in a leaf, a blob-named file in the wrong
	// leaf, a directory named like a blob, files in the fan-out levels.
	other := sha([]byte("elsewhere"))
	strangers := []string{
		filepath.Join(root, ref[:2], ref[2:4], "notes.txt"),
		filepath.Join(root, ref[:2], ref[2:4], other),
		filepath.Join(root, ref[:2], "zz"),
		filepath.Join(root, "README"),
	}
	for _, f := range strangers {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "ff", "ff", "ffff"+ref[4:]), 0o700); err != nil {
		t.Fatal(err)
	}
	var seen []string
	err = s.Walk(ctx, func(r string, _ int64, _ time.Time) error {
		seen = append(seen, r)
		return nil
	})
	if err != nil || len(seen) != 1 || seen[0] != ref {
		t.Errorf("Walk = %v, %v; want only %s", seen, err, ref)
	}
	if _, err := s.Open(ctx, other); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open(blob-named file in the wrong place) = %v, want ErrNotFound", err)
	}
}
