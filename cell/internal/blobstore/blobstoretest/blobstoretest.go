// Package blobstoretest is the conformance suite of blobstore.Store: Run
// checks an implementation against the contract documented on the
// interface, method by method. Every implementation runs it from its tests
// (FS in fs_test.go, S3 in s3_test.go).
package blobstoretest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
)

// MaxSize is the maximum blob size the stores given to Run must be
// configured with. The suite puts a blob of exactly MaxSize bytes (which
// must succeed, streamed) and one of more (which must fail).
const MaxSize = 8 << 20

// Ager is what the suite needs, besides the Store, to test Collect without
// waiting: stores given to Run must implement it (in test builds only, if
// they like; FS does so in export_test.go).
type Ager interface {
	// Age sets the blob's modification time to d before now, as if it
	// had last been Put d ago.
	Age(ref string, d time.Duration) error
}

// Run runs the suite. newStore must return a new, empty store, configured
// with a maximum blob size of MaxSize and implementing Ager; it is called
// once per subtest, and should register its own cleanup with t.
func Run(t *testing.T, newStore func(t *testing.T) blobstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s blobstore.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"PutIdempotent", testPutIdempotent},
		{"ConcurrentPuts", testConcurrentPuts},
		{"Empty", testEmpty},
		{"Large", testLarge},
		{"SeekAndPartialReads", testSeek},
		{"ServeContentRange", testServeContent},
		{"UnknownRef", testUnknownRef},
		{"MalformedRefs", testMalformedRefs},
		{"Delete", testDelete},
		{"Walk", testWalk},
		{"Cancelled", testCancelled},
		{"Collect", testCollect},
		{"CollectBatches", testCollectBatches},
		{"CollectReferencedFails", testCollectReferencedFails},
		{"CollectKeepsRePut", testCollectKeepsRePut},
		{"FailingReader", testFailingReader},
		{"MaxSize", testMaxSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

// Old is how far back the Collect tests age blobs, and grace their grace:
// the aged blobs are well older than grace, fresh ones well younger.
const (
	old   = 2 * time.Hour
	grace = time.Minute
)

var errBoom = errors.New("boom")

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// put stores content and checks the ref and size it gets back.
func put(t *testing.T, s blobstore.Store, content []byte) string {
	t.Helper()
	ref, size, err := s.Put(context.Background(), bytes.NewReader(content))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if want := sha(content); ref != want {
		t.Fatalf("Put ref = %s, want sha256 %s", ref, want)
	}
	if size != int64(len(content)) {
		t.Fatalf("Put size = %d, want %d", size, len(content))
	}
	return ref
}

func read(t *testing.T, s blobstore.Store, ref string) []byte {
	t.Helper()
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatalf("Open(%s): %v", ref, err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read %s: %v", ref, err)
	}
	if b.Size() != int64(len(got)) {
		t.Fatalf("Size() = %d, read %d bytes", b.Size(), len(got))
	}
	return got
}

type entry struct {
	size int64
	mod  time.Time
}

// list walks the store, checking the order.
func list(t *testing.T, s blobstore.Store) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	prev := ""
	err := s.Walk(context.Background(), func(ref string, size int64, mod time.Time) error {
		if ref <= prev {
			t.Errorf("Walk: %s after %s, want ascending refs", ref, prev)
		}
		prev = ref
		got[ref] = entry{size, mod}
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return got
}

func refsOf(m map[string]entry) []string {
	var refs []string
	for r := range m {
		refs = append(refs, r)
	}
	slices.Sort(refs)
	return refs
}

// wantRefs checks that the store holds exactly these blobs.
func wantRefs(t *testing.T, s blobstore.Store, want ...string) {
	t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	want = slices.Compact(want)
	if got := refsOf(list(t, s)); !slices.Equal(got, want) {
		t.Fatalf("store holds %v, want %v", got, want)
	}
}

func age(t *testing.T, s blobstore.Store, ref string, d time.Duration) {
	t.Helper()
	a, ok := s.(Ager)
	if !ok {
		t.Fatalf("%T does not implement blobstoretest.Ager", s)
	}
	if err := a.Age(ref, d); err != nil {
		t.Fatalf("Age: %v", err)
	}
}

// fresh reports whether mod is about now (filesystem clocks are coarse).
func fresh(mod time.Time) bool {
	now := time.Now()
	return mod.After(now.Add(-time.Minute)) && mod.Before(now.Add(time.Minute))
}

func modTime(t *testing.T, s blobstore.Store, ref string) time.Time {
	t.Helper()
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	return b.ModTime()
}

// stream is n bytes of reproducible noise, produced as read.
func stream(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

func testRoundTrip(t *testing.T, s blobstore.Store) {
	content := []byte("From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
	ref := put(t, s, content)
	if size, err := s.Stat(context.Background(), ref); err != nil || size != int64(len(content)) {
		t.Fatalf("Stat = %d, %v; want %d", size, err, len(content))
	}
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != int64(len(content)) {
		t.Errorf("Size() = %d, want %d", b.Size(), len(content))
	}
	if !fresh(b.ModTime()) {
		t.Errorf("ModTime() = %v, want about now", b.ModTime())
	}
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read %q, %v; want %q", got, err, content)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func testPutIdempotent(t *testing.T, s blobstore.Store) {
	content := []byte("the same message, delivered twice")
	ref := put(t, s, content)
	age(t, s, ref, old)
	if mod := modTime(t, s, ref); fresh(mod) {
		t.Fatalf("ModTime() after Age = %v, want %v ago", mod, old)
	}
	if again := put(t, s, content); again != ref {
		t.Fatalf("second Put ref = %s, want %s", again, ref)
	}
	if mod := modTime(t, s, ref); !fresh(mod) {
		t.Errorf("ModTime() after second Put = %v, want refreshed to about now", mod)
	}
	wantRefs(t, s, ref)
	if got := read(t, s, ref); !bytes.Equal(got, content) {
		t.Errorf("content = %q, want %q", got, content)
	}
}

func testConcurrentPuts(t *testing.T, s blobstore.Store) {
	const n = 100
	contents := make([][]byte, n)
	for i := range contents {
		if i%2 == 0 {
			contents[i] = []byte("one attachment, forwarded to many")
		} else {
			contents[i] = fmt.Appendf(nil, "message %d: %s", i, strings.Repeat("x", i*100))
		}
	}
	refs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range contents {
		wg.Go(func() {
			var size int64
			refs[i], size, errs[i] = s.Put(context.Background(), bytes.NewReader(contents[i]))
			if errs[i] == nil && size != int64(len(contents[i])) {
				errs[i] = fmt.Errorf("size %d, want %d", size, len(contents[i]))
			}
		})
	}
	wg.Wait()
	var want []string
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		if refs[i] != sha(contents[i]) {
			t.Fatalf("Put %d ref = %s, want %s", i, refs[i], sha(contents[i]))
		}
		want = append(want, refs[i])
	}
	wantRefs(t, s, want...)
	if got := len(list(t, s)); got != n/2+1 {
		t.Errorf("%d blobs, want %d", got, n/2+1)
	}
	for i, ref := range refs {
		if got := read(t, s, ref); !bytes.Equal(got, contents[i]) {
			t.Fatalf("blob %d: content differs", i)
		}
	}
}

func testEmpty(t *testing.T, s blobstore.Store) {
	ref := put(t, s, nil)
	if ref != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatalf("empty ref = %s", ref)
	}
	if got := read(t, s, ref); len(got) != 0 {
		t.Errorf("read %d bytes of the empty blob", len(got))
	}
	if size, err := s.Stat(context.Background(), ref); err != nil || size != 0 {
		t.Errorf("Stat = %d, %v; want 0", size, err)
	}
	if got := list(t, s); len(got) != 1 || got[ref].size != 0 {
		t.Errorf("Walk = %v, want the empty blob", got)
	}
}

func testLarge(t *testing.T, s blobstore.Store) {
	h := sha256.New()
	ref, size, err := s.Put(context.Background(), io.TeeReader(stream(1, MaxSize), h))
	if err != nil {
		t.Fatalf("Put of MaxSize bytes: %v", err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); ref != want || size != MaxSize {
		t.Fatalf("Put = %s, %d; want %s, %d", ref, size, want, MaxSize)
	}
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != MaxSize {
		t.Errorf("Size() = %d, want %d", b.Size(), MaxSize)
	}
	h.Reset()
	if n, err := io.Copy(h, b); err != nil || n != MaxSize {
		t.Fatalf("read %d bytes, %v; want %d", n, err, MaxSize)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ref {
		t.Errorf("content read back hashes to %s, want %s", got, ref)
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}

func testSeek(t *testing.T, s blobstore.Store) {
	content := pattern(10000)
	ref := put(t, s, content)
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	seek := func(off int64, whence int, want int64) {
		t.Helper()
		if pos, err := b.Seek(off, whence); err != nil || pos != want {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d", off, whence, pos, err, want)
		}
	}
	readN := func(n int, want []byte) {
		t.Helper()
		got := make([]byte, n)
		if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes: %v, content differs: %v", n, err, !bytes.Equal(got, want))
		}
	}
	readN(10, content[:10])
	seek(1234, io.SeekStart, 1234)
	readN(100, content[1234:1334])
	seek(-10, io.SeekEnd, 9990)
	if rest, err := io.ReadAll(b); err != nil || !bytes.Equal(rest, content[9990:]) {
		t.Fatalf("read to the end: %v, %v", rest, err)
	}
	seek(-20, io.SeekCurrent, 9980)
	readN(5, content[9980:9985])
	seek(0, io.SeekEnd, 10000) // how http.ServeContent learns the size
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
	}
	seek(0, io.SeekStart, 0)
	if all, err := io.ReadAll(b); err != nil || !bytes.Equal(all, content) {
		t.Fatalf("read from the start again: %v", err)
	}
}

func testServeContent(t *testing.T, s blobstore.Store) {
	content := pattern(5000)
	ref := put(t, s, content)
	b, err := s.Open(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	req := httptest.NewRequest(http.MethodGet, "/blob", nil)
	req.Header.Set("Range", "bytes=100-199")
	rec := httptest.NewRecorder()
	http.ServeContent(rec, req, "", b.ModTime(), b)
	if rec.Code != http.StatusPartialContent {
		t.Fatalf("status %d, want 206", rec.Code)
	}
	if !bytes.Equal(rec.Body.Bytes(), content[100:200]) {
		t.Errorf("range body differs")
	}
	if got := rec.Header().Get("Content-Range"); got != "bytes 100-199/5000" {
		t.Errorf("Content-Range = %q", got)
	}
}

func testUnknownRef(t *testing.T, s blobstore.Store) {
	put(t, s, []byte("something else"))
	ref := sha([]byte("never stored"))
	if _, err := s.Open(context.Background(), ref); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(context.Background(), ref); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat(unknown) = %v, want ErrNotFound", err)
	}
}

func testMalformedRefs(t *testing.T, s blobstore.Store) {
	content := []byte("a blob that must survive")
	valid := put(t, s, content)
	bad := []string{
		"",
		"../etc/passwd",
		"abc",
		strings.ToUpper(valid),                // an existing blob, on a case-insensitive filesystem
		valid[:63],                            // short
		valid + "0",                           // long
		"../../../../" + valid[12:],           // traversal, of the right length
		valid[:30] + "/../" + valid[34:],      // traversal inside
		valid[:63] + "g",                      // not hex
		valid[:63] + "\x00",                   // NUL
		" " + valid[1:],                       // space
		strings.Repeat("/", 64),               // all slashes
		strings.Repeat("a", 1<<16),            // huge
		valid[:2] + "/" + valid[2:4] + "/abc", // a path in the layout
	}
	ctx := context.Background()
	for _, ref := range bad {
		if _, err := s.Open(ctx, ref); !errors.Is(err, blobstore.ErrInvalidRef) {
			t.Errorf("Open(%.80q) = %v, want ErrInvalidRef", ref, err)
		}
		if _, err := s.Stat(ctx, ref); !errors.Is(err, blobstore.ErrInvalidRef) {
			t.Errorf("Stat(%.80q) = %v, want ErrInvalidRef", ref, err)
		}
		if err := s.Delete(ctx, ref); !errors.Is(err, blobstore.ErrInvalidRef) {
			t.Errorf("Delete(%.80q) = %v, want ErrInvalidRef", ref, err)
		}
		if blobstore.ValidRef(ref) {
			t.Errorf("ValidRef(%.80q) = true", ref)
		}
	}
	if !blobstore.ValidRef(valid) {
		t.Errorf("ValidRef(%s) = false", valid)
	}
	wantRefs(t, s, valid)
	if got := read(t, s, valid); !bytes.Equal(got, content) {
		t.Errorf("content changed")
	}
}

func testDelete(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	content := []byte("to be deleted")
	ref := put(t, s, content)
	keep := put(t, s, []byte("to be kept"))
	if err := s.Delete(ctx, ref); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Open(ctx, ref); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, ref); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, ref); err != nil {
		t.Errorf("Delete of a deleted blob = %v, want nil", err)
	}
	if err := s.Delete(ctx, sha([]byte("never stored"))); err != nil {
		t.Errorf("Delete of an unknown blob = %v, want nil", err)
	}
	wantRefs(t, s, keep)
	put(t, s, content)
	if got := read(t, s, ref); !bytes.Equal(got, content) {
		t.Errorf("content after re-Put differs")
	}
	wantRefs(t, s, keep, ref)
}

func testWalk(t *testing.T, s blobstore.Store) {
	want := map[string]int64{}
	var deleted string
	for i := range 20 {
		content := fmt.Appendf(nil, "blob %d %s", i, strings.Repeat("y", i*37))
		ref := put(t, s, content)
		want[ref] = int64(len(content))
		if i == 7 {
			deleted = ref
		}
	}
	if err := s.Delete(context.Background(), deleted); err != nil {
		t.Fatal(err)
	}
	delete(want, deleted)
	got := list(t, s)
	if len(got) != len(want) {
		t.Errorf("Walk saw %d blobs, want %d", len(got), len(want))
	}
	for ref, size := range want {
		e, ok := got[ref]
		if !ok {
			t.Errorf("Walk missed %s", ref)
			continue
		}
		if e.size != size {
			t.Errorf("Walk: %s size %d, want %d", ref, e.size, size)
		}
		if !fresh(e.mod) {
			t.Errorf("Walk: %s mod %v, want about now", ref, e.mod)
		}
	}

	errStop := errors.New("stop")
	calls := 0
	err := s.Walk(context.Background(), func(string, int64, time.Time) error {
		calls++
		return errStop
	})
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("Walk with a failing fn = %v after %d calls, want errStop after 1", err, calls)
	}
}

