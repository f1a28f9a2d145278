package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// Inline is a second place small blobs are kept: the cell's metadata
// store, where delivery writes a small message in the same transaction as
// its rows (no file, no fsync of its own). Its refs are the same hex
// SHA-256 of the content.
type Inline interface {
	// InlineBlob returns the content kept under ref and when it was last
	// written; found is false when there is none.
	InlineBlob(ctx context.Context, ref string) (data []byte, written time.Time, found bool, err error)
}

// Tiered is the blob store readers use: Store (the files) first, then
// Inline. Put, Delete, Walk and Collect are Store's: blobs are put inline
// only by the metadata store's own transactions, and collected there.
type Tiered struct {
	Store
	Inline Inline
}

// Open implements Store.Open over both tiers.
func (t Tiered) Open(ctx context.Context, ref string) (Blob, error) {
	b, err := t.Store.Open(ctx, ref)
	if !errors.Is(err, ErrNotFound) {
		return b, err
	}
	data, written, found, ierr := t.Inline.InlineBlob(ctx, ref)
	if ierr != nil {
		return nil, fmt.Errorf("open inline blob %s: %w", ref, ierr)
	}
	if !found {
		return nil, err
	}
	return &memBlob{Reader: bytes.NewReader(data), mod: written}, nil
}

// Stat implements Store.Stat over both tiers.
func (t Tiered) Stat(ctx context.Context, ref string) (int64, error) {
	n, err := t.Store.Stat(ctx, ref)
	if !errors.Is(err, ErrNotFound) {
		return n, err
	}
	data, _, found, ierr := t.Inline.InlineBlob(ctx, ref)
	if ierr != nil {
		return 0, fmt.Errorf("stat inline blob %s: %w", ref, ierr)
	}
	if !found {
		return 0, err
	}
	return int64(len(data)), nil
}

// memBlob is an inline blob, read from memory.
type memBlob struct {
	*bytes.Reader
	mod time.Time
}

func (b *memBlob) Close() error       { return nil }
func (b *memBlob) ModTime() time.Time { return b.mod }
