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
	// SpoolQuarantined: not delivered on purpose (a virus), kept with its
	// reason and blob for the operator.
	SpoolQuarantined int16 = 3
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
	// Body is the message itself when it is kept in the row (small
	// messages; BlobRef is then empty).
	Body []byte
	// Relayed: the accepting process publishes the entry to the queue
	// itself, right after the commit, so the row is committed as relayed
	// (enqueued_at now) and the relay does not claim it; if that process
	// dies first, the sweeper relays it once it is stale.
	Relayed bool
}

// Spool commits the entries in one transaction. An entry whose delivery key
// is already spooled (a retry of a delivery accepted before) is skipped:
// the retry is accepted again without a second copy.
// The entries are given their ids.
func (s *Store) Spool(ctx context.Context, entries []SpoolEntry) error {
	for i := range entries {
		entries[i].ID = NewID()
	}
	// One round trip: a batch sent without BEGIN runs in one implicit
	// transaction, committed at its Sync or rolled back whole. A new batch
	// for each attempt: pgx keeps a sent batch's statement descriptions,
	// which another connection would not know.
	err := s.retry(ctx, func() error {
		b := &pgx.Batch{}
		for _, e := range entries {
			b.Queue(`INSERT INTO spool (id, account_id, mail_from, rcpt, blob_ref, delivery_key, body, enqueued_at)
				VALUES ($1,$2,$3,$4,$5,$6,$7, CASE WHEN $8 THEN now() END) ON CONFLICT (delivery_key) DO NOTHING`,
				e.ID, e.AccountID, e.MailFrom, e.Rcpt, e.BlobRef, e.DeliveryKey, e.Body, e.Relayed)
		}
		return s.pool.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// ClaimSpool leases up to n due pending entries for lease: they are not
// due again until the lease ends, so a crashed worker's entries are picked
// up again (the sweeper is this same query).
func (s *Store) ClaimSpool(ctx context.Context, n int, lease time.Duration) ([]SpoolEntry, error) {
	return s.claimSpool(ctx, `next_attempt_at = now() + $2::interval`, `state = 0 AND next_attempt_at <= now()`,
		spoolCols+`, body`, scanSpoolBody, n, interval(lease))
}

// ClaimStale leases up to n pending, due entries that were relayed to the
// queue more than stale ago and are still not delivered: the worker then
// processes them itself, whatever became of their records (a broker that
// lost them, a consumer group that does not move).
func (s *Store) ClaimStale(ctx context.Context, n int, stale, lease time.Duration) ([]SpoolEntry, error) {
	return s.claimSpool(ctx, `next_attempt_at = now() + $2::interval`,
		`state = 0 AND next_attempt_at <= now() AND enqueued_at < now() - $3::interval`,
		spoolCols+`, body`, scanSpoolBody, n, interval(lease), interval(stale))
}

// claimSpool applies set to up to n entries matching where, the longest
// due first, and returns their cols read by scan ($1 is n, then args): one
// statement, its rows locked (concurrent claimers skip them) until it
// commits. The lease of the workers and the relay's claim are this.
func (s *Store) claimSpool(ctx context.Context, set, where, cols string, scan func(pgx.CollectableRow) (SpoolEntry, error),
	n int, args ...any) ([]SpoolEntry, error) {
	rows, err := s.pool.Query(ctx, `UPDATE spool SET `+set+` WHERE id IN (
		SELECT id FROM spool WHERE `+where+` ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING `+cols, append([]any{byIDs, n}, args...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scan)
}

// CloseSpool ends an entry without a delivery of its message (state
// SpoolQuarantined or SpoolFailed), keeping it, with the reason, and its
// message in the blob blobRef. It applies to a pending entry or to one whose notice was just
// delivered in its stead.
func (s *Store) CloseSpool(ctx context.Context, id, blobRef string, state int16, reason string) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool SET state = $2, closed_reason = $3, blob_ref = $4 WHERE id = $1 AND state IN (0, 1)`,
		id, state, reason, blobRef)
	return err
}

// RetrySpool records a failed attempt: due again (and to be relayed again)
// after backoff, or failed for good (kept, with its reason) after
// maxAttempts.
func (s *Store) RetrySpool(ctx context.Context, id, reason string, backoff time.Duration, maxAttempts int) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool SET attempts = attempts + 1, last_error = $2,
		next_attempt_at = now() + $3::interval, enqueued_at = NULL,
		state = CASE WHEN attempts + 1 >= $4 THEN 2 ELSE 0 END WHERE id = $1 AND state = 0`,
		id, reason, interval(backoff), maxAttempts)
	return err
}

// ClaimForQueue picks up to n pending, due entries that were never relayed
// to the queue or were relayed longer than stale ago without being
// processed (the sweeper's case: a lost record, a dead worker), and marks
// them relayed now. Concurrent relays claim disjoint rows.
func (s *Store) ClaimForQueue(ctx context.Context, n int, stale time.Duration) ([]SpoolEntry, error) {
	return s.claimSpool(ctx, `enqueued_at = now()`,
		`state = 0 AND next_attempt_at <= now() AND (enqueued_at IS NULL OR enqueued_at < now() - $2::interval)`,
		spoolCols, scanSpool, n, interval(stale))
}

// UnclaimForQueue makes entries due for the relay again at once (the
// queue refused them).
func (s *Store) UnclaimForQueue(ctx context.Context, ids []string) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool SET enqueued_at = NULL WHERE id = ANY($1::uuid[]) AND state = 0`, byIDs, ids)
	return err
}

// byIDs is how the statements that pick spool rows by a list of ids (or a
// subquery of them) are sent: as an unnamed statement, so planned for each
// execution with the values in hand (its description cached, so still one
// round trip and binary results). A cached generic plan made while a new
// cell's spool was empty (a sequential scan) stayed in its connection and
// read the whole spool each time, 0.7 ms a call after 25,000 messages
// (pg_stat_statements, BenchmarkInboundSMTP).
const byIDs = pgx.QueryExecModeCacheDescribe

// PendingSpool returns those of the entries that are still pending (a
// record for an entry already delivered is a duplicate and is skipped).
func (s *Store) PendingSpool(ctx context.Context, ids []string) ([]SpoolEntry, error) {
	valid := ids[:0:0]
	for _, id := range ids {
		if validID(id) {
			valid = append(valid, id)
		}
	}
	// By id alone, the state tested here: with "AND state = 0" a plan may
	// read spool_due, every pending entry (see migration 0008).
	rows, err := s.pool.Query(ctx, `SELECT `+spoolCols+`, body, state FROM spool WHERE id = ANY($1::uuid[])`, byIDs, valid)
	if err != nil {
		return nil, err
	}
	var out []SpoolEntry
	for rows.Next() {
		var e SpoolEntry
		var state int16
		if err := rows.Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.BlobRef, &e.DeliveryKey, &e.Attempts, &e.Body, &state); err != nil {
			rows.Close()
			return nil, err
		}
		if state == SpoolPending {
			out = append(out, e)
		}
	}
	return out, rows.Err()
}

// PurgeSpool deletes delivered entries older than keep. Until then a
// sender's retry of a delivered message is still recognised by its key;
// failed and quarantined entries stay until an operator acts on them.
func (s *Store) PurgeSpool(ctx context.Context, keep time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM spool WHERE state = 1 AND created_at < now() - $1::interval`,
		fmt.Sprintf("%d seconds", int64(keep.Seconds())))
	if err != nil {
		return 0, fmt.Errorf("purge spool: %w", err)
	}
	return tag.RowsAffected(), nil
}

// SpoolBacklog counts pending entries.
func (s *Store) SpoolBacklog(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM spool WHERE state = 0`).Scan(&n)
	return n, err
}

const spoolCols = `id, account_id, mail_from, rcpt, blob_ref, delivery_key, attempts`

func scanSpool(row pgx.CollectableRow) (SpoolEntry, error) {
	var e SpoolEntry
	err := row.Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.BlobRef, &e.DeliveryKey, &e.Attempts)
	return e, err
}

func scanSpoolBody(row pgx.CollectableRow) (SpoolEntry, error) {
	var e SpoolEntry
	err := row.Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.BlobRef, &e.DeliveryKey, &e.Attempts, &e.Body)
	return e, err
}
