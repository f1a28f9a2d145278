package blobstore_test

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
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/blobstore/blobstoretest"
	"github.com/cellmail/cellmail/cell/internal/blobstore/s3test"
)

// s3Store is an S3 store under a prefix of its own in a bucket of the
// test's weed server, with the server's Age as blobstoretest's Ager.
type s3Store struct {
	*blobstore.S3
	srv    *s3test.Server
	bucket string
	prefix string
}

func (s s3Store) Age(ref string, d time.Duration) error {
	return s.srv.Age(context.Background(), s.bucket, s.prefix+"blobs/"+ref, d)
}

var prefixes atomic.Int64

func s3Config(srv *s3test.Server, bucket, prefix string) blobstore.S3Config {
	return blobstore.S3Config{Endpoint: srv.Endpoint, Region: "us-east-1", Bucket: bucket, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, MaxSize: blobstoretest.MaxSize}
}

func newS3(t testing.TB, srv *s3test.Server, bucket string, mod ...func(*blobstore.S3Config)) s3Store {
	t.Helper()
	prefix := fmt.Sprintf("s%d/", prefixes.Add(1))
	cfg := s3Config(srv, bucket, prefix)
	for _, m := range mod {
		m(&cfg)
	}
	s, err := blobstore.NewS3(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	return s3Store{S3: s, srv: srv, bucket: bucket, prefix: prefix}
}

// keys lists the keys under prefix.
func keys(t testing.TB, srv *s3test.Server, bucket, prefix string) []string {
	t.Helper()
	var out []string
	for obj := range srv.Client.ListObjectsIter(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list %s: %v", prefix, obj.Err)
		}
		out = append(out, obj.Key)
	}
	return out
}

// uploads lists the incomplete multipart uploads under prefix.
func uploads(t testing.TB, srv *s3test.Server, bucket, prefix string) []string {
	t.Helper()
	var out []string
	for up := range srv.Client.ListIncompleteUploads(context.Background(), bucket, prefix, true) {
		if up.Err != nil {
			t.Fatalf("list uploads %s: %v", prefix, up.Err)
		}
		out = append(out, up.Key)
	}
	return out
}

// noLeftovers fails t if anything but blobs is under the store's prefix.
func noLeftovers(t testing.TB, s s3Store) {
	t.Helper()
	for _, k := range keys(t, s.srv, s.bucket, s.prefix+"tmp/") {
		t.Errorf("temporary object left behind: %s", k)
	}
	for _, k := range uploads(t, s.srv, s.bucket, s.prefix) {
		t.Errorf("incomplete upload left behind: %s", k)
	}
}

// TestS3 runs the conformance suite and the S3-specific tests against one
// weed server, each subtest under a prefix of its own in one bucket.
func TestS3(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)

	t.Run("Conformance", func(t *testing.T) {
		blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
			s := newS3(t, srv, bucket)
			// Whatever a subtest did, no temporary object or upload may
			// be left behind.
			t.Cleanup(func() { noLeftovers(t, s) })
			return s
		})
	})
	t.Run("Layout", func(t *testing.T) { testS3Layout(t, srv, bucket) })
	t.Run("Prefixes", func(t *testing.T) { testS3Prefixes(t, srv, bucket) })
	t.Run("StaleTemps", func(t *testing.T) { testS3StaleTemps(t, srv, bucket) })
	t.Run("StreamsLargeBlobs", func(t *testing.T) { testS3Streams(t, srv, bucket) })
	t.Run("Retries", func(t *testing.T) { testS3Retries(t, srv, bucket) })
	t.Run("MissingBucket", func(t *testing.T) {
		_, err := blobstore.NewS3(context.Background(), s3Config(srv, "no-such-bucket", ""))
		if err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("NewS3(missing bucket) = %v, want an error saying it does not exist", err)
		}
	})
	t.Run("BadCredentials", func(t *testing.T) {
		cfg := s3Config(srv, bucket, "")
		cfg.SecretKey = "wrong"
		cfg.Retries = 1
		if _, err := blobstore.NewS3(context.Background(), cfg); err == nil {
			t.Errorf("NewS3 with a wrong secret key succeeded")
		}
	})
}

