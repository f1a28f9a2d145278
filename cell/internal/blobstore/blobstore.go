// Package blobstore keeps a cell's message bodies and attachments as
// immutable, content-addressed blobs: a blob's ref is the lowercase hex
// SHA-256 of its content, so the same content is stored once per cell
// however many messages refer to it.
//
// The contract is the Store interface, documented method by method; every
// implementation must pass the conformance suite in
// blobstore/blobstoretest. FS is the filesystem implementation, S3 the one
// on an S3-compatible object store (tested against SeaweedFS, which
// blobstore/s3test starts); a cell uses one of them. Tiered is
// what readers use: the files, then the small blobs that delivery keeps in
// the metadata store with the message's rows (same refs; see Inline).
//
// Blobs are never reference-counted. References live in the metadata store
// and unreferenced blobs are garbage-collected by Collect, which is safe
// against concurrent inserts because of one rule every inserter follows:
// Put the content before committing a reference to it, and commit within the
// grace period given to Collect (see Store.Collect).
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Sentinels. Errors returned by a Store wrap them, with the ref or the limit
// as detail.
var (
	// ErrNotFound: no blob has this ref.
	ErrNotFound = errors.New("blob not found")
	// ErrInvalidRef: the ref is not 64 lowercase hex digits.
	ErrInvalidRef = errors.New("invalid blob ref")
	// ErrTooLarge: the content is larger than the store's maximum size.
	ErrTooLarge = errors.New("blob too large")
)

// Blob is an open blob. It can be read, and seeked in, so that
// http.ServeContent can serve ranges of it. Its content never changes.
type Blob interface {
	io.ReadSeekCloser
	// Size is the blob's length in bytes.
	Size() int64
	// ModTime is the blob's modification time when it was opened: the
	// last time the content was Put (see Store.Put).
	ModTime() time.Time
}

