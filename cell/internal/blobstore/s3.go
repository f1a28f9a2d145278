package blobstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 defaults and limits.
const (
	// DefaultS3PartSize is the default S3Config.PartSize: S3's smallest
	// part size, and so the least memory a Put can hold.
	DefaultS3PartSize = 5 << 20
	// DefaultS3Retries is the default S3Config.Retries (minio-go's own
	// default).
	DefaultS3Retries = 10
	// maxS3CopySize is the largest object one CopyObject request can copy
	// (S3's limit); larger blobs would need a multipart copy, which S3 does
	// not need to implement because MaxSize may not exceed it.
	maxS3CopySize = 5 << 30
	// s3MinPartSize and s3MaxParts are S3's multipart limits.
	s3MinPartSize = 5 << 20
	s3MaxParts    = 10000
	// s3ReadResumes is how many times a Blob reopens its GET at the
	// current offset after the body failed mid-read.
	s3ReadResumes = 3
	// s3CleanupTimeout bounds the cleanup (abort, delete) after a failed
	// or cancelled Put, which must run even though its ctx is done.
	s3CleanupTimeout = time.Minute
)

// S3Config is where an S3 store keeps its blobs, and how to reach it.
type S3Config struct {
	// Endpoint is the server's host:port (no scheme), e.g.
	// s3.eu-west-1.amazonaws.com or 127.0.0.1:8333.
	Endpoint string
	// TLS selects https (the default in production; the tests' server
	// speaks http).
	TLS bool
	// Region is the bucket's region. Empty: NewS3 asks the server, in a
	// request that minio-go does not retry, so a blip fails NewS3; set it.
	Region string
	// Bucket must exist: NewS3 does not create it.
	Bucket string
	// Prefix is prepended to every key, so that cells can share a bucket
	// (e.g. "cell-a/"). Blobs are at Prefix+"blobs/"+ref, Puts in progress
	// at Prefix+"tmp/".
	Prefix string
	// AccessKey and SecretKey are the static credentials (from the
	// environment, never flags).
	AccessKey string
	SecretKey string
	// MaxSize limits blobs to this many bytes: Put of more fails with
	// ErrTooLarge. 0 means S3's single-copy limit, 5 GiB, which is also
	// the largest allowed.
	MaxSize int64
	// PartSize is how much of a blob a Put holds in memory: a blob up to
	// this size is sent in one request, a larger one as a multipart upload
	// of parts this size. Default DefaultS3PartSize; at least 5 MiB, and
	// large enough for MaxSize in 10,000 parts.
	PartSize int64
	// Retries is how many times a request is tried (minio-go retries with
	// exponential backoff and jitter: 200 ms doubling, capped at 1 s, on
	// network errors, 5xx, 408, 429 and S3's throttling codes). Default
	// DefaultS3Retries; 1 disables retries.
	Retries int
	// Transport is the HTTP transport; nil: minio-go's default.
	Transport http.RoundTripper
}

// Validate checks the configuration and fills in the defaults.
func (c *S3Config) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("S3 endpoint is required"))
	} else if strings.Contains(c.Endpoint, "://") || strings.Contains(c.Endpoint, "/") {
		errs = append(errs, fmt.Errorf("S3 endpoint %q: want host:port, without scheme or path (TLS selects https)", c.Endpoint))
	}
	if c.Bucket == "" {
		errs = append(errs, errors.New("S3 bucket is required"))
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		errs = append(errs, errors.New("S3 access key and secret key are required"))
	}
	if c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/") {
		errs = append(errs, fmt.Errorf("S3 key prefix %q must end in /", c.Prefix))
	}
	if c.MaxSize == 0 {
		c.MaxSize = maxS3CopySize
	}
	if c.MaxSize < 0 || c.MaxSize > maxS3CopySize {
		errs = append(errs, fmt.Errorf("S3 maximum blob size %d: want 1 to %d bytes", c.MaxSize, int64(maxS3CopySize)))
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultS3PartSize
	}
	if c.PartSize < s3MinPartSize {
		errs = append(errs, fmt.Errorf("S3 part size %d: want at least %d bytes", c.PartSize, s3MinPartSize))
	} else if c.MaxSize > c.PartSize*s3MaxParts {
		errs = append(errs, fmt.Errorf("S3 part size %d: too small for %d parts to hold %d bytes", c.PartSize, s3MaxParts, c.MaxSize))
	}
	if c.Retries == 0 {
		c.Retries = DefaultS3Retries
	}
	if c.Retries < 0 {
		errs = append(errs, fmt.Errorf("S3 retries %d: want at least 1", c.Retries))
	}
	return errors.Join(errs...)
}