// Blobs are at prefix/blobs/<ref>; Walk sees only those, and Open only
// finds a blob there.
func testS3Layout(t *testing.T, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	s := newS3(t, srv, bucket)
	ref, _, err := s.Put(ctx, strings.NewReader("where am I"))
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(t, srv, bucket, s.prefix); !slices.Equal(got, []string{s.prefix + "blobs/" + ref}) {
		t.Fatalf("keys = %v, want only %sblobs/%s", got, s.prefix, ref)
	}
	other := sha([]byte("elsewhere"))
	for _, k := range []string{
		s.prefix + "blobs/notes.txt",
		s.prefix + "blobs/" + strings.ToUpper(other),
		s.prefix + "blobs/" + ref + "/x",
		s.prefix + "blobs/" + ref[:2] + "/" + other,
		s.prefix + "elsewhere/" + other,
		s.prefix + other,
	} {
		if _, err := srv.Client.PutObject(ctx, bucket, k, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	err = s.Walk(ctx, func(r string, _ int64, _ time.Time) error {
		seen = append(seen, r)
		return nil
	})
	if err != nil || !slices.Equal(seen, []string{ref}) {
		t.Errorf("Walk = %v, %v; want only %s", seen, err, ref)
	}
	if _, err := s.Open(ctx, other); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open(an object in the wrong place) = %v, want ErrNotFound", err)
	}
}

// Stores under different prefixes of one bucket (cells sharing it) do not
// see or collect each other's blobs.
func testS3Prefixes(t *testing.T, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	a, b := newS3(t, srv, bucket), newS3(t, srv, bucket)
	refA, _, err := a.Put(ctx, strings.NewReader("cell a's"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, refA); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("b.Stat(a's blob) = %v, want ErrNotFound", err)
	}
	if err := a.Age(refA, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }
	if n, err := b.Collect(ctx, none, time.Minute); err != nil || n != 0 {
		t.Errorf("b.Collect = %d, %v; want 0, nil", n, err)
	}
	if _, err := a.Stat(ctx, refA); err != nil {
		t.Errorf("a's blob gone after b's Collect: %v", err)
	}
}

// A crash during a Put can leave a temporary object or an incomplete
// upload: Collect removes them once an hour old, and keeps younger ones
// (Puts in progress).
func testS3StaleTemps(t *testing.T, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	s := newS3(t, srv, bucket)
	stale, young := s.prefix+"tmp/put-stale", s.prefix+"tmp/put-young"
	for _, k := range []string{stale, young} {
		if _, err := srv.Client.PutObject(ctx, bucket, k, strings.NewReader("partial"), 7, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Age(ctx, bucket, stale, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: srv.Client}
	id, err := core.NewMultipartUpload(ctx, bucket, s.prefix+"tmp/put-uploading", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }
	if n, err := s.Collect(ctx, none, time.Minute); err != nil || n != 0 {
		t.Fatalf("Collect = %d, %v; want 0, nil", n, err)
	}
	if got := keys(t, srv, bucket, s.prefix+"tmp/"); !slices.Equal(got, []string{young}) {
		t.Errorf("temporary objects after Collect = %v, want only %s", got, young)
	}
	if got := uploads(t, srv, bucket, s.prefix); len(got) != 1 {
		t.Errorf("uploads after Collect = %v, want the young one", got)
	}
	if err := core.AbortMultipartUpload(ctx, bucket, s.prefix+"tmp/put-uploading", id); err != nil {
		t.Fatal(err)
	}
}

// A blob many times the part size goes through in parts, holding about
// one part in memory, and reads back whole and by ranges.
func testS3Streams(t *testing.T, srv *s3test.Server, bucket string) {
	const size = 48 << 20
	ctx := context.Background()
	s := newS3(t, srv, bucket, func(c *blobstore.S3Config) { c.MaxSize = 64 << 20 })
	h := sha256.New()
	content := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), h)

	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	wg.Go(func() {
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	ref, n, err := s.Put(ctx, content)
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); ref != want || n != size {
		t.Fatalf("Put = %s, %d; want %s, %d", ref, n, want, size)
	}
	// Held: a 5 MiB part, and what minio-go and net/http buffer around
	// it; never the 48 MiB.
	if grew := int64(peak.Load()) - int64(base.HeapInuse); grew > 24<<20 {
		t.Errorf("heap grew by %d MiB during a Put of %d MiB: not streamed", grew>>20, size>>20)
	}
	noLeftovers(t, s)

	b, err := s.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h.Reset()
	if n, err := io.Copy(h, b); err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != ref {
		t.Fatalf("read back %d bytes, %v; content differs: %v", n, err, hex.EncodeToString(h.Sum(nil)) != ref)
	}
	// ReadAt at a part boundary, not moving the position.
	ra, ok := b.(io.ReaderAt)
	if !ok {
		t.Fatalf("%T is no io.ReaderAt", b)
	}
	got := make([]byte, 1000)
	if _, err := ra.ReadAt(got, 5<<20-500); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	all := make([]byte, 5<<20+500)
	if _, err := io.ReadFull(io.LimitReader(rand.NewChaCha8([32]byte{9}), int64(len(all))), all); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, all[5<<20-500:]) {
		t.Errorf("ReadAt across the first part boundary differs")
	}
}

// flaky is a transport between the store and the real server that fails
// some requests before sending them, answers some with 503 without
// sending them, and cuts GET bodies at half their length: the store must get
// through on retries (minio-go's, and Blob's resumed reads).
type flaky struct {
	next  http.RoundTripper
	n     atomic.Int64
	fails atomic.Int64
}

var errFlaky = errors.New("flaky network")

func (f *flaky) RoundTrip(req *http.Request) (*http.Response, error) {
	switch f.n.Add(1) % 3 {
	case 0:
		f.fails.Add(1)
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, errFlaky
	case 1:
		f.fails.Add(1)
		if req.Body != nil {
			req.Body.Close()
		}
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
			Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req, ProtoMajor: 1, ProtoMinor: 1}, nil
	}
	resp, err := f.next.RoundTrip(req)
	if err == nil && req.Method == http.MethodGet && resp.StatusCode/100 == 2 && resp.ContentLength > 2000 {
		f.fails.Add(1)
		resp.Body = &cutBody{ReadCloser: resp.Body, left: int(resp.ContentLength / 2)}
	}
	return resp, err
}