func testCancelled(t *testing.T, s blobstore.Store) {
	ref := put(t, s, []byte("one"))
	put(t, s, []byte("two"))
	put(t, s, []byte("three"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Put(ctx, strings.NewReader("four")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put = %v, want context.Canceled", err)
	}
	if _, err := s.Open(ctx, ref); !errors.Is(err, context.Canceled) {
		t.Errorf("Open = %v, want context.Canceled", err)
	}
	if err := s.Walk(ctx, func(string, int64, time.Time) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Walk = %v, want context.Canceled", err)
	}
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }
	if _, err := s.Collect(ctx, none, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Collect = %v, want context.Canceled", err)
	}

	// Cancelled during a walk: no more calls.
	ctx, cancel = context.WithCancel(context.Background())
	calls := 0
	err := s.Walk(ctx, func(string, int64, time.Time) error {
		calls++
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("Walk cancelled in fn = %v after %d calls, want context.Canceled after 1", err, calls)
	}

	// Cancelled during a Put: nothing left.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	r := &funcReader{read: func(p []byte) (int, error) {
		cancel()
		return copy(p, "more and more"), nil
	}}
	if _, _, err := s.Put(ctx, r); !errors.Is(err, context.Canceled) {
		t.Errorf("Put cancelled while reading = %v, want context.Canceled", err)
	}
	if got := len(list(t, s)); got != 3 {
		t.Errorf("%d blobs after the cancelled Puts, want 3", got)
	}
}