// S3 is the Store on an S3-compatible object store, through minio-go. A
// blob is the object Prefix+"blobs/"+ref; keys list in ascending order of
// ref, which is Walk's order. S3 keeps no state of its own but locks, so
// any number of S3 values may share a bucket (see Collect for the one
// window that only a single process closes).
//
// Put streams: it never holds more than PartSize bytes of a blob in
// memory, however large the blob. The ref is known only at the end of the
// content, and an S3 object's key must be known when its upload starts, so
// a blob larger than PartSize is uploaded (multipart, one part at a time,
// hashed as it goes) to a temporary key, then copied server-side to its
// ref and the temporary object deleted. A blob that fits in one part, the
// common case for mail, is hashed in memory and sent in one PUT to its ref,
// with its SHA-256 as x-amz-content-sha256 so that the server checks it.
// Spooling to a local temp file instead would need local disk as large as
// the largest blobs in flight, which is what a cell on S3 wants to avoid.
//
// Put always writes the blob's object, even when one exists: S3 has no way
// to set an object's modification time but to write it, so that is how Put
// refreshes it (Collect relies on it); the content is the same, so readers
// see no change. A PUT or a copy replaces an object atomically, so a crash
// leaves either no blob or the complete one; a temporary object or
// multipart upload left by a crash is removed by a later Collect once an
// hour old. Durability is the server's: Put returns once the server has
// acknowledged the write.
//
// Reads are ranged GETs: Open GETs the whole blob, and a Seek makes the
// next Read GET from the new offset. The bucket must not have versioning
// enabled, or every Put of existing content and every Delete would leave a
// noncurrent version behind.
//
// Modification times are the server's (S3's Last-Modified, to the second)
// and Collect compares them with this machine's clock: the two must agree
// to well within Collect's grace.
type S3 struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	blobs    string // Prefix + "blobs/"
	tmp      string // Prefix + "tmp/"
	maxSize  int64
	partSize int64

	// locks serialise Put's write of a ref with Collect's re-check and
	// removal of it.
	locks refLocks
}

// NewS3 connects to the bucket cfg names, checking that it exists.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       cfg.TLS,
		Region:       cfg.Region,
		Transport:    cfg.Transport,
		MaxRetries:   cfg.Retries,
		BucketLookup: minio.BucketLookupAuto,
	})
	if err != nil {
		return nil, fmt.Errorf("blob store: S3 client: %w", err)
	}
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("blob store: S3 bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("blob store: S3 bucket %s at %s does not exist", cfg.Bucket, cfg.Endpoint)
	}
	return &S3{
		client: client, core: minio.Core{Client: client}, bucket: cfg.Bucket,
		blobs: cfg.Prefix + "blobs/", tmp: cfg.Prefix + "tmp/",
		maxSize: cfg.MaxSize, partSize: cfg.PartSize,
	}, nil
}

// key is the object of the blob ref; ref must be valid.
func (s *S3) key(ref string) string { return s.blobs + ref }

// notFound reports whether err is S3's answer for an absent object.
func notFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == minio.NoSuchKey || r.StatusCode == http.StatusNotFound && r.Code != minio.NoSuchBucket
}

// Put implements Store.Put.
func (s *S3) Put(ctx context.Context, r io.Reader) (string, int64, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	in := &putReader{ctx: ctx, r: r, h: sha256.New(), max: s.maxSize}
	first, eof, err := in.part(nil, s.partSize)
	if err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	if eof {
		ref := hex.EncodeToString(in.h.Sum(nil))
		err := s.write(ctx, ref, func(ctx context.Context, key string) error {
			_, err := s.core.PutObject(ctx, s.bucket, key, bytes.NewReader(first), int64(len(first)), "", ref, minio.PutObjectOptions{})
			return err
		})
		if err != nil {
			return "", 0, fmt.Errorf("put blob %s: %w", ref, err)
		}
		return ref, in.n, nil
	}

	tmp, err := s.upload(ctx, in, first)
	if err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	defer func() {
		// Whether or not the copy worked, the temporary object goes, even
		// if ctx is done. If it cannot, the blob is no less stored, and
		// Collect removes the object once it is an hour old.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
		defer cancel()
		_ = s.client.RemoveObject(cctx, s.bucket, tmp, minio.RemoveObjectOptions{})
	}()
	ref := hex.EncodeToString(in.h.Sum(nil))
	err = s.write(ctx, ref, func(ctx context.Context, key string) error {
		_, err := s.client.CopyObject(ctx, minio.CopyDestOptions{Bucket: s.bucket, Object: key},
			minio.CopySrcOptions{Bucket: s.bucket, Object: tmp})
		return err
	})
	if err != nil {
		return "", 0, fmt.Errorf("put blob %s: %w", ref, err)
	}
	return ref, in.n, nil
}

