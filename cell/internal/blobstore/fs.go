package blobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// FS layout and tuning.
const (
	tmpDirName   = "tmp"     // root/tmp holds Puts in progress
	staleTemp    = time.Hour // NewFS removes temp files older than this
	collectBatch = 1000      // refs per call of Collect's referenced
	copyBufSize  = 64 << 10  // Put's read size
	lockStripes  = 256       // refresh/delete locks, by the ref's first byte
	dirPerm      = fs.FileMode(0o700)
	tempPattern  = "put-*"
	fanOutDigits = 2 // hex digits per level of fan-out
	fanOutLevels = 2
)

// FS is the filesystem Store. A blob lives at root/ab/cd/<ref>, where ab
// and cd are the ref's first two pairs of hex digits (two levels of 256-way
// fan-out keep directories small). Puts in progress are temp files under
// root/tmp, on the same filesystem so that they can be renamed into place.
// Files are created 0o600 and directories 0o700.
//
// Crash safety: content is written to a temp file, which is fsync'd, then
// renamed to its final name, and the directory is fsync'd (as are new
// fan-out directories, in their parents). A crash at any point leaves
// either no blob, or the complete blob, under a ref; a leftover temp file
// is invisible, and removed by a later NewFS once it is an hour old.
//
// One FS value must own its root: two FS values (or processes) on the same
// root are safe for everything except the refresh/delete window described
// at Store.Collect, which FS closes with a lock held in memory.
type FS struct {
	root    string
	tmp     string
	maxSize int64 // 0: no limit

	// durable holds the fan-out directories known to exist durably (this
	// process created or saw them and fsync'd their parent).
	durable sync.Map // string → struct{}

	// locks serialise Put's refresh-or-rename of a ref with Collect's
	// re-check and removal of it.
	locks [lockStripes]sync.Mutex
}

// Option configures an FS.
type Option func(*FS)

// WithMaxSize limits blobs to n bytes: Put of more fails with ErrTooLarge.
// n <= 0 means no limit (the default).
func WithMaxSize(n int64) Option {
	return func(f *FS) {
		if n < 0 {
			n = 0
		}
		f.maxSize = n
	}
}