type funcReader struct{ read func(p []byte) (int, error) }

func (r *funcReader) Read(p []byte) (int, error) { return r.read(p) }

// refsSet answers referenced from a fixed set, recording the batches.
type refsSet struct {
	mu      sync.Mutex
	live    map[string]bool
	batches [][]string
}

func (r *refsSet) referenced(_ context.Context, refs []string) (map[string]bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, slices.Clone(refs))
	out := map[string]bool{}
	for _, ref := range refs {
		if r.live[ref] {
			out[ref] = true
		}
	}
	return out, nil
}

func (r *refsSet) asked() []string {
	var all []string
	for _, b := range r.batches {
		all = append(all, b...)
	}
	slices.Sort(all)
	return all
}

func testCollect(t *testing.T, s blobstore.Store) {
	oldGarbage := put(t, s, []byte("old, unreferenced"))
	oldLive := put(t, s, []byte("old, referenced"))
	newGarbage := put(t, s, []byte("new, unreferenced (an insert in flight)"))
	newLive := put(t, s, []byte("new, referenced"))
	age(t, s, oldGarbage, old)
	age(t, s, oldLive, old)

	refs := &refsSet{live: map[string]bool{oldLive: true, newLive: true}}
	n, err := s.Collect(context.Background(), refs.referenced, grace)
	if err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v; want 1, nil", n, err)
	}
	wantRefs(t, s, oldLive, newGarbage, newLive)
	want := []string{oldGarbage, oldLive}
	slices.Sort(want)
	if got := refs.asked(); !slices.Equal(got, want) {
		t.Errorf("Collect asked about %v, want the blobs older than grace %v", got, want)
	}

	n, err = s.Collect(context.Background(), refs.referenced, grace)
	if err != nil || n != 0 {
		t.Errorf("second Collect = %d, %v; want 0, nil", n, err)
	}
	if _, err := s.Collect(context.Background(), refs.referenced, -time.Second); err == nil {
		t.Errorf("Collect with a negative grace succeeded")
	}
	wantRefs(t, s, oldLive, newGarbage, newLive)
}