// write writes the blob ref's object with put, under the ref's lock, so
// that Collect cannot delete it between its re-check and its removal with
// this write in between.
func (s *S3) write(ctx context.Context, ref string, put func(ctx context.Context, key string) error) error {
	unlock := s.locks.lock(ref)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	return put(ctx, s.key(ref))
}

// upload sends first, then the rest of in, as a multipart upload to a new
// temporary object, and returns its key. On failure it aborts the upload
// and leaves nothing behind.
func (s *S3) upload(ctx context.Context, in *putReader, first []byte) (_ string, err error) {
	tmp := s.tmp + "put-" + rand.Text() // not the result, which a failure clears before the abort
	id, err := s.core.NewMultipartUpload(ctx, s.bucket, tmp, minio.PutObjectOptions{})
	if err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
			defer cancel()
			if aerr := s.core.AbortMultipartUpload(cctx, s.bucket, tmp, id); aerr != nil {
				err = fmt.Errorf("%w (and aborting the upload: %v)", err, aerr)
			}
		}
	}()
	var parts []minio.CompletePart
	buf, eof := first, false
	for n := 1; ; n++ {
		p, err := s.core.PutObjectPart(ctx, s.bucket, tmp, id, n, bytes.NewReader(buf), int64(len(buf)), minio.PutObjectPartOptions{})
		if err != nil {
			return "", fmt.Errorf("upload part %d: %w", n, err)
		}
		parts = append(parts, minio.CompletePart{PartNumber: n, ETag: p.ETag})
		if eof {
			break
		}
		// The part is sent: its buffer holds the next one.
		if buf, eof, err = in.part(buf[:0], s.partSize); err != nil {
			return "", err
		}
		if len(buf) == 0 { // the content ended on a part boundary
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if _, err := s.core.CompleteMultipartUpload(ctx, s.bucket, tmp, id, parts, minio.PutObjectOptions{}); err != nil {
		return "", fmt.Errorf("complete upload: %w", err)
	}
	return tmp, nil
}

// putReader is Put's view of its content: hashed and counted as read,
// bounded by the maximum size, checking ctx between reads.
type putReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	n   int64
	max int64
}

// part reads up to limit bytes into buf (grown as needed, so that a small
// blob costs a small buffer) and reports whether the content ended.
func (p *putReader) part(buf []byte, limit int64) ([]byte, bool, error) {
	for int64(len(buf)) < limit {
		if err := p.ctx.Err(); err != nil {
			return nil, false, err
		}
		if len(buf) == cap(buf) {
			// Double, from 32 KiB, up to limit.
			grow := int(min(int64(max(cap(buf), 32<<10)), limit-int64(len(buf))))
			buf = slices.Grow(buf, grow)
		}
		n, err := p.r.Read(buf[len(buf):min(int64(cap(buf)), limit)])
		if n > 0 {
			p.n += int64(n)
			if p.n > p.max {
				return nil, false, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, p.max)
			}
			p.h.Write(buf[len(buf) : len(buf)+n])
			buf = buf[:len(buf)+n]
		}
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("read content: %w", err)
		}
	}
	return buf, false, nil
}

// Open implements Store.Open. It GETs the blob; the returned Blob reads
// with ctx, so its reads fail once ctx is done. A read that fails
// mid-body is resumed from where it stopped with a ranged GET, a few
// times, on top of minio-go's retries of each request.
func (s *S3) Open(ctx context.Context, ref string) (Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	if !ValidRef(ref) {
		return nil, fmt.Errorf("open blob: %w", invalidRef(ref))
	}
	body, info, _, err := s.core.GetObject(ctx, s.bucket, s.key(ref), minio.GetObjectOptions{})
	if notFound(err) {
		return nil, fmt.Errorf("open blob: %w: %s", ErrNotFound, ref)
	} else if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", ref, err)
	}
	return &s3Blob{ctx: ctx, s: s, ref: ref, size: info.Size, mod: info.LastModified, body: body}, nil
}

