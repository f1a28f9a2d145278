package mailstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/yugabyte/pgx/v5"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// MailboxByName finds one of the account's mailboxes by name; INBOX is
// matched without regard to case (RFC 9051 §5.1).
func (s *Store) MailboxByName(ctx context.Context, accountID, name string) (mail.Mailbox, error) {
	if strings.EqualFold(name, "INBOX") {
		return s.MailboxByUse(ctx, accountID, mail.UseInbox)
	}
	// Names are stored in NFC (mail.MailboxName); one made before that rule
	// keeps the form it was written in.
	return scanMailbox(s.pool.QueryRow(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND name IN ($2, $3)
		ORDER BY name = $3 DESC LIMIT 1`, accountID, name, mail.NormalizeMailboxName(name)))
}

// MaxSubscriptions bounds an account's IMAP subscriptions.
const MaxSubscriptions = 2000

// SetSubscribed records an IMAP SUBSCRIBE or UNSUBSCRIBE of a mailbox name
// (RFC 9051 §6.3.7, §6.3.8). Subscriptions are kept by name, apart from
// the mailboxes: one outlives its mailbox's DELETE and is then listed
// \NonExistent (RFC 3501 §6.3.6: the server must not remove it
// unilaterally; RFC 5258 §3.1). Unsubscribing a name not subscribed is no
// error. Past MaxSubscriptions, subscribing answers ErrLimit.
func (s *Store) SetSubscribed(ctx context.Context, accountID, name string, on bool) error {
	if !on {
		if _, err := s.pool.Exec(ctx, `DELETE FROM subscriptions WHERE account_id = $1 AND name IN ($2, $3)`,
			accountID, name, mail.NormalizeMailboxName(name)); err != nil {
			return fmt.Errorf("unsubscribe: %w", err)
		}
		return nil
	}
	return s.tx(ctx, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM subscriptions WHERE account_id = $1`, accountID).Scan(&n); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		if n >= MaxSubscriptions {
			return fmt.Errorf("%w: at most %d subscriptions", mail.ErrLimit, MaxSubscriptions)
		}
		return subscribeTx(ctx, tx, accountID, name)
	})
}

func subscribeTx(ctx context.Context, tx pgx.Tx, accountID, name string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO subscriptions (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
		accountID, name); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return nil
}

// Subscriptions lists the account's subscribed names, mailboxes or not.
func (s *Store) Subscriptions(ctx context.Context, accountID string) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT name FROM subscriptions WHERE account_id = $1 LIMIT $2`, accountID, MaxSubscriptions)
	if err != nil {
		return nil, fmt.Errorf("subscriptions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("subscriptions: %w", err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// MailboxView is what an IMAP SELECT needs: the mailbox and the UIDs in it,
// ascending, read in one snapshot.
func (s *Store) MailboxView(ctx context.Context, accountID, mailboxID string) (mail.Mailbox, []uint32, uint64, error) {
	var (
		mb     mail.Mailbox
		uids   []uint32
		modseq uint64
	)
	if !validID(mailboxID) {
		return mb, nil, 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		if mb, err = scanMailbox(tx.QueryRow(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND id = $2`,
			accountID, mailboxID)); err != nil {
			return err
		}
		var m int64
		if err := tx.QueryRow(ctx, `SELECT modseq FROM accounts WHERE id = $1`, accountID).Scan(&m); err != nil {
			return err
		}
		modseq = uint64(m)
		rows, err := tx.Query(ctx, `SELECT uid FROM messages WHERE account_id = $1 AND mailbox_id = $2 ORDER BY uid`, accountID, mailboxID)
		if err != nil {
			return err
		}
		uids = uids[:0]
		var uid int64
		_, err = pgx.ForEachRow(rows, []any{&uid}, func() error { uids = append(uids, uint32(uid)); return nil })
		return err
	})
	if err != nil {
		return mb, nil, 0, fmt.Errorf("mailbox view: %w", err)
	}
	return mb, uids, modseq, nil
}

// MessagesByUID returns the mailbox's messages with the given UIDs
// (ascending; absent UIDs are passed over). With span set, uids is read as
// the closed range [uids[0], uids[len-1]]: one index range scan for the
// common 1:* case. With envelope set, each message's EnvelopeHeader is read
// too.
func (s *Store) MessagesByUID(ctx context.Context, accountID, mailboxID string, uids []uint32, span, envelope bool) ([]mail.Message, error) {
	if !validID(mailboxID) {
		return nil, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	if len(uids) == 0 {
		return nil, nil
	}
	var rows pgx.Rows
	var err error
	cols := messageCols
	if envelope {
		cols += `, envelope_header`
	}
	if span {
		rows, err = s.pool.Query(ctx, `SELECT `+cols+` FROM messages WHERE account_id = $1 AND mailbox_id = $2
			AND uid BETWEEN $3 AND $4 ORDER BY uid`, accountID, mailboxID, int64(uids[0]), int64(uids[len(uids)-1]))
	} else {
		list := make([]int64, len(uids))
		for i, u := range uids {
			list[i] = int64(u)
		}
		rows, err = s.pool.Query(ctx, `SELECT `+cols+` FROM messages WHERE account_id = $1 AND mailbox_id = $2
			AND uid = ANY($3) ORDER BY uid`, accountID, mailboxID, list)
	}
	if err != nil {
		return nil, fmt.Errorf("messages by uid: %w", err)
	}
	if envelope {
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (mail.Message, error) {
			var env []byte
			m, err := scanMessage(r, &env)
			m.EnvelopeHeader = env
			return m, err
		})
	}
	return collectMessages(rows)
}