// NewFS opens the blob store rooted at root, creating root (0o700) and
// root/tmp if needed, and removes temp files older than an hour that
// crashed Puts left in root/tmp. Younger temp files may belong to Puts in
// progress in another FS on the same root, and are left alone.
func NewFS(root string, opts ...Option) (*FS, error) {
	if root == "" {
		return nil, errors.New("blob store: empty root")
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	f := &FS{root: root, tmp: filepath.Join(root, tmpDirName)}
	for _, o := range opts {
		o(f)
	}
	if err := os.MkdirAll(root, dirPerm); err != nil {
		return nil, fmt.Errorf("blob store: create root: %w", err)
	}
	if err := os.Mkdir(f.tmp, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("blob store: create temp dir: %w", err)
	}
	// Make root itself durable in its parent, and root's entries (tmp).
	if err := syncDir(filepath.Dir(root)); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	if err := syncDir(root); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	if err := f.removeStaleTemps(time.Now().Add(-staleTemp)); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	return f, nil
}

// removeStaleTemps removes the temp files last modified before cutoff.
func (f *FS) removeStaleTemps(cutoff time.Time) error {
	entries, err := os.ReadDir(f.tmp)
	if err != nil {
		return fmt.Errorf("list temp files: %w", err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("stat temp file: %w", err)
		}
		if !info.Mode().IsRegular() || !info.ModTime().Before(cutoff) {
			continue
		}
		if err := os.Remove(filepath.Join(f.tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale temp file: %w", err)
		}
	}
	return nil
}

// path is where the blob ref lives; ref must be valid.
func (f *FS) path(ref string) string {
	return filepath.Join(f.root, ref[0:2], ref[2:4], ref)
}

// lock is the lock stripe of ref (by its first byte); ref must be valid.
func (f *FS) lock(ref string) *sync.Mutex {
	return &f.locks[unhex(ref[0])<<4|unhex(ref[1])]
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}

// Put implements Store.Put.
func (f *FS) Put(ctx context.Context, r io.Reader) (ref string, size int64, err error) {
	if err := ctx.Err(); err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	tmp, err := os.CreateTemp(f.tmp, tempPattern) // mode 0o600
	if err != nil {
		return "", 0, fmt.Errorf("put blob: create temp file: %w", err)
	}
	renamed := false
	defer func() {
		tmp.Close() // a second Close after the explicit one is harmless
		if !renamed {
			os.Remove(tmp.Name())
		}
	}()

	ref, size, err = f.copy(ctx, tmp, r)
	if err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	final := f.path(ref)
	if err := f.ensureDirs(ref); err != nil {
		return "", 0, fmt.Errorf("put blob %s: %w", ref, err)
	}

	// Already stored: refresh the modification time, keep the temp file
	// out. Under the ref's lock, so that Collect cannot delete the blob
	// between its re-check and its removal with this refresh in between.
	mu := f.lock(ref)
	now := time.Now()
	mu.Lock()
	err = os.Chtimes(final, now, now)
	mu.Unlock()
	switch {
	case err == nil:
		// The blob may have been renamed into place by a concurrent Put
		// that has not yet fsync'd the directory: do it ourselves before
		// telling our caller the blob is durable.
		if err := syncDir(filepath.Dir(final)); err != nil {
			return "", 0, fmt.Errorf("put blob %s: %w", ref, err)
		}
		return ref, size, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", 0, fmt.Errorf("put blob %s: refresh: %w", ref, err)
	}

	// New: make the content durable, then give it its name. If a
	// concurrent Put of the same content got there first, the rename
	// replaces its file with an identical one, atomically.
	if err := tmp.Sync(); err != nil {
		return "", 0, fmt.Errorf("put blob %s: sync: %w", ref, err)
	}
	if err := tmp.Close(); err != nil {
		return "", 0, fmt.Errorf("put blob %s: close: %w", ref, err)
	}
	mu.Lock()
	err = os.Rename(tmp.Name(), final)
	mu.Unlock()
	if err != nil {
		return "", 0, fmt.Errorf("put blob %s: rename into place: %w", ref, err)
	}
	renamed = true
	if err := syncDir(filepath.Dir(final)); err != nil {
		return "", 0, fmt.Errorf("put blob %s: %w", ref, err)
	}
	return ref, size, nil
}

// copy writes r to w, hashing it, honouring ctx and the maximum size.
func (f *FS) copy(ctx context.Context, w io.Writer, r io.Reader) (ref string, size int64, err error) {
	h := sha256.New()
	buf := make([]byte, copyBufSize)
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			size += int64(n)
			if f.maxSize > 0 && size > f.maxSize {
				return "", 0, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, f.maxSize)
			}
			h.Write(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				return "", 0, fmt.Errorf("write temp file: %w", err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", 0, fmt.Errorf("read content: %w", rerr)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// ensureDirs makes sure ref's two fan-out directories exist durably.
func (f *FS) ensureDirs(ref string) error {
	dir := f.root
	for i := 0; i < fanOutLevels; i++ {
		parent := dir
		dir = filepath.Join(dir, ref[i*fanOutDigits:(i+1)*fanOutDigits])
		if _, ok := f.durable.Load(dir); ok {
			continue
		}
		if err := os.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create directory: %w", err)
		}
		// Whether we created it or found it (perhaps just created by a
		// concurrent Put that has not fsync'd the parent yet), its entry
		// must be durable before a blob under it is reported durable.
		if err := syncDir(parent); err != nil {
			return err
		}
		f.durable.Store(dir, struct{}{})
	}
	return nil
}

// syncDir fsyncs a directory, making its entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Open implements Store.Open.
func (f *FS) Open(ctx context.Context, ref string) (Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	if !ValidRef(ref) {
		return nil, fmt.Errorf("open blob: %w", invalidRef(ref))
	}
	file, err := os.Open(f.path(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open blob: %w: %s", ErrNotFound, ref)
	} else if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", ref, err)
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("open blob %s: %w", ref, err)
	}
	return &fsBlob{f: file, size: info.Size(), mod: info.ModTime()}, nil
}

// fsBlob is an open FS blob. It does not embed *os.File, so as not to offer
// Write and friends.
type fsBlob struct {
	f    *os.File
	size int64
	mod  time.Time
}

func (b *fsBlob) Read(p []byte) (int, error)                   { return b.f.Read(p) }
func (b *fsBlob) ReadAt(p []byte, off int64) (int, error)      { return b.f.ReadAt(p, off) }
func (b *fsBlob) Seek(offset int64, whence int) (int64, error) { return b.f.Seek(offset, whence) }
func (b *fsBlob) Close() error                                 { return b.f.Close() }
func (b *fsBlob) Size() int64                                  { return b.size }
func (b *fsBlob) ModTime() time.Time                           { return b.mod }

// Stat implements Store.Stat.
func (f *FS) Stat(ctx context.Context, ref string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("stat blob: %w", err)
	}
	if !ValidRef(ref) {
		return 0, fmt.Errorf("stat blob: %w", invalidRef(ref))
	}
	info, err := os.Stat(f.path(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("stat blob: %w: %s", ErrNotFound, ref)
	} else if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", ref, err)
	}
	return info.Size(), nil
}

// Delete implements Store.Delete.
func (f *FS) Delete(ctx context.Context, ref string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete blob: %w", err)
	}
	if !ValidRef(ref) {
		return fmt.Errorf("delete blob: %w", invalidRef(ref))
	}
	if err := os.Remove(f.path(ref)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", ref, err)
	}
	return nil
}

// Walk implements Store.Walk. It reads one leaf directory at a time (at
// most a few thousand names even for a billion blobs), in name order, and
// skips whatever is not a blob in its right place: root/tmp, strangers, a
// blob-named file in the wrong directory.
func (f *FS) Walk(ctx context.Context, fn func(ref string, size int64, mod time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	tops, err := readFanOut(f.root)
	if err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	for _, top := range tops {
		mids, err := readFanOut(filepath.Join(f.root, top))
		if err != nil {
			return fmt.Errorf("walk blobs: %w", err)
		}
		for _, mid := range mids {
			dir := filepath.Join(f.root, top, mid)
			entries, err := os.ReadDir(dir)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return fmt.Errorf("walk blobs: %w", err)
			}
			for _, e := range entries {
				ref := e.Name()
				if !ValidRef(ref) || ref[:fanOutDigits*fanOutLevels] != top+mid || !e.Type().IsRegular() {
					continue
				}
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("walk blobs: %w", err)
				}
				info, err := e.Info()
				if errors.Is(err, fs.ErrNotExist) {
					continue // deleted since the listing
				} else if err != nil {
					return fmt.Errorf("walk blobs: %w", err)
				}
				if err := fn(ref, info.Size(), info.ModTime()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// readFanOut lists the fan-out directories in dir: those named by two
// lowercase hex digits, in name order.
func readFanOut(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if len(n) != fanOutDigits || !e.IsDir() || !isLowerHex(n) {
			continue
		}
		names = append(names, n)
	}
	return names, nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Collect implements Store.Collect. Candidates are gathered during the walk
// and handed to referenced a batch at a time; the walk holds only the
// current leaf directory's listing, so deleting from it as we go is safe.
func (f *FS) Collect(ctx context.Context, referenced func(ctx context.Context, refs []string) (map[string]bool, error), grace time.Duration) (int, error) {
	return collect(ctx, f.Walk, referenced, func(_ context.Context, ref string, cutoff time.Time) (bool, error) {
		return f.removeIfOlder(ref, cutoff)
	}, grace)
}

// removeIfOlder removes the blob ref if it was last modified before
// cutoff. The re-check and the removal happen under the ref's lock, which
// Put holds around its refresh, so a refresh cannot fall between them.
func (f *FS) removeIfOlder(ref string, cutoff time.Time) (bool, error) {
	p := f.path(ref)
	mu := f.lock(ref)
	mu.Lock()
	defer mu.Unlock()
	info, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("re-check blob %s: %w", ref, err)
	}
	if !info.ModTime().Before(cutoff) {
		return false, nil // refreshed by a Put since the walk saw it
	}
	if err := os.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("remove blob %s: %w", ref, err)
	}
	return true, nil
}