type cutBody struct {
	io.ReadCloser
	left int
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= n
	return n, err
}

func testS3Retries(t *testing.T, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	tr := &flaky{next: http.DefaultTransport}
	s := newS3(t, srv, bucket, func(c *blobstore.S3Config) { c.Transport = tr })
	small := bytes.Repeat([]byte("retried "), 1000)
	large := pattern(6 << 20) // two parts
	for _, content := range [][]byte{small, large} {
		ref, _, err := s.Put(ctx, bytes.NewReader(content))
		if err != nil {
			t.Fatalf("Put through a flaky network: %v", err)
		}
		b, err := s.Open(ctx, ref)
		if err != nil {
			t.Fatalf("Open through a flaky network: %v", err)
		}
		got, err := io.ReadAll(b)
		b.Close()
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("read through a flaky network: %v, content differs: %v", err, !bytes.Equal(got, content))
		}
	}
	if tr.fails.Load() < 5 {
		t.Errorf("only %d failures injected", tr.fails.Load())
	}
	noLeftovers(t, s)
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}

// S3Config.Validate: what a cell's flags can get wrong.
func TestS3ConfigValidate(t *testing.T) {
	ok := blobstore.S3Config{Endpoint: "127.0.0.1:8333", Bucket: "b", AccessKey: "k", SecretKey: "s"}
	for _, tt := range []struct {
		name string
		mod  func(*blobstore.S3Config)
		want string // "" for valid
	}{
		{"minimal", func(*blobstore.S3Config) {}, ""},
		{"prefix", func(c *blobstore.S3Config) { c.Prefix = "cell-a/" }, ""},
		{"no endpoint", func(c *blobstore.S3Config) { c.Endpoint = "" }, "endpoint is required"},
		{"scheme", func(c *blobstore.S3Config) { c.Endpoint = "https://s3.example.org" }, "without scheme"},
		{"no bucket", func(c *blobstore.S3Config) { c.Bucket = "" }, "bucket is required"},
		{"no secret", func(c *blobstore.S3Config) { c.SecretKey = "" }, "secret key are required"},
		{"prefix without slash", func(c *blobstore.S3Config) { c.Prefix = "cell-a" }, "must end in /"},
		{"part too small", func(c *blobstore.S3Config) { c.PartSize = 1 << 20 }, "part size"},
		{"max too large", func(c *blobstore.S3Config) { c.MaxSize = 6 << 30 }, "maximum blob size"},
		{"largest max", func(c *blobstore.S3Config) { c.MaxSize = 5 << 30 }, ""},
		{"negative retries", func(c *blobstore.S3Config) { c.Retries = -1 }, "retries"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tt.want)
			}
			if err == nil && (c.PartSize == 0 || c.Retries == 0 || c.MaxSize == 0) {
				t.Errorf("Validate left defaults unset: %+v", c)
			}
		})
	}
}