func testCollectBatches(t *testing.T, s blobstore.Store) {
	const n = 1001
	ager, ok := s.(Ager)
	if !ok {
		t.Fatalf("%T does not implement blobstoretest.Ager", s)
	}
	refs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				refs[i], _, errs[i] = s.Put(context.Background(), strings.NewReader(fmt.Sprint("blob ", i)))
				if errs[i] == nil {
					errs[i] = ager.Age(refs[i], old)
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Put/Age %d: %v", i, err)
		}
	}
	live := refs[500]
	set := &refsSet{live: map[string]bool{live: true}}
	deleted, err := s.Collect(context.Background(), set.referenced, grace)
	if err != nil || deleted != n-1 {
		t.Fatalf("Collect = %d, %v; want %d, nil", deleted, err, n-1)
	}
	if len(set.batches) < 2 {
		t.Errorf("%d batches for %d blobs, want at least 2", len(set.batches), n)
	}
	for i, b := range set.batches {
		if len(b) == 0 || len(b) > 1000 {
			t.Errorf("batch %d has %d refs, want 1 to 1000", i, len(b))
		}
	}
	want := slices.Clone(refs)
	slices.Sort(want)
	if got := set.asked(); !slices.Equal(got, want) {
		t.Errorf("Collect asked about %d refs, want each of the %d once", len(got), n)
	}
	wantRefs(t, s, live)
}