// Store is the contract of a blob store, documented method by method, and
// checked by blobstoretest.Run against every implementation. Consumers
// should not take a Store: each declares the small interface it uses
// (delivery needs only Put and Open).
//
// All methods are safe for concurrent use. Every method returns ctx's error
// (wrapped) if ctx is done before it starts, and long-running ones (Put,
// Walk, Collect) also check ctx as they go. Every method taking a ref
// validates it first and returns an error wrapping ErrInvalidRef if it is
// not 64 lowercase hex digits, without touching the backing storage: a ref
// may come from a client, and must not be able to name anything but a blob.
type Store interface {
	// Put stores the content read from r until io.EOF and returns its ref,
	// the lowercase hex SHA-256 of the content, and its size. The empty
	// content is a blob like any other.
	//
	// When Put returns nil the blob is durable: it survives a crash of the
	// process or of the machine. A crash during Put leaves either no blob
	// or the complete one, never a partial blob under a ref.
	//
	// If a blob with the same content already exists, Put stores nothing
	// new, but it refreshes the blob's modification time to now; Collect
	// relies on this (see Collect). Concurrent Puts of the same content are
	// safe and all return the same ref.
	//
	// If reading r fails, or ctx is done while reading, Put returns an
	// error wrapping that error and leaves nothing behind. If the store has
	// a maximum size and r yields more bytes than that, Put stops reading,
	// returns an error wrapping ErrTooLarge and leaves nothing behind.
	Put(ctx context.Context, r io.Reader) (ref string, size int64, err error)

	// Open opens the blob with this ref for reading. The caller must Close
	// it. Returns an error wrapping ErrNotFound if there is no such blob,
	// ErrInvalidRef if ref is malformed. Content is not re-hashed on
	// read: the ref was computed when it was written.
	//
	// A blob deleted while open may or may not remain readable through the
	// open Blob (it does on FS; it need not on S3).
	Open(ctx context.Context, ref string) (Blob, error)

	// Stat returns the size of the blob with this ref. Returns an error
	// wrapping ErrNotFound if there is no such blob, ErrInvalidRef if ref
	// is malformed.
	Stat(ctx context.Context, ref string) (size int64, err error)

	// Delete removes the blob with this ref. Deleting an absent blob is
	// not an error (it returns nil). Returns an error wrapping
	// ErrInvalidRef if ref is malformed.
	//
	// Delete is unconditional: it does not protect a concurrent inserter
	// of the same content, so it is only for callers that know no
	// reference exists or can appear (tests, an operator's repair).
	// Garbage collection goes through Collect. Deletion need not be
	// durable: after a crash a deleted blob may be back, to be collected
	// again.
	Delete(ctx context.Context, ref string) error

	// Walk calls fn for every blob, in ascending order of ref, with its
	// size and modification time. If fn returns an error, Walk stops and
	// returns that error as is. Blobs put or deleted during the walk may or
	// may not be seen; a blob is never seen twice. Anything in the backing
	// storage that is not a complete blob under its ref (temporary files,
	// strangers) is not seen.
	Walk(ctx context.Context, fn func(ref string, size int64, mod time.Time) error) error

	// Collect deletes the blobs that are unreferenced and older than grace,
	// and returns how many it deleted. "Older than grace" means a
	// modification time before S - grace, S being when Collect started.
	// Collect walks the store, and for the blobs older than grace asks
	// referenced, in batches of at most 1000 refs, which of them are still
	// referenced: referenced returns a map in which the referenced refs are
	// true (absent or false means unreferenced), and must reflect every
	// reference committed before it was called. Each unreferenced
	// candidate is then deleted only if, checked again right before its
	// deletion, it is still older than grace. If referenced fails, Collect
	// stops and returns the count so far and an error wrapping
	// referenced's. A negative grace is an error; a grace of zero is only
	// safe when nothing inserts concurrently.
	//
	// Why this does not race with a concurrent insert of the same content.
	// Every inserter follows one rule: it Puts the content before it
	// commits its reference, and commits less than grace after it called
	// Put. Put refreshes the modification time (or writes the blob), so
	// while an insert is in flight the blob's modification time is less
	// than grace old. Say Collect starts at S, asks referenced at Q > S,
	// re-checks the blob at C > Q and deletes it at D > C, and an inserter
	// commits a reference to it at R:
	//   - R < Q: referenced answers true; the blob is kept.
	//   - R > Q and the refresh happened before C: the refresh is later
	//     than R - grace > S - grace, so the re-check sees a blob younger
	//     than grace and keeps it.
	//   - the refresh happens after D: the blob is gone, so Put writes it
	//     anew (a refresh of an absent blob is a write).
	//   - the refresh happens between C and D. This is the one window left
	//     by check-then-delete, microseconds wide, and grace cannot close
	//     it: the refresh is fresh, but the check is already done. An
	//     implementation must close it itself: FS holds a lock on the ref
	//     across the re-check and the deletion, and Put takes it around the
	//     refresh; a store shared between processes needs a conditional
	//     delete (on the version that was checked) instead.
	// Grace is what makes the slow part safe: the batch answers of
	// referenced may be long stale by the time a blob is deleted.
	//
	// The rule binds every new reference, including one copied from an
	// existing reference without the content (a message copied to another
	// mailbox): the copier must Put the content again before committing,
	// or know that the source reference outlives its commit.
	Collect(ctx context.Context, referenced func(ctx context.Context, refs []string) (map[string]bool, error), grace time.Duration) (deleted int, err error)
}

// RefLen is the length of a ref: 64 hex digits of a SHA-256.
const RefLen = 64

// ValidRef reports whether ref is well formed: 64 lowercase hex digits. It
// says nothing of whether the blob exists.
func ValidRef(ref string) bool {
	if len(ref) != RefLen {
		return false
	}
	for i := 0; i < len(ref); i++ {
		c := ref[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// invalidRef is the error for a malformed ref, quoting at most a prefix of
// it (it may come from a client and be large).
func invalidRef(ref string) error {
	const max = 80
	if len(ref) > max {
		return fmt.Errorf("%w: %q... (%d bytes)", ErrInvalidRef, ref[:max], len(ref))
	}
	return fmt.Errorf("%w: %q", ErrInvalidRef, ref)
}

// Interface compliance.
var (
	_ Store = (*FS)(nil)
	_ Store = (*S3)(nil)
)
