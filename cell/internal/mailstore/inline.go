package mailstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/yugabyte/pgx/v5"
)

// InlineBlob returns a small blob kept in the metadata store with the
// message that refers to it (migration 0007; blobstore.Tiered reads
// through it). A malformed ref is simply not found.
func (s *Store) InlineBlob(ctx context.Context, ref string) ([]byte, time.Time, bool, error) {
	var data []byte
	var written time.Time
	err := s.pool.QueryRow(ctx, `SELECT data, created_at FROM inline_blobs WHERE ref = $1`, ref).Scan(&data, &written)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, time.Time{}, false, nil
	}
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("inline blob: %w", err)
	}
	return data, written, true, nil
}

// CollectInline deletes inline blobs that no message or attachment refers
// to and that were last written more than grace ago, a thousand per
// statement, and returns how many. It cannot race with a delivery: a
// delivery writes (or refreshes) the blob in the transaction that commits
// its reference, so the row is either referenced in the statement's
// snapshot, or locked by the delivery (the DELETE then waits, and its
// re-check of created_at on the refreshed row keeps it), or deleted first
// (the delivery's insert then writes it anew). A copy to another mailbox
// locks its source messages, whose reference outlives the copy's commit.
func (s *Store) CollectInline(ctx context.Context, grace time.Duration) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM inline_blobs WHERE created_at < now() - $1::interval AND ref IN (
			SELECT b.ref FROM inline_blobs b WHERE b.created_at < now() - $1::interval
			AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_ref = b.ref)
			AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.blob_ref = b.ref)
			LIMIT 1000)`, interval(grace))
		if err != nil {
			return total, fmt.Errorf("collect inline blobs: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 1000 {
			return total, nil
		}
	}
}