// MailboxChanges returns the journal entries of one mailbox after since,
// at most max, and the account's journal position they bring the reader
// to (the last entry's when more wait, else the current one).
func (s *Store) MailboxChanges(ctx context.Context, accountID, mailboxID string, since uint64, max int) ([]mail.Change, uint64, error) {
	var current int64
	if err := s.pool.QueryRow(ctx, `SELECT modseq FROM accounts WHERE id = $1`, accountID).Scan(&current); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, 0, fmt.Errorf("%w: account", mail.ErrNotFound)
		}
		return nil, 0, fmt.Errorf("mailbox changes: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT modseq, kind, coalesce(message_id::text, ''), coalesce(uid, 0)
		FROM changes WHERE account_id = $1 AND mailbox_id = $2 AND modseq > $3 AND modseq <= $4 ORDER BY modseq LIMIT $5`,
		accountID, mailboxID, int64(since), current, max+1)
	if err != nil {
		return nil, 0, fmt.Errorf("mailbox changes: %w", err)
	}
	var out []mail.Change
	var modseq, uid int64
	var c mail.Change
	_, err = pgx.ForEachRow(rows, []any{&modseq, &c.Kind, &c.MessageID, &uid}, func() error {
		c.Modseq, c.UID, c.MailboxID = uint64(modseq), uint32(uid), mailboxID
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("mailbox changes: %w", err)
	}
	if len(out) > max {
		out = out[:max]
		return out, out[len(out)-1].Modseq, nil
	}
	return out, uint64(current), nil
}

// RemovedSince returns the UIDs in [lo, hi] removed from the mailbox
// (expunged or moved out) with a journal position in (since, upTo],
// ascending: VANISHED (EARLIER) of QRESYNC (RFC 7162 §3.2.6).
func (s *Store) RemovedSince(ctx context.Context, accountID, mailboxID string, since, upTo uint64, lo, hi uint32) ([]uint32, error) {
	rows, err := s.pool.Query(ctx, `SELECT uid FROM changes WHERE account_id = $1 AND mailbox_id = $2 AND modseq > $3
		AND modseq <= $4 AND kind = $5 AND uid BETWEEN $6 AND $7 ORDER BY uid`,
		accountID, mailboxID, int64(since), int64(upTo), mail.ChangeMessageRemoved, int64(lo), int64(hi))
	if err != nil {
		return nil, fmt.Errorf("removed since: %w", err)
	}
	var out []uint32
	var uid int64
	_, err = pgx.ForEachRow(rows, []any{&uid}, func() error { out = append(out, uint32(uid)); return nil })
	return out, err
}

// ExpungeDeleted removes the mailbox's messages marked \Deleted, only
// those among uids when uids is not nil (UID EXPUNGE, RFC 4315 §2.1), and
// returns the UIDs removed, ascending. The rows are read FOR UPDATE with
// their condition, so two sessions expunging at once do not fail: the one
// that waited re-reads each row after the other's commit (READ COMMITTED
// re-checks the WHERE clause), and a message already expunged, undeleted
// or moved out meanwhile is passed over (RFC 9051 §6.4.3 says nothing of
// the messages another session removed; they are reported by its poll).
func (s *Store) ExpungeDeleted(ctx context.Context, accountID, mailboxID string, uids []uint32) ([]uint32, error) {
	if !validID(mailboxID) {
		return nil, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	var removed []uint32
	err := s.tx(ctx, func(tx pgx.Tx) error {
		removed = removed[:0]
		q := `SELECT id::text FROM messages WHERE account_id = $1 AND mailbox_id = $2 AND deleted`
		args := []any{accountID, mailboxID}
		if uids != nil {
			list := make([]int64, len(uids))
			for i, u := range uids {
				list[i] = int64(u)
			}
			q += ` AND uid = ANY($3)`
			args = append(args, list)
		}
		// The same lock order as lockMessages (by id): no deadlock with
		// a concurrent STORE or MOVE of the same messages.
		rows, err := tx.Query(ctx, q+` ORDER BY id FOR UPDATE`, args...)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		gone, err := s.expungeTx(ctx, tx, accountID, ids)
		if err != nil {
			return err
		}
		for _, m := range gone {
			removed = append(removed, m.UID)
		}
		slices.Sort(removed)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expunge deleted: %w", err)
	}
	return removed, nil
}

// CopyMessages copies the account's messages to one of its mailboxes (new
// ids and UIDs there; the blobs are shared) and returns the copies in the
// order of ids. An unknown id answers ErrNotFound and copies nothing; the
// copies count against the quota.
func (s *Store) CopyMessages(ctx context.Context, accountID string, ids []string, toMailbox string) ([]mail.Message, error) {
	var out []mail.Message
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		if _, err := s.lockMailbox(ctx, tx, accountID, toMailbox); err != nil {
			return err
		}
		// FOR SHARE, in lockMessages' order: a source another session
		// expunges meanwhile is either copied whole or found missing,
		// never counted in the destination without its row.
		rows, err := tx.Query(ctx, `SELECT `+messageCols+` FROM messages WHERE account_id = $1 AND id = ANY($2::uuid[])
			ORDER BY id FOR SHARE`, accountID, validIDs(ids))
		if err != nil {
			return err
		}
		msgs, err := collectMessages(rows)
		if err != nil {
			return err
		}
		byID := map[string]mail.Message{}
		var size int64
		unread := 0
		for _, m := range msgs {
			byID[m.ID] = m
		}
		for _, id := range ids {
			m, ok := byID[id]
			if !ok {
				return fmt.Errorf("%w: message %s", mail.ErrNotFound, id)
			}
			size += m.Size
			if !m.Flags.Seen {
				unread++
			}
		}
		if len(ids) == 0 {
			return nil
		}
		var last int64
		err = tx.QueryRow(ctx, `UPDATE accounts SET modseq = modseq + $3, used_bytes = used_bytes + $2
			WHERE id = $1 AND (quota_bytes <= 0 OR used_bytes + $2 <= quota_bytes) RETURNING modseq`,
			accountID, size, len(ids)).Scan(&last)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: the copies need %d bytes", mail.ErrOverQuota, size)
		}
		if err != nil {
			return err
		}
		var uidnext int64
		if err := tx.QueryRow(ctx, `UPDATE mailboxes SET uidnext = uidnext + $3, highest_modseq = $4, total = total + $3,
			unread = unread + $5 WHERE account_id = $1 AND id = $2 RETURNING uidnext`,
			accountID, toMailbox, len(ids), last, unread).Scan(&uidnext); err != nil {
			return err
		}
		first := uint64(last) - uint64(len(ids)) + 1
		firstUID := uint32(uidnext) - uint32(len(ids))
		b := &pgx.Batch{}
		for i, id := range ids {
			src := byID[id]
			m := src
			m.ID, m.MailboxID, m.UID, m.Modseq = NewID(), toMailbox, firstUID+uint32(i), first+uint64(i)
			b.Queue(`INSERT INTO messages (account_id, id, mailbox_id, uid, modseq, seen, flagged, answered, draft, deleted,
				labels, received_at, sent_at, size, subject, from_addr, to_addrs, message_id_header, thread_id, snippet,
				has_attachments, blob_ref, envelope_header, prefix)
				SELECT account_id, $3, $4, $5, $6, seen, flagged, answered, draft, deleted, labels, received_at, sent_at, size,
				subject, from_addr, to_addrs, message_id_header, thread_id, snippet, has_attachments, blob_ref, envelope_header, prefix
				FROM messages WHERE account_id = $1 AND id = $2`, accountID, src.ID, m.ID, toMailbox, int64(m.UID), int64(m.Modseq))
			b.Queue(`INSERT INTO attachments (account_id, message_id, part_id, filename, content_type, size, content_id, blob_ref)
				SELECT account_id, $3, part_id, filename, content_type, size, content_id, blob_ref
				FROM attachments WHERE account_id = $1 AND message_id = $2`, accountID, src.ID, m.ID)
			b.Queue(journalSQL, accountID, int64(m.Modseq), mail.ChangeMessageAdded, toMailbox, m.ID, int64(m.UID))
			out = append(out, m)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return nil, fmt.Errorf("copy messages: %w", labelsError(err))
	}
	return out, nil
}

// MailboxStats counts a mailbox's messages marked \Deleted and sums their
// sizes (IMAP STATUS DELETED and SIZE, RFC 9051 §6.3.11).
func (s *Store) MailboxStats(ctx context.Context, accountID, mailboxID string) (deleted int, size int64, err error) {
	if !validID(mailboxID) {
		return 0, 0, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	err = s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE deleted), coalesce(sum(size), 0)::bigint FROM messages
		WHERE account_id = $1 AND mailbox_id = $2`, accountID, mailboxID).Scan(&deleted, &size)
	if err != nil {
		return 0, 0, fmt.Errorf("mailbox stats: %w", err)
	}
	return deleted, size, nil
}
