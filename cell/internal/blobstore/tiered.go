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
	data, written, err := t.inline(ctx, ref, err)
	if err != nil {
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
	data, _, err := t.inline(ctx, ref, err)
	if err != nil {
		return 0, err
	}
	return int64(len(data)), nil
}

// inline reads ref from the inline tier, the files having answered
// notFound: that error again when the inline tier has no such blob either.
func (t Tiered) inline(ctx context.Context, ref string, notFound error) ([]byte, time.Time, error) {
	data, written, found, err := t.Inline.InlineBlob(ctx, ref)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("inline blob %s: %w", ref, err)
	}
	if !found {
		return nil, time.Time{}, notFound
	}
	return data, written, nil
}

// memBlob is an inline blob, read from memory.
type memBlob struct {
	*bytes.Reader
	mod time.Time
}

func (b *memBlob) Close() error       { return nil }
func (b *memBlob) ModTime() time.Time { return b.mod }