// s3Blob is an open S3 blob: a position, and the body of the GET that
// reads from there (nil until a Read needs one after a Seek).
type s3Blob struct {
	ctx     context.Context
	s       *S3
	ref     string
	size    int64
	mod     time.Time
	off     int64         // the position
	body    io.ReadCloser // reads from bodyOff
	bodyOff int64
	closed  bool
}

func (b *s3Blob) Size() int64        { return b.size }
func (b *s3Blob) ModTime() time.Time { return b.mod }

// get GETs the blob from off to its end.
func (b *s3Blob) get(off int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, 0); err != nil {
		return nil, err
	}
	body, _, _, err := b.s.core.GetObject(b.ctx, b.s.bucket, b.s.key(b.ref), opts)
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", b.ref, err)
	}
	return body, nil
}

func (b *s3Blob) Read(p []byte) (int, error) {
	if b.closed {
		return 0, fmt.Errorf("read blob %s: closed", b.ref)
	}
	if b.off >= b.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	for try := 0; ; try++ {
		if b.body == nil || b.bodyOff != b.off {
			b.drop()
			body, err := b.get(b.off)
			if err != nil {
				return 0, err
			}
			b.body, b.bodyOff = body, b.off
		}
		if rest := b.size - b.off; int64(len(p)) > rest {
			p = p[:rest]
		}
		n, err := b.body.Read(p)
		b.off += int64(n)
		b.bodyOff += int64(n)
		switch {
		case err == nil || err == io.EOF && b.off == b.size:
			return n, nil
		case n > 0:
			return n, nil // the error comes again, or is resumed, next Read
		case b.ctx.Err() != nil:
			return 0, fmt.Errorf("read blob %s: %w", b.ref, b.ctx.Err())
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
		b.drop()
		if try == s3ReadResumes {
			return 0, fmt.Errorf("read blob %s at %d: %w", b.ref, b.off, err)
		}
	}
}

// ReadAt reads with a GET of its own, not moving the position.
func (b *s3Blob) ReadAt(p []byte, off int64) (int, error) {
	if b.closed {
		return 0, fmt.Errorf("read blob %s: closed", b.ref)
	}
	if off < 0 {
		return 0, fmt.Errorf("read blob %s: negative offset %d", b.ref, off)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), b.size-off)
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+want-1); err != nil {
		return 0, err
	}
	body, _, _, err := b.s.core.GetObject(b.ctx, b.s.bucket, b.s.key(b.ref), opts)
	if err != nil {
		return 0, fmt.Errorf("read blob %s: %w", b.ref, err)
	}
	defer body.Close()
	n, err := io.ReadFull(body, p[:want])
	if err != nil {
		return n, fmt.Errorf("read blob %s: %w", b.ref, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Seek moves the position; the next Read GETs from there if it is not
// where the current GET has got to.
func (b *s3Blob) Seek(offset int64, whence int) (int64, error) {
	abs, err := SeekOffset(b.off, b.size, offset, whence)
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", b.ref, err)
	}
	b.off = abs
	return abs, nil
}

func (b *s3Blob) Close() error {
	b.drop()
	b.closed = true
	return nil
}

// drop closes the current GET, if any.
func (b *s3Blob) drop() {
	if b.body != nil {
		b.body.Close()
		b.body = nil
	}
}

// Stat implements Store.Stat.
func (s *S3) Stat(ctx context.Context, ref string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("stat blob: %w", err)
	}
	if !ValidRef(ref) {
		return 0, fmt.Errorf("stat blob: %w", invalidRef(ref))
	}
	info, err := s.client.StatObject(ctx, s.bucket, s.key(ref), minio.StatObjectOptions{})
	if notFound(err) {
		return 0, fmt.Errorf("stat blob: %w: %s", ErrNotFound, ref)
	} else if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", ref, err)
	}
	return info.Size, nil
}

// Delete implements Store.Delete.
func (s *S3) Delete(ctx context.Context, ref string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete blob: %w", err)
	}
	if !ValidRef(ref) {
		return fmt.Errorf("delete blob: %w", invalidRef(ref))
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(ref), minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return fmt.Errorf("delete blob %s: %w", ref, err)
	}
	return nil
}