func testCollectReferencedFails(t *testing.T, s blobstore.Store) {
	a := put(t, s, []byte("a"))
	b := put(t, s, []byte("b"))
	age(t, s, a, old)
	age(t, s, b, old)
	fail := func(context.Context, []string) (map[string]bool, error) { return nil, errBoom }
	n, err := s.Collect(context.Background(), fail, grace)
	if !errors.Is(err, errBoom) || n != 0 {
		t.Errorf("Collect = %d, %v; want 0 and an error wrapping referenced's", n, err)
	}
	wantRefs(t, s, a, b)
}

func testCollectKeepsRePut(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }

	// Old, then Put again (a new message with the same attachment) before
	// Collect: it is young again.
	rePut := []byte("an attachment sent again")
	a := put(t, s, rePut)
	age(t, s, a, old)
	put(t, s, rePut)
	if n, err := s.Collect(ctx, none, grace); err != nil || n != 0 {
		t.Fatalf("Collect = %d, %v; want 0, nil", n, err)
	}
	wantRefs(t, s, a)

	// The race: the inserter Puts while Collect runs, after Collect listed
	// the blob as old and while it asks for references (which the inserter
	// has not committed yet). The re-check before deletion must keep it.
	racing := []byte("an attachment sent again, during a collection")
	b := put(t, s, racing)
	age(t, s, a, old)
	age(t, s, b, old)
	inserter := func(ctx context.Context, refs []string) (map[string]bool, error) {
		if !slices.Contains(refs, b) {
			return nil, fmt.Errorf("not asked about %s", b)
		}
		if _, _, err := s.Put(ctx, bytes.NewReader(racing)); err != nil {
			return nil, err
		}
		return nil, nil // the insert has not committed its reference yet
	}
	n, err := s.Collect(ctx, inserter, grace)
	if err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v; want 1 (a), nil", n, err)
	}
	wantRefs(t, s, b)
	if got := read(t, s, b); !bytes.Equal(got, racing) {
		t.Errorf("content differs")
	}

	// Once old again and still unreferenced, it goes.
	age(t, s, b, old)
	if n, err := s.Collect(ctx, none, grace); err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v; want 1, nil", n, err)
	}
	wantRefs(t, s)
}

