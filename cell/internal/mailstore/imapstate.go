package mailstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/yugabyte/pgx/v5"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// MailboxKeywords returns the distinct labels of the mailbox's messages
// with UIDs from fromUID on (IMAP keywords among them, RFC 3501 §7.2.6),
// sorted, at most max.
func (s *Store) MailboxKeywords(ctx context.Context, accountID, mailboxID string, fromUID uint32, max int) ([]string, error) {
	if !validID(mailboxID) {
		return nil, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT k FROM messages, unnest(labels) AS k
		WHERE account_id = $1 AND mailbox_id = $2 AND uid >= $3 AND labels <> '{}' ORDER BY k LIMIT $4`,
		accountID, mailboxID, int64(fromUID), max)
	if err != nil {
		return nil, fmt.Errorf("mailbox keywords: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("mailbox keywords: %w", err)
	}
	return out, nil
}

// ClaimRecent moves the mailbox's \Recent mark (RFC 3501 §2.3.2) up to
// upTo and returns where it was: the UIDs above the old mark and up to
// upTo are this caller's to show as \Recent, no other's. With upTo 0 it
// only reads the mark (EXAMINE changes nothing, RFC 3501 §6.3.2).
func (s *Store) ClaimRecent(ctx context.Context, accountID, mailboxID string, upTo uint32) (uint32, error) {
	if !validID(mailboxID) {
		return 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	const q = `SELECT recent_uid FROM mailboxes WHERE account_id = $1 AND id = $2`
	var old int64
	var err error
	if upTo == 0 {
		// Only a read: no transaction, no lock.
		err = s.pool.QueryRow(ctx, q, accountID, mailboxID).Scan(&old)
	} else {
		err = s.tx(ctx, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, q+` FOR UPDATE`, accountID, mailboxID).Scan(&old); err != nil {
				return err
			}
			if int64(upTo) <= old {
				return nil
			}
			_, err := tx.Exec(ctx, `UPDATE mailboxes SET recent_uid = $3 WHERE account_id = $1 AND id = $2`,
				accountID, mailboxID, int64(upTo))
			return err
		})
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("claim recent: %w", err)
	}
	return uint32(old), nil
}

// RecentCount is how many of the mailbox's messages no session has been
// told of yet (STATUS RECENT, RFC 3501 §6.3.10).
func (s *Store) RecentCount(ctx context.Context, accountID, mailboxID string) (int, error) {
	if !validID(mailboxID) {
		return 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE account_id = $1 AND mailbox_id = $2
		AND uid > (SELECT recent_uid FROM mailboxes WHERE account_id = $1 AND id = $2)`, accountID, mailboxID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("recent count: %w", err)
	}
	return n, nil
}

// FirstUnseen is the lowest UID of the mailbox's messages without \Seen,
// 0 if none (IMAP4rev1 SELECT's OK [UNSEEN], RFC 3501 §6.3.1).
func (s *Store) FirstUnseen(ctx context.Context, accountID, mailboxID string) (uint32, error) {
	if !validID(mailboxID) {
		return 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	var uid int64
	err := s.pool.QueryRow(ctx, `SELECT coalesce(min(uid), 0) FROM messages WHERE account_id = $1 AND mailbox_id = $2 AND NOT seen`,
		accountID, mailboxID).Scan(&uid)
	if err != nil {
		return 0, fmt.Errorf("first unseen: %w", err)
	}
	return uint32(uid), nil
}
