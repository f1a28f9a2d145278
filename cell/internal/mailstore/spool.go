package mailstore

import (
	"context"
	"fmt"
	"time"

	"github.com/yugabyte/pgx/v5"
)

// Spool states.
const (
	SpoolPending int16 = 0
	SpoolDone    int16 = 1
	SpoolFailed  int16 = 2
)

// SpoolEntry is one accepted recipient of an inbound message.
type SpoolEntry struct {
	ID          string
	AccountID   string
	MailFrom    string
	Rcpt        string
	BlobRef     string
	DeliveryKey string
	Attempts    int
}

// Spool commits the entries in one transaction. An entry whose delivery key
// is already spooled (a retry of a delivery accepted before) is skipped:
// the retry is accepted again without a second copy.
func (s *Store) Spool(ctx context.Context, entries []SpoolEntry) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, e := range entries {
			b.Queue(`INSERT INTO spool (id, account_id, mail_from, rcpt, blob_ref, delivery_key)
				VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (delivery_key) DO NOTHING`,
				NewID(), e.AccountID, e.MailFrom, e.Rcpt, e.BlobRef, e.DeliveryKey)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		return nil
	})
}

// ClaimSpool leases up to n due pending entries for lease: they are not
// due again until the lease ends, so a crashed worker's entries are picked
// up again (the sweeper is this same query).
func (s *Store) ClaimSpool(ctx context.Context, n int, lease time.Duration) ([]SpoolEntry, error) {
	var out []SpoolEntry
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		rows, err := tx.Query(ctx, `SELECT id, account_id, mail_from, rcpt, blob_ref, delivery_key, attempts FROM spool
			WHERE state = 0 AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED`, n)
		if err != nil {
			return err
		}
		for rows.Next() {
			var e SpoolEntry
			if err := rows.Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.BlobRef, &e.DeliveryKey, &e.Attempts); err != nil {
				rows.Close()
				return err
			}
			out = append(out, e)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		ids := make([]string, len(out))
		for i, e := range out {
			ids[i] = e.ID
		}
		_, err = tx.Exec(ctx, `UPDATE spool SET next_attempt_at = now() + $2::interval WHERE id = ANY($1::uuid[])`,
			ids, fmt.Sprintf("%d milliseconds", lease.Milliseconds()))
		return err
	})
	return out, err
}

// FinishSpool marks an entry delivered.
func (s *Store) FinishSpool(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool SET state = 1, attempts = attempts + 1 WHERE id = $1`, id)
	return err
}

// RetrySpool records a failed attempt: due again after backoff, or failed
// for good (kept, with its reason) after maxAttempts.
func (s *Store) RetrySpool(ctx context.Context, id, reason string, backoff time.Duration, maxAttempts int) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool SET attempts = attempts + 1, last_error = $2,
		next_attempt_at = now() + $3::interval,
		state = CASE WHEN attempts + 1 >= $4 THEN 2 ELSE 0 END WHERE id = $1`,
		id, reason, fmt.Sprintf("%d milliseconds", backoff.Milliseconds()), maxAttempts)
	return err
}

// SpoolBacklog counts pending entries.
func (s *Store) SpoolBacklog(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM spool WHERE state = 0`).Scan(&n)
	return n, err
}