func testFailingReader(t *testing.T, s blobstore.Store) {
	keep := put(t, s, []byte("already there"))
	partial := pattern(100 << 10)
	for _, r := range []io.Reader{
		io.MultiReader(bytes.NewReader(partial), &funcReader{read: func([]byte) (int, error) { return 0, errBoom }}),
		&funcReader{read: func([]byte) (int, error) { return 0, errBoom }},
	} {
		if _, _, err := s.Put(context.Background(), r); !errors.Is(err, errBoom) {
			t.Errorf("Put = %v, want an error wrapping the reader's", err)
		}
	}
	// A reader failing along with its last bytes.
	r := &funcReader{read: func(p []byte) (int, error) { return copy(p, "last bytes"), errBoom }}
	if _, _, err := s.Put(context.Background(), r); !errors.Is(err, errBoom) {
		t.Errorf("Put = %v, want an error wrapping the reader's", err)
	}
	wantRefs(t, s, keep)
	if _, err := s.Open(context.Background(), sha(partial)); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open(partial content) = %v, want ErrNotFound", err)
	}
}

func testMaxSize(t *testing.T, s blobstore.Store) {
	keep := put(t, s, []byte("small"))
	if _, _, err := s.Put(context.Background(), stream(2, MaxSize+1)); !errors.Is(err, blobstore.ErrTooLarge) {
		t.Errorf("Put of MaxSize+1 bytes = %v, want ErrTooLarge", err)
	}
	// Put must stop reading once over the limit: this reader fails if
	// read to twice the limit.
	errReadOn := errors.New("read on past the maximum size")
	r := io.MultiReader(stream(3, 2*MaxSize), &funcReader{read: func([]byte) (int, error) { return 0, errReadOn }})
	if _, _, err := s.Put(context.Background(), r); !errors.Is(err, blobstore.ErrTooLarge) {
		t.Errorf("Put of 2*MaxSize bytes = %v, want ErrTooLarge", err)
	}
	wantRefs(t, s, keep)
}
