package mailstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/yugabyte/pgx/v5"
)

// Outbound states.
const (
	OutboundPending   int16 = 0
	OutboundDelivered int16 = 1
	OutboundBounced   int16 = 2
)

// OutboundEntry is one remote recipient of a sent message.
type OutboundEntry struct {
	ID        string
	AccountID string
	MailFrom  string
	Rcpt      string
	Domain    string
	Body      []byte
	Attempts  int
	Created   time.Time
	Expires   time.Time
	LastError string
}

// OutboundHeld: kept out of delivery for an operator's decision (likely
// spam from one of our accounts); released (pending again) or dropped.
const OutboundHeld int16 = 4

// EnqueueOutbound commits one row per recipient, all due now; with a held
// reason, held for an operator instead (OutboundHeld, the reason as its
// last error).
func (s *Store) EnqueueOutbound(ctx context.Context, accountID, mailFrom string, rcpts []string, body []byte, expires time.Duration, held string) error {
	state := OutboundPending
	if held != "" {
		state = OutboundHeld
	}
	return s.tx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, rc := range rcpts {
			domain := strings.ToLower(rc[strings.LastIndexByte(rc, '@')+1:])
			b.Queue(`INSERT INTO outbound (id, account_id, mail_from, rcpt, domain, body, expires_at, state, last_error)
				VALUES ($1,$2,$3,$4,$5,$6, now() + $7::interval, $8, $9)`, NewID(), accountID, mailFrom, rc, domain, body,
				fmt.Sprintf("%d seconds", int64(expires.Seconds())), state, held)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("enqueue outbound: %w", err)
		}
		return nil
	})
}

const outboundCols = `id, account_id, mail_from, rcpt, domain, body, attempts, created_at, expires_at, last_error`

func scanOutbound(row pgx.CollectableRow) (OutboundEntry, error) {
	var e OutboundEntry
	err := row.Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.Domain, &e.Body, &e.Attempts, &e.Created, &e.Expires, &e.LastError)
	return e, err
}

// ClaimOutbound leases up to n due pending entries for lease (a crashed
// sender's entries are due again when it ends).
func (s *Store) ClaimOutbound(ctx context.Context, n int, lease time.Duration) ([]OutboundEntry, error) {
	var out []OutboundEntry
	err := s.tx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+outboundCols+` FROM outbound
			WHERE state = 0 AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED`, n)
		if err != nil {
			return err
		}
		if out, err = pgx.CollectRows(rows, scanOutbound); err != nil {
			return err
		}
		ids := make([]string, len(out))
		for i, e := range out {
			ids[i] = e.ID
		}
		_, err = tx.Exec(ctx, `UPDATE outbound SET next_attempt_at = now() + $2::interval WHERE id = ANY($1::uuid[])`,
			ids, interval(lease))
		return err
	})
	return out, err
}

// FinishOutbound records the end of an entry: delivered or bounced.
func (s *Store) FinishOutbound(ctx context.Context, id string, state int16, detail string) error {
	_, err := s.pool.Exec(ctx, `UPDATE outbound SET state = $2, last_error = $3, attempts = attempts + 1, body = NULL
		WHERE id = $1 AND state = 0`, id, state, detail)
	return err
}

// RetryOutbound records a temporary failure; the entry is due after wait.
func (s *Store) RetryOutbound(ctx context.Context, id, reason string, wait time.Duration) error {
	_, err := s.pool.Exec(ctx, `UPDATE outbound SET attempts = attempts + 1, last_error = $2,
		next_attempt_at = now() + $3::interval WHERE id = $1 AND state = 0`,
		id, reason, interval(wait))
	return err
}