// Walk implements Store.Walk: one listing of Prefix+"blobs/", a page at a
// time, skipping keys that are not a ref.
func (s *S3) Walk(ctx context.Context, fn func(ref string, size int64, mod time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing when fn stops the walk
	for obj := range s.client.ListObjectsIter(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.blobs, Recursive: true}) {
		if obj.Err != nil {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("walk blobs: %w", err)
			}
			return fmt.Errorf("walk blobs: %w", obj.Err)
		}
		ref, ok := strings.CutPrefix(obj.Key, s.blobs)
		if !ok || !ValidRef(ref) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("walk blobs: %w", err)
		}
		if err := fn(ref, obj.Size, obj.LastModified); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	return nil
}

// staleS3Temp is the age after which Collect removes a temporary object
// or multipart upload: a Put that crashed left it.
const staleS3Temp = time.Hour

// Collect implements Store.Collect, as FS does: candidates gathered during
// the walk, handed to referenced a batch at a time, each re-checked (a
// HEAD) and deleted under the ref's lock, which Put holds around its write.
// That lock closes the refresh/delete window for the Puts of this process
// only: a Put in another process that writes the blob between the re-check
// and the delete loses it. FS has the same window when processes share its
// root. A conditional delete would close it across processes, but S3's
// If-Match compares ETags, and a re-write of the same content keeps its
// ETag.
//
// Collect also removes the temporary objects and aborts the multipart
// uploads that crashed Puts left, once an hour old.
func (s *S3) Collect(ctx context.Context, referenced func(ctx context.Context, refs []string) (map[string]bool, error), grace time.Duration) (int, error) {
	start := time.Now()
	deleted, err := collect(ctx, s.Walk, referenced, s.removeIfOlder, grace)
	if err == nil {
		if terr := s.removeStaleTemps(ctx, start.Add(-staleS3Temp)); terr != nil {
			err = fmt.Errorf("collect blobs: %w", terr)
		}
	}
	return deleted, err
}

// removeIfOlder removes the blob ref if it was last modified before
// cutoff, re-checking under the ref's lock.
func (s *S3) removeIfOlder(ctx context.Context, ref string, cutoff time.Time) (bool, error) {
	unlock := s.locks.lock(ref)
	defer unlock()
	info, err := s.client.StatObject(ctx, s.bucket, s.key(ref), minio.StatObjectOptions{})
	if notFound(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("re-check blob %s: %w", ref, err)
	}
	if !info.LastModified.Before(cutoff) {
		return false, nil // written by a Put since the walk saw it
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(ref), minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return false, fmt.Errorf("remove blob %s: %w", ref, err)
	}
	return true, nil
}

// removeStaleTemps removes the temporary objects last modified, and aborts
// the multipart uploads started, before cutoff.
func (s *S3) removeStaleTemps(ctx context.Context, cutoff time.Time) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjectsIter(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.tmp, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list temporary objects: %w", obj.Err)
		}
		if !obj.LastModified.Before(cutoff) {
			continue
		}
		if err := s.client.RemoveObject(ctx, s.bucket, obj.Key, minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
			return fmt.Errorf("remove temporary object: %w", err)
		}
	}
	for up := range s.client.ListIncompleteUploads(lctx, s.bucket, s.tmp, true) {
		if up.Err != nil {
			return fmt.Errorf("list incomplete uploads: %w", up.Err)
		}
		if !up.Initiated.Before(cutoff) {
			continue
		}
		if err := s.core.AbortMultipartUpload(ctx, s.bucket, up.Key, up.UploadID); err != nil && !notFound(err) {
			return fmt.Errorf("abort incomplete upload: %w", err)
		}
	}
	return nil
}

// refLocks are mutexes by ref, made on demand and dropped when unused.
type refLocks struct {
	mu sync.Mutex
	m  map[string]*refLock
}

type refLock struct {
	mu    sync.Mutex
	users int
}

// lock locks ref and returns the unlock.
func (l *refLocks) lock(ref string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*refLock{}
	}
	e := l.m[ref]
	if e == nil {
		e = &refLock{}
		l.m[ref] = e
	}
	e.users++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.users--; e.users == 0 {
			delete(l.m, ref)
		}
		l.mu.Unlock()
	}
}
