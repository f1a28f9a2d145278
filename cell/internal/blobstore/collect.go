package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// collect is Store.Collect over any store: it walks the blobs, asks
// referenced about those older than grace, collectBatch at a time, and
// removes the unreferenced ones with remove, which re-checks the age under
// the store's own lock (a Put that refreshed the blob meanwhile keeps it).
func collect(ctx context.Context, walk func(ctx context.Context, fn func(ref string, size int64, mod time.Time) error) error,
	referenced func(ctx context.Context, refs []string) (map[string]bool, error),
	remove func(ctx context.Context, ref string, cutoff time.Time) (bool, error), grace time.Duration) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("collect blobs: %w", err)
	}
	if grace < 0 {
		return 0, fmt.Errorf("collect blobs: negative grace %v", grace)
	}
	if referenced == nil {
		return 0, errors.New("collect blobs: nil referenced")
	}
	cutoff := time.Now().Add(-grace)
	deleted := 0
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		refs := batch
		batch = nil // referenced may keep refs: never reuse it
		keep, err := referenced(ctx, refs)
		if err != nil {
			return fmt.Errorf("collect blobs: ask references: %w", err)
		}
		for _, ref := range refs {
			if keep[ref] {
				continue
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("collect blobs: %w", err)
			}
			ok, err := remove(ctx, ref, cutoff)
			if err != nil {
				return fmt.Errorf("collect blobs: %w", err)
			}
			if ok {
				deleted++
			}
		}
		return nil
	}
	err := walk(ctx, func(ref string, _ int64, mod time.Time) error {
		if !mod.Before(cutoff) {
			return nil
		}
		batch = append(batch, ref)
		if len(batch) == collectBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return deleted, err
}

// SeekOffset is the position io.Seeker.Seek(offset, whence) moves to from
// cur in content of size bytes, or an error for a bad whence or a
// negative position: the arithmetic every seekable blob shares.
func SeekOffset(cur, size, offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = cur + offset
	case io.SeekEnd:
		abs = size + offset
	default:
		return 0, fmt.Errorf("seek: invalid whence %d", whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek: negative position %d", abs)
	}
	return abs, nil
}