// OutboundByID returns one entry (any state), for checks and tools.
func (s *Store) OutboundByID(ctx context.Context, id string) (OutboundEntry, int16, time.Time, error) {
	var e OutboundEntry
	var state int16
	var next time.Time
	err := s.pool.QueryRow(ctx, `SELECT `+outboundCols+`, state, next_attempt_at FROM outbound WHERE id = $1`, id).
		Scan(&e.ID, &e.AccountID, &e.MailFrom, &e.Rcpt, &e.Domain, &e.Body, &e.Attempts, &e.Created, &e.Expires, &e.LastError, &state, &next)
	return e, state, next, err
}

// OutboundIDs lists the account's entries, oldest first.
func (s *Store) OutboundIDs(ctx context.Context, accountID string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text FROM outbound WHERE account_id = $1 ORDER BY created_at, rcpt`, accountID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// DKIMKey returns the domain's key, making it with create when there is
// none (concurrent callers agree on the first one stored).
func (s *Store) DKIMKey(ctx context.Context, domain string, create func() (selector string, pkcs8 []byte, err error)) (string, []byte, error) {
	var sel string
	var key []byte
	err := s.pool.QueryRow(ctx, `SELECT selector, private_key FROM dkim_keys WHERE domain = $1`, domain).Scan(&sel, &key)
	if err == nil {
		return sel, key, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", nil, fmt.Errorf("dkim key: %w", err)
	}
	sel, key, err = create()
	if err != nil {
		return "", nil, err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO dkim_keys (domain, selector, private_key) VALUES ($1,$2,$3)
		ON CONFLICT (domain) DO NOTHING`, domain, sel, key); err != nil {
		return "", nil, fmt.Errorf("dkim key: %w", err)
	}
	err = s.pool.QueryRow(ctx, `SELECT selector, private_key FROM dkim_keys WHERE domain = $1`, domain).Scan(&sel, &key)
	return sel, key, err
}

// OutboundDropped: taken out of the queue by an operator, never delivered.
const OutboundDropped int16 = 3

// QueueItem is an outbound entry as operators see it.
type QueueItem struct {
	OutboundEntry
	State       int16
	NextAttempt time.Time
	Size        int
}

// ListOutbound lists up to limit entries, pending and held only unless
// all, oldest first.
func (s *Store) ListOutbound(ctx context.Context, all bool, limit int) ([]QueueItem, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, account_id, mail_from, rcpt, domain, attempts, created_at, expires_at,
		last_error, state, next_attempt_at, COALESCE(length(body), 0) FROM outbound
		WHERE ($1 OR state IN (0, 4)) ORDER BY created_at LIMIT $2`, all, limit)
	if err != nil {
		return nil, fmt.Errorf("list outbound: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueItem, error) {
		var q QueueItem
		err := r.Scan(&q.ID, &q.AccountID, &q.MailFrom, &q.Rcpt, &q.Domain, &q.Attempts, &q.Created, &q.Expires,
			&q.LastError, &q.State, &q.NextAttempt, &q.Size)
		return q, err
	})
}

// RetryOutboundNow makes a pending entry due at once; false when there is
// no pending entry with that id.
func (s *Store) RetryOutboundNow(ctx context.Context, id string) (bool, error) {
	if !validID(id) {
		return false, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE outbound SET next_attempt_at = now() WHERE id = $1 AND state = 0`, id)
	return tag.RowsAffected() == 1, err
}

// ReleaseOutbound makes a held entry pending and due at once; false when
// there is no held entry with that id.
func (s *Store) ReleaseOutbound(ctx context.Context, id, note string) (bool, error) {
	if !validID(id) {
		return false, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE outbound SET state = 0, next_attempt_at = now(), last_error = $2 WHERE id = $1 AND state = 4`, id, note)
	return tag.RowsAffected() == 1, err
}

// DropOutbound takes a pending or held entry out of the queue (kept,
// marked dropped, with who dropped it); false when there is none.
func (s *Store) DropOutbound(ctx context.Context, id, reason string) (bool, error) {
	if !validID(id) {
		return false, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE outbound SET state = 3, last_error = $2, body = NULL WHERE id = $1 AND state IN (0, 4)`, id, reason)
	return tag.RowsAffected() == 1, err
}
