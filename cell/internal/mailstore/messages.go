package mailstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/yugabyte/pgx/v5"
	"github.com/yugabyte/pgx/v5/pgconn"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

const mailboxCols = `id, name, special_use, uidvalidity, uidnext, highest_modseq, total, unread`

func scanMailbox(row pgx.Row) (mail.Mailbox, error) {
	var m mail.Mailbox
	var uv, un, hm int64
	err := row.Scan(&m.ID, &m.Name, &m.SpecialUse, &uv, &un, &hm, &m.Total, &m.Unread)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	m.UIDValidity, m.UIDNext, m.HighestModseq = uint32(uv), uint32(un), uint64(hm)
	return m, err
}

// ListMailboxes returns an account's mailboxes by name, and the account's
// journal position.
func (s *Store) ListMailboxes(ctx context.Context, accountID string) ([]mail.Mailbox, uint64, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 ORDER BY name`, accountID)
	if err != nil {
		return nil, 0, fmt.Errorf("list mailboxes: %w", err)
	}
	var out []mail.Mailbox
	for rows.Next() {
		m, err := scanMailbox(rows)
		if err != nil {
			rows.Close()
			return nil, 0, err
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	modseq, err := s.Modseq(ctx, accountID)
	if err != nil {
		return nil, 0, err
	}
	return out, modseq, nil
}

// Modseq is the account's current journal position.
func (s *Store) Modseq(ctx context.Context, accountID string) (uint64, error) {
	var modseq int64
	if err := s.pool.QueryRow(ctx, `SELECT modseq FROM accounts WHERE id = $1`, accountID).Scan(&modseq); err != nil {
		return 0, fmt.Errorf("account modseq: %w", err)
	}
	return uint64(modseq), nil
}

// Mailbox returns one mailbox of the account.
func (s *Store) Mailbox(ctx context.Context, accountID, id string) (mail.Mailbox, error) {
	if !validID(id) {
		return mail.Mailbox{}, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	return scanMailbox(s.pool.QueryRow(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND id = $2`, accountID, id))
}

// MailboxByUse returns the account's special-use mailbox.
func (s *Store) MailboxByUse(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, error) {
	return scanMailbox(s.pool.QueryRow(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND special_use = $2`, accountID, int16(use)))
}

// CreateMailbox makes a user mailbox; parents are not required to exist.
// With subscribe it is also subscribed (a mailbox made through the API);
// IMAP CREATE leaves subscriptions alone (RFC 9051 §6.3.4, §6.3.7).
func (s *Store) CreateMailbox(ctx context.Context, accountID, name string, subscribe bool) (mail.Mailbox, error) {
	name, err := mail.MailboxName(name)
	if err != nil {
		return mail.Mailbox{}, err
	}
	m := mail.Mailbox{ID: NewID(), Name: name, UIDValidity: uint32(time.Now().Unix()), UIDNext: 1}
	err = s.tx(ctx, func(tx pgx.Tx) error {
		var last, uv int64
		err := tx.QueryRow(ctx, `UPDATE accounts SET modseq = modseq + 1, uidvalidity_last = greatest(uidvalidity_last + 1, $2)
			WHERE id = $1 RETURNING modseq, uidvalidity_last`, accountID, int64(m.UIDValidity)).Scan(&last, &uv)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: account", mail.ErrNotFound)
		}
		if err != nil {
			return err
		}
		modseq := uint64(last)
		m.UIDValidity = uint32(uv)
		if _, err := tx.Exec(ctx, `INSERT INTO mailboxes (account_id, id, name, uidvalidity, highest_modseq) VALUES ($1,$2,$3,$4,$5)`,
			accountID, m.ID, name, int64(m.UIDValidity), int64(modseq)); err != nil {
			return err
		}
		if subscribe {
			if err := subscribeTx(ctx, tx, accountID, name); err != nil {
				return err
			}
		}
		m.HighestModseq = modseq
		return journal(ctx, tx, accountID, modseq, mail.ChangeMailboxAdded, m.ID, "", 0)
	})
	if isUnique(err) {
		return mail.Mailbox{}, fmt.Errorf("%w: mailbox %q", mail.ErrExists, name)
	}
	if err != nil {
		return mail.Mailbox{}, fmt.Errorf("create mailbox: %w", err)
	}
	return m, nil
}

// RenameMailbox renames a user mailbox and the mailboxes under it. Special
// mailboxes keep their names.
func (s *Store) RenameMailbox(ctx context.Context, accountID, id, name string) (mail.Mailbox, error) {
	name, err := mail.MailboxName(name)
	if err != nil {
		return mail.Mailbox{}, err
	}
	var m mail.Mailbox
	err = s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if m, err = s.lockMailbox(ctx, tx, accountID, id); err != nil {
			return err
		}
		if m.SpecialUse != mail.UseNone {
			return fmt.Errorf("%w: %s is a special mailbox and keeps its name", mail.ErrInvalid, m.Name)
		}
		modseq, err := nextModseq(ctx, tx, accountID, 1)
		if err != nil {
			return err
		}
		old := m.Name
		if _, err := tx.Exec(ctx, `UPDATE mailboxes SET name = $3, highest_modseq = $4 WHERE account_id = $1 AND id = $2`,
			accountID, id, name, int64(modseq)); err != nil {
			return err
		}
		// The rest of a child's name starts after the old name: substr
		// counts characters, not bytes.
		rest := utf8.RuneCountInString(old) + 1
		if _, err := tx.Exec(ctx, `UPDATE mailboxes SET name = $3 || substr(name, $4) WHERE account_id = $1 AND name LIKE $2`,
			accountID, likeEscape(old)+"/%", name, rest); err != nil {
			return err
		}
		// Subscriptions follow the mailboxes they name (as Dovecot's
		// do); one already held for a new name stays.
		if _, err := tx.Exec(ctx, `INSERT INTO subscriptions (account_id, name)
			SELECT account_id, $3 || substr(name, $4) FROM subscriptions WHERE account_id = $1 AND (name = $5 OR name LIKE $2)
			ON CONFLICT DO NOTHING`, accountID, likeEscape(old)+"/%", name, rest, old); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM subscriptions WHERE account_id = $1 AND (name = $3 OR name LIKE $2)`,
			accountID, likeEscape(old)+"/%", old); err != nil {
			return err
		}
		m.Name, m.HighestModseq = name, modseq
		return journal(ctx, tx, accountID, modseq, mail.ChangeMailboxRenamed, id, "", 0)
	})
	if isUnique(err) {
		return mail.Mailbox{}, fmt.Errorf("%w: mailbox %q", mail.ErrExists, name)
	}
	return m, err
}

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func (s *Store) lockMailbox(ctx context.Context, tx pgx.Tx, accountID, id string) (mail.Mailbox, error) {
	if !validID(id) {
		return mail.Mailbox{}, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	return scanMailbox(tx.QueryRow(ctx, `SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND id = $2 FOR UPDATE`, accountID, id))
}

// DeleteMailbox removes a user mailbox and its messages; it refuses while
// mailboxes are nested under it.
func (s *Store) DeleteMailbox(ctx context.Context, accountID, id string) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		m, err := s.lockMailbox(ctx, tx, accountID, id)
		if err != nil {
			return err
		}
		if m.SpecialUse != mail.UseNone {
			return fmt.Errorf("%w: %s is a special mailbox", mail.ErrInvalid, m.Name)
		}
		var children int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM mailboxes WHERE account_id = $1 AND name LIKE $2`,
			accountID, likeEscape(m.Name)+"/%").Scan(&children); err != nil {
			return err
		}
		if children > 0 {
			return fmt.Errorf("%w: %s has mailboxes under it", mail.ErrInvalid, m.Name)
		}
		ids, err := idsIn(ctx, tx, `SELECT id FROM messages WHERE account_id = $1 AND mailbox_id = $2`, accountID, id)
		if err != nil {
			return err
		}
		if _, err := s.expungeTx(ctx, tx, accountID, ids); err != nil {
			return err
		}
		modseq, err := nextModseq(ctx, tx, accountID, 1)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM mailboxes WHERE account_id = $1 AND id = $2`, accountID, id); err != nil {
			return err
		}
		return journal(ctx, tx, accountID, modseq, mail.ChangeMailboxRemoved, id, "", 0)
	})
}

func idsIn(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]string, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

const messageCols = `id, mailbox_id, uid, modseq, seen, flagged, answered, draft, deleted, labels, received_at,
	coalesce(sent_at, received_at), size, subject, from_addr, to_addrs, message_id_header, thread_id, snippet,
	has_attachments, blob_ref, prefix`

// scanMessage reads messageCols, and then extra columns into extra.
func scanMessage(row pgx.Row, extra ...any) (mail.Message, error) {
	var m mail.Message
	var uid, modseq int64
	var from, to []byte
	err := row.Scan(append([]any{&m.ID, &m.MailboxID, &uid, &modseq, &m.Flags.Seen, &m.Flags.Flagged, &m.Flags.Answered,
		&m.Flags.Draft, &m.Flags.Deleted, &m.Labels, &m.ReceivedAt, &m.SentAt, &m.Size, &m.Subject, &from, &to, &m.MessageID,
		&m.ThreadID, &m.Snippet, &m.HasAttachments, &m.BlobRef, &m.Prefix}, extra...)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, fmt.Errorf("%w: message", mail.ErrNotFound)
	}
	if err != nil {
		return m, err
	}
	m.UID, m.Modseq = uint32(uid), uint64(modseq)
	_ = json.Unmarshal(from, &m.From)
	_ = json.Unmarshal(to, &m.To)
	return m, nil
}

// ListMessages returns up to limit messages of a mailbox, newest (highest
// UID) first, below beforeUID when it is not 0. Paging by UID is stable
// under concurrent inserts: new messages get higher UIDs.
func (s *Store) ListMessages(ctx context.Context, accountID, mailboxID string, f mail.ListFilter, beforeUID uint32, limit int) ([]mail.Message, error) {
	if !validID(mailboxID) {
		return nil, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	q := `SELECT ` + messageCols + ` FROM messages WHERE account_id = $1 AND mailbox_id = $2 AND uid < $3`
	args := []any{accountID, mailboxID, int64(beforeUID)}
	if beforeUID == 0 {
		args[2] = int64(1) << 40
	}
	if f.UnreadOnly {
		q += ` AND NOT seen`
	}
	if f.FlaggedOnly {
		q += ` AND flagged`
	}
	if f.Label != "" {
		args = append(args, f.Label)
		q += fmt.Sprintf(` AND $%d = ANY(labels)`, len(args))
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY uid DESC LIMIT $%d`, len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	return collectMessages(rows)
}

// collectMessages scans every row of a messageCols query and closes rows.
func collectMessages(rows pgx.Rows) ([]mail.Message, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (mail.Message, error) { return scanMessage(r) })
}

// validIDs keeps the ids that have the form of a UUID: a malformed id from
// a client names nothing, rather than failing the query.
func validIDs(ids []string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if validID(id) {
			out = append(out, id)
		}
	}
	return out
}

// Message returns one message of the account with its attachments.
func (s *Store) Message(ctx context.Context, accountID, id string) (mail.Message, []mail.AttachmentMeta, error) {
	if !validID(id) {
		return mail.Message{}, nil, fmt.Errorf("%w: message", mail.ErrNotFound)
	}
	m, err := scanMessage(s.pool.QueryRow(ctx, `SELECT `+messageCols+` FROM messages WHERE account_id = $1 AND id = $2`, accountID, id))
	if err != nil {
		return m, nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT part_id, filename, content_type, size, content_id, blob_ref FROM attachments
		WHERE account_id = $1 AND message_id = $2 ORDER BY part_id`, accountID, id)
	if err != nil {
		return m, nil, err
	}
	defer rows.Close()
	var atts []mail.AttachmentMeta
	for rows.Next() {
		var a mail.AttachmentMeta
		if err := rows.Scan(&a.PartID, &a.Filename, &a.ContentType, &a.Size, &a.ContentID, &a.BlobRef); err != nil {
			return m, nil, err
		}
		atts = append(atts, a)
	}
	return m, atts, rows.Err()
}

// InsertMessage stores a message in a mailbox: UID and modseq allocated,
// counters and quota updated, thread found, journal written, in one
// transaction. With a DeliveryKey it is idempotent: the same key in the same
// mailbox returns the message stored the first time.
func (s *Store) InsertMessage(ctx context.Context, accountID, mailboxID string, nm mail.NewMessage) (mail.Message, error) {
	c, err := newInsertCall(accountID, mailboxID, nm)
	if err != nil {
		return mail.Message{}, fmt.Errorf("insert message: %w", err)
	}
	err = s.retry(ctx, func() error { return c.scan(s.pool.QueryRow(ctx, insertSQL, c.args...)) })
	if errors.Is(err, errDuplicate) {
		return s.previousDelivery(ctx, accountID, mailboxID, nm)
	}
	if err != nil {
		return mail.Message{}, fmt.Errorf("insert message: %w", err)
	}
	return c.m, nil
}

// errDuplicate is insert_message's CM005: the delivery key was used in
// the mailbox before.
var errDuplicate = errors.New("delivery key already used")

// previousDelivery completes an insert whose key was delivered before:
// the spool entry, if any, is closed as delivered, and the first message
// returned.
func (s *Store) previousDelivery(ctx context.Context, accountID, mailboxID string, nm mail.NewMessage) (mail.Message, error) {
	var m mail.Message
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if nm.SpoolID != "" {
			var state int16
			if err := tx.QueryRow(ctx, `SELECT state FROM spool WHERE id = $1 FOR UPDATE`, nm.SpoolID).Scan(&state); err != nil || state != SpoolPending {
				return mail.ErrAlreadyDelivered
			}
			if _, err := tx.Exec(ctx, `UPDATE spool SET state = 1, attempts = attempts + 1, body = NULL WHERE id = $1`, nm.SpoolID); err != nil {
				return err
			}
		}
		var err error
		m, err = scanMessage(tx.QueryRow(ctx, `SELECT `+messageCols+` FROM messages
			WHERE account_id = $1 AND mailbox_id = $2 AND delivery_key = $3`, accountID, mailboxID, nm.DeliveryKey))
		return err
	})
	if err != nil {
		return mail.Message{}, fmt.Errorf("insert message: %w", err)
	}
	return m, nil
}

// InsertMessages stores several messages, of one account or of several,
// in one round trip and one transaction (so one commit, and one wait for
// each account's row lock, for all of them): the group commit of delivery
// (DESIGN.md §4). It has InsertMessage's effect on each: if any of them
// fails, the transaction is rolled back and each is inserted on its own,
// so that every one gets its own outcome.
func (s *Store) InsertMessages(ctx context.Context, items []mail.Insert) []mail.InsertResult {
	out := make([]mail.InsertResult, len(items))
	if len(items) == 1 {
		out[0].Message, out[0].Err = s.InsertMessage(ctx, items[0].AccountID, items[0].MailboxID, items[0].Message)
		return out
	}
	// Account rows are locked in one order by every batch, so two batches
	// of the same accounts do not deadlock on them. Other rows (a spool
	// entry given twice, an inline blob two accounts share) can still
	// deadlock; PostgreSQL breaks it within deadlock_timeout and the
	// batch then falls back to one insert at a time.
	order := make([]int, len(items))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(items[a].AccountID, items[b].AccountID) })
	calls := make([]*insertCall, len(items))
	b := &pgx.Batch{}
	for _, i := range order {
		c, err := newInsertCall(items[i].AccountID, items[i].MailboxID, items[i].Message)
		if err != nil {
			return s.insertEach(ctx, items)
		}
		calls[i] = c
		b.Queue(insertSQL, c.args...)
	}
	// Sent without BEGIN: a batch ends in one Sync, and runs in one
	// implicit transaction, committed at the Sync or rolled back whole.
	br := s.pool.SendBatch(ctx, b)
	var err error
	for _, i := range order {
		if err = calls[i].scan(br.QueryRow()); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return s.insertEach(ctx, items)
	}
	for _, i := range order {
		out[i].Message = calls[i].m
	}
	return out
}

// insertEach inserts items one by one.
func (s *Store) insertEach(ctx context.Context, items []mail.Insert) []mail.InsertResult {
	out := make([]mail.InsertResult, len(items))
	for i, it := range items {
		out[i].Message, out[i].Err = s.InsertMessage(ctx, it.AccountID, it.MailboxID, it.Message)
	}
	return out
}

// insertSQL calls the function insert_message (migrations 0007, 0008): the spool
// entry, the idempotency check, quota and journal position, the mailbox's
// UIDNEXT, the thread, the rows of the message, its attachments, inline
// blobs and journal entry, in one statement.
const insertSQL = `SELECT outcome, message_id, uid, modseq, thread_id FROM insert_message(
	$1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29,$30,$31,$32,$33)`

// insertCall is one message for insert_message: its arguments, and the
// message as it will be stored.
type insertCall struct {
	m    mail.Message
	args []any
}

func newInsertCall(accountID, mailboxID string, nm mail.NewMessage) (*insertCall, error) {
	if !validID(mailboxID) {
		return nil, fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	}
	m := nm.Message
	m.ID, m.MailboxID = NewID(), mailboxID
	if m.ReceivedAt.IsZero() {
		m.ReceivedAt = time.Now()
	}
	from, _ := json.Marshal(m.From)
	to, _ := json.Marshal(orEmpty(m.To))
	var sent, spool, key any
	if !m.SentAt.IsZero() {
		sent = m.SentAt
	}
	if nm.SpoolID != "" {
		if !validID(nm.SpoolID) {
			return nil, mail.ErrAlreadyDelivered
		}
		spool = nm.SpoolID
	}
	if nm.DeliveryKey != "" {
		key = nm.DeliveryKey
	}
	if m.Labels == nil {
		m.Labels = []string{}
	}
	refs := slices.DeleteFunc(slices.Clone(nm.ThreadRefs), func(r string) bool { return r == "" })
	if len(refs) > 50 {
		refs = refs[len(refs)-50:]
	}
	n := len(nm.Attachments)
	part, name, ctype, cid, aref := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	asize := make([]int64, n)
	for i, a := range nm.Attachments {
		part[i], name[i], ctype[i], asize[i], cid[i], aref[i] = a.PartID, a.Filename, a.ContentType, a.Size, a.ContentID, a.BlobRef
	}
	iref, idata := make([]string, len(nm.Inline)), make([][]byte, len(nm.Inline))
	for i, b := range nm.Inline {
		iref[i], idata[i] = b.Ref, b.Data
	}
	return &insertCall{m: m, args: []any{
		accountID, mailboxID, m.ID, spool, key, m.Flags.Seen, m.Flags.Flagged, m.Flags.Answered, m.Flags.Draft, m.Flags.Deleted,
		m.Labels, m.ReceivedAt, sent, m.Size, m.Subject, from, to, m.MessageID, refs, NewID(),
		m.Snippet, m.HasAttachments, m.BlobRef, m.EnvelopeHeader,
		part, name, ctype, asize, cid, aref, iref, idata, m.Prefix}}, nil
}

// scan reads insert_message's row into the call.
func (c *insertCall) scan(row pgx.Row) error {
	var outcome, id, thread string
	var uid, modseq int64
	if err := row.Scan(&outcome, &id, &uid, &modseq, &thread); err != nil {
		return insertError(err, c.m.Size)
	}
	c.m.UID, c.m.Modseq, c.m.ThreadID = uint32(uid), uint64(modseq), thread
	return nil
}

// insertError translates insert_message's SQLSTATEs (migrations 0007, 0008).
func insertError(err error, size int64) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "CM001":
		return fmt.Errorf("%w: account", mail.ErrNotFound)
	case "CM002":
		return fmt.Errorf("%w: mailbox", mail.ErrNotFound)
	case "CM003":
		var quota, used int64
		fmt.Sscan(pe.Detail, &quota, &used)
		return fmt.Errorf("%w: %d of %d bytes used, message of %d", mail.ErrOverQuota, used, quota, size)
	case "CM004":
		return mail.ErrAlreadyDelivered
	case "CM005":
		return errDuplicate
	}
	return err
}

func orEmpty(a []mail.Address) []mail.Address {
	if a == nil {
		return []mail.Address{}
	}
	return a
}

// lockMessages locks the account's messages with the given ids; ids of
// other accounts, or malformed, are simply not found.
func lockMessages(ctx context.Context, tx pgx.Tx, accountID string, ids []string) ([]mail.Message, error) {
	rows, err := tx.Query(ctx, `SELECT `+messageCols+` FROM messages WHERE account_id = $1 AND id = ANY($2::uuid[])
		ORDER BY id FOR UPDATE`, accountID, validIDs(ids))
	if err != nil {
		return nil, err
	}
	return collectMessages(rows)
}

// CountOwned counts how many of the distinct ids are the account's
// messages.
func (s *Store) CountOwned(ctx context.Context, accountID string, ids []string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE account_id = $1 AND id = ANY($2::uuid[])`, accountID, validIDs(ids)).Scan(&n)
	return n, err
}

// MailboxesOf maps each of the account's messages among ids to its mailbox;
// ids of other accounts are simply absent.
func (s *Store) MailboxesOf(ctx context.Context, accountID string, ids []string) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text, mailbox_id::text FROM messages WHERE account_id = $1 AND id = ANY($2::uuid[])`,
		accountID, validIDs(ids))
	if err != nil {
		return nil, fmt.Errorf("mailboxes of messages: %w", err)
	}
	out := map[string]string{}
	var id, box string
	_, err = pgx.ForEachRow(rows, []any{&id, &box}, func() error { out[id] = box; return nil })
	return out, err
}

// UpdateFlags changes flags and labels of the account's messages; it
// returns how many messages changed. Unknown ids are passed over.
func (s *Store) UpdateFlags(ctx context.Context, accountID string, ids []string, fc mail.FlagChange) (int, error) {
	changed, _, err := s.StoreFlags(ctx, accountID, ids, fc)
	return len(changed), err
}

// StoreFlags changes flags and labels of the account's messages (unknown
// ids are passed over) and returns the messages it changed, as they are
// now, and those it left alone because their modseq was above
// fc.UnchangedSince (RFC 7162 §3.1.3).
//
// Labels are bounded (mail.CheckLabels, mail.MaxMessageLabels: ErrInvalid;
// mail.MaxAccountLabels distinct labels per account: ErrLimit) and their
// bytes count against the quota (ErrOverQuota); migration 0010's trigger
// charges them.
func (s *Store) StoreFlags(ctx context.Context, accountID string, ids []string, fc mail.FlagChange) (changed, conflicts []mail.Message, err error) {
	if err := mail.CheckLabels(fc.AddLabels, mail.MaxMessageLabels, "labels on a message"); err != nil {
		return nil, nil, err
	}
	changed, conflicts, err = s.storeFlags(ctx, accountID, ids, fc)
	if errors.Is(err, mail.ErrLimit) {
		// The account's record of labels may hold some no message uses any
		// more: collect them, and try once more.
		if gcErr := s.collectLabels(ctx, accountID); gcErr != nil {
			return nil, nil, gcErr
		}
		changed, conflicts, err = s.storeFlags(ctx, accountID, ids, fc)
	}
	return changed, conflicts, err
}

// collectLabels forgets the account's recorded labels that no message uses
// any more: one pass over the account's messages (an anti-join with the
// labels in use), not one per recorded label.
func (s *Store) collectLabels(ctx context.Context, accountID string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM account_labels al WHERE al.account_id = $1 AND NOT EXISTS
		(SELECT 1 FROM (SELECT DISTINCT l FROM messages m, unnest(m.labels) AS l WHERE m.account_id = $1) u
		 WHERE u.l = al.label)`, accountID); err != nil {
		return fmt.Errorf("collect labels: %w", err)
	}
	return nil
}

// LabelsRoom refuses (ErrLimit) labels that would take the account past
// mail.MaxAccountLabels distinct labels, for a new message a client makes
// with labels (IMAP APPEND): migration 0010's trigger bounds flag changes
// but only records the labels of an inserted message, since a delivery must
// not fail for its filters' labels. Labels no message uses any more are
// collected first when the bound is reached, as StoreFlags does.
func (s *Store) LabelsRoom(ctx context.Context, accountID string, labels []string) error {
	if len(labels) == 0 {
		return nil
	}
	n, err := s.AccountLabels(ctx, accountID, labels)
	if err == nil && n > mail.MaxAccountLabels {
		if err = s.collectLabels(ctx, accountID); err == nil {
			n, err = s.AccountLabels(ctx, accountID, labels)
		}
	}
	if err != nil {
		return err
	}
	if n > mail.MaxAccountLabels {
		return fmt.Errorf("%w: an account uses at most %d distinct labels", mail.ErrLimit, mail.MaxAccountLabels)
	}
	return nil
}

// AccountLabels is how many distinct labels the account has recorded
// (migration 0010's account_labels), with labels added: at most about
// mail.MaxAccountLabels rows are read, and it bounds the labels of any one
// of its mailboxes from above (the record holds every label in use).
func (s *Store) AccountLabels(ctx context.Context, accountID string, labels []string) (int, error) {
	var have, known int
	err := s.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE label = ANY($2))
		FROM account_labels WHERE account_id = $1`, accountID, labels).Scan(&have, &known)
	if err != nil {
		return 0, fmt.Errorf("account labels: %w", err)
	}
	return have + len(applyLabels(nil, labels, nil)) - known, nil
}

// labelsError translates the SQLSTATEs of migration 0010's label trigger.
func labelsError(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "CM003":
		var quota, used int64
		fmt.Sscan(pe.Detail, &quota, &used)
		return fmt.Errorf("%w: %d of %d bytes used; labels count towards the quota", mail.ErrOverQuota, used, quota)
	case "CM006":
		return fmt.Errorf("%w: an account uses at most %d distinct labels", mail.ErrLimit, mail.MaxAccountLabels)
	}
	return err
}

func (s *Store) storeFlags(ctx context.Context, accountID string, ids []string, fc mail.FlagChange) (changed, conflicts []mail.Message, err error) {
	err = s.tx(ctx, func(tx pgx.Tx) error {
		changed, conflicts = nil, nil
		msgs, err := lockMessages(ctx, tx, accountID, ids)
		if err != nil {
			return err
		}
		type delta struct{ unread int }
		perBox := map[string]*delta{}
		var todo []mail.Message
		for _, m := range msgs {
			if fc.InMailbox != "" && m.MailboxID != fc.InMailbox {
				continue
			}
			if fc.UnchangedSince != 0 && m.Modseq > fc.UnchangedSince {
				conflicts = append(conflicts, m)
				continue
			}
			n := applyFlags(m, fc)
			if n.Flags == m.Flags && equalStrings(n.Labels, m.Labels) {
				continue
			}
			if len(n.Labels) > mail.MaxMessageLabels && len(n.Labels) > len(m.Labels) {
				return fmt.Errorf("%w: a message has at most %d labels", mail.ErrInvalid, mail.MaxMessageLabels)
			}
			if n.Flags.Seen != m.Flags.Seen {
				d := perBox[m.MailboxID]
				if d == nil {
					d = &delta{}
					perBox[m.MailboxID] = d
				}
				if n.Flags.Seen {
					d.unread--
				} else {
					d.unread++
				}
			}
			todo = append(todo, n)
		}
		if len(todo) == 0 {
			return nil
		}
		last, err := nextModseq(ctx, tx, accountID, len(todo))
		if err != nil {
			return err
		}
		first := last - uint64(len(todo)) + 1
		batch := &pgx.Batch{}
		for i := range todo {
			n := &todo[i]
			n.Modseq = first + uint64(i)
			batch.Queue(`UPDATE messages SET seen = $3, flagged = $4, answered = $5, labels = $6, modseq = $7, draft = $8, deleted = $9
				WHERE account_id = $1 AND id = $2`, accountID, n.ID, n.Flags.Seen, n.Flags.Flagged, n.Flags.Answered, n.Labels,
				int64(n.Modseq), n.Flags.Draft, n.Flags.Deleted)
			batch.Queue(`INSERT INTO changes (account_id, modseq, kind, mailbox_id, message_id, uid) VALUES ($1,$2,$3,$4,$5,$6)`,
				accountID, int64(n.Modseq), mail.ChangeFlags, n.MailboxID, n.ID, int64(n.UID))
		}
		boxes := map[string]bool{}
		for _, n := range todo {
			boxes[n.MailboxID] = true
		}
		for box := range boxes {
			unread := 0
			if d := perBox[box]; d != nil {
				unread = d.unread
			}
			batch.Queue(`UPDATE mailboxes SET unread = unread + $3, highest_modseq = $4 WHERE account_id = $1 AND id = $2`,
				accountID, box, unread, int64(last))
		}
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return err
		}
		changed = todo
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("update flags: %w", labelsError(err))
	}
	return changed, conflicts, nil
}

// applyFlags is m with fc applied.
func applyFlags(m mail.Message, fc mail.FlagChange) mail.Message {
	n := m
	set := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	set(&n.Flags.Seen, fc.Seen)
	set(&n.Flags.Flagged, fc.Flagged)
	set(&n.Flags.Answered, fc.Answered)
	set(&n.Flags.Draft, fc.Draft)
	set(&n.Flags.Deleted, fc.Deleted)
	if fc.ReplaceLabels {
		var hidden []string
		for _, l := range m.Labels {
			if !mail.IsKeyword(l) {
				hidden = append(hidden, l)
			}
		}
		n.Labels = applyLabels(hidden, fc.AddLabels, nil)
	} else {
		n.Labels = applyLabels(m.Labels, fc.AddLabels, fc.RemoveLabels)
	}
	return n
}

func applyLabels(have, add, remove []string) []string {
	out := make([]string, 0, len(have)+len(add))
	drop := map[string]bool{}
	for _, r := range remove {
		drop[r] = true
	}
	seen := map[string]bool{}
	for _, l := range append(append([]string{}, have...), add...) {
		if !drop[l] && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// MoveMessages moves the account's messages to another of its mailboxes
// (new UIDs there, as IMAP MOVE does) and returns the new ids in order;
// an unknown id answers ErrNotFound and moves nothing.
func (s *Store) MoveMessages(ctx context.Context, accountID string, ids []string, toMailbox string) ([]string, error) {
	moved, err := s.Move(ctx, accountID, "", ids, toMailbox)
	out := make([]string, len(moved))
	for i, m := range moved {
		out[i] = m.ID
	}
	return out, err
}

// Moved is one message moved by Move: its UID in the mailbox it left and
// in the one it entered (equal when it was there already).
type Moved struct {
	ID             string
	FromUID, ToUID uint32
	FromMailbox    string
}

// Move is MoveMessages that also tells the UIDs (IMAP MOVE's COPYUID,
// RFC 6851 §4.3). With fromMailbox set (IMAP MOVE from the selected
// mailbox), the messages no longer in it (expunged or moved by another
// session meanwhile) are passed over rather than refused, and a message
// moved to the mailbox it is in gets a new UID there, as a COPY and
// EXPUNGE would give it (RFC 6851 §3.3).
func (s *Store) Move(ctx context.Context, accountID, fromMailbox string, ids []string, toMailbox string) ([]Moved, error) {
	var out []Moved
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		if _, err := s.lockMailbox(ctx, tx, accountID, toMailbox); err != nil {
			return err
		}
		msgs, err := lockMessages(ctx, tx, accountID, ids)
		if err != nil {
			return err
		}
		byID := map[string]mail.Message{}
		for _, m := range msgs {
			if fromMailbox == "" || m.MailboxID == fromMailbox {
				byID[m.ID] = m
			}
		}
		if fromMailbox == "" {
			for _, id := range ids {
				if _, ok := byID[id]; !ok {
					return fmt.Errorf("%w: message %s", mail.ErrNotFound, id)
				}
			}
		}
		for _, id := range ids {
			m, ok := byID[id]
			if !ok {
				continue
			}
			if m.MailboxID == toMailbox && fromMailbox == "" {
				out = append(out, Moved{ID: m.ID, FromUID: m.UID, ToUID: m.UID, FromMailbox: m.MailboxID})
				continue
			}
			last, err := nextModseq(ctx, tx, accountID, 2)
			if err != nil {
				return err
			}
			unread := 0
			if !m.Flags.Seen {
				unread = 1
			}
			// The source first: a move within one mailbox ends with its
			// highest_modseq at last.
			if _, err := tx.Exec(ctx, `UPDATE mailboxes SET total = total - 1, unread = unread - $3, highest_modseq = $4
				WHERE account_id = $1 AND id = $2`, accountID, m.MailboxID, unread, int64(last-1)); err != nil {
				return err
			}
			var uidnext int64
			if err := tx.QueryRow(ctx, `UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = $3, total = total + 1,
				unread = unread + $4 WHERE account_id = $1 AND id = $2 RETURNING uidnext`,
				accountID, toMailbox, int64(last), unread).Scan(&uidnext); err != nil {
				return err
			}
			// The message keeps its id: clients' references stay valid.
			if _, err := tx.Exec(ctx, `UPDATE messages SET mailbox_id = $3, uid = $4, modseq = $5, delivery_key = NULL
				WHERE account_id = $1 AND id = $2`, accountID, m.ID, toMailbox, uidnext-1, int64(last)); err != nil {
				return err
			}
			if err := journal(ctx, tx, accountID, last-1, mail.ChangeMessageRemoved, m.MailboxID, m.ID, m.UID); err != nil {
				return err
			}
			if err := journal(ctx, tx, accountID, last, mail.ChangeMessageAdded, toMailbox, m.ID, uint32(uidnext-1)); err != nil {
				return err
			}
			out = append(out, Moved{ID: m.ID, FromUID: m.UID, ToUID: uint32(uidnext - 1), FromMailbox: m.MailboxID})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("move messages: %w", err)
	}
	return out, nil
}

// Expunge removes the account's messages for good; unknown ids are passed
// over. It returns how many were removed; their blobs are left to the
// collector.
func (s *Store) Expunge(ctx context.Context, accountID string, ids []string) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx pgx.Tx) error {
		gone, err := s.expungeTx(ctx, tx, accountID, ids)
		n = len(gone)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("expunge: %w", err)
	}
	return n, nil
}

// expungeTx removes the account's messages among ids (others, such as
// those another transaction removed first, are passed over) and returns
// those it removed.
func (s *Store) expungeTx(ctx context.Context, tx pgx.Tx, accountID string, ids []string) ([]mail.Message, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	msgs, err := lockMessages(ctx, tx, accountID, ids)
	if err != nil || len(msgs) == 0 {
		return nil, err
	}
	last, err := nextModseq(ctx, tx, accountID, len(msgs))
	if err != nil {
		return nil, err
	}
	first := last - uint64(len(msgs)) + 1
	var freed int64
	for i, m := range msgs {
		unread := 0
		if !m.Flags.Seen {
			unread = 1
		}
		if _, err := tx.Exec(ctx, `DELETE FROM messages WHERE account_id = $1 AND id = $2`, accountID, m.ID); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM attachments WHERE account_id = $1 AND message_id = $2`, accountID, m.ID); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `UPDATE mailboxes SET total = total - 1, unread = unread - $3, highest_modseq = $4
			WHERE account_id = $1 AND id = $2`, accountID, m.MailboxID, unread, int64(first)+int64(i)); err != nil {
			return nil, err
		}
		if err := journal(ctx, tx, accountID, first+uint64(i), mail.ChangeMessageRemoved, m.MailboxID, m.ID, m.UID); err != nil {
			return nil, err
		}
		freed += m.Size
	}
	_, err = tx.Exec(ctx, `UPDATE accounts SET used_bytes = greatest(used_bytes - $2, 0) WHERE id = $1`, accountID, freed)
	return msgs, err
}

// Changes returns journal entries after since, at most max, the last modseq
// returned (or the current one), whether more wait, and whether since is
// too old to answer (the journal was trimmed past it).
func (s *Store) Changes(ctx context.Context, accountID string, since uint64, max int) ([]mail.Change, uint64, bool, bool, error) {
	var current, oldest int64
	if err := s.pool.QueryRow(ctx, `SELECT a.modseq, coalesce((SELECT min(modseq) FROM changes c WHERE c.account_id = a.id), a.modseq + 1)
		FROM accounts a WHERE a.id = $1`, accountID).Scan(&current, &oldest); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, 0, false, false, fmt.Errorf("%w: account", mail.ErrNotFound)
		}
		return nil, 0, false, false, err
	}
	if since > uint64(current) {
		return nil, 0, false, false, fmt.Errorf("%w: state from the future", mail.ErrInvalid)
	}
	if since+1 < uint64(oldest) && since < uint64(current) {
		return nil, uint64(current), false, true, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT modseq, kind, coalesce(mailbox_id::text, ''), coalesce(message_id::text, ''), coalesce(uid, 0)
		FROM changes WHERE account_id = $1 AND modseq > $2 ORDER BY modseq LIMIT $3`, accountID, int64(since), max+1)
	if err != nil {
		return nil, 0, false, false, err
	}
	defer rows.Close()
	var out []mail.Change
	for rows.Next() {
		var c mail.Change
		var modseq, uid int64
		if err := rows.Scan(&modseq, &c.Kind, &c.MailboxID, &c.MessageID, &uid); err != nil {
			return nil, 0, false, false, err
		}
		c.Modseq, c.UID = uint64(modseq), uint32(uid)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, false, false, err
	}
	more := len(out) > max
	if more {
		out = out[:max]
	}
	newState := uint64(current)
	if more {
		newState = out[len(out)-1].Modseq
	}
	return out, newState, more, false, nil
}

// Referenced reports which of the blob refs any message, or any spool
// entry not yet delivered (pending, failed or quarantined), still uses.
func (s *Store) Referenced(ctx context.Context, refs []string) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT blob_ref FROM messages WHERE blob_ref = ANY($1)
		UNION SELECT blob_ref FROM attachments WHERE blob_ref = ANY($1)
		UNION SELECT blob_ref FROM spool WHERE blob_ref = ANY($1) AND state <> 1`, refs)
	if err != nil {
		return nil, err
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(found))
	for _, r := range found {
		out[r] = true
	}
	return out, nil
}

// BulkInsertForBenchmark fills a mailbox with n small messages in one
// statement (a benchmark fixture: no journal entries, no blobs).
func (s *Store) BulkInsertForBenchmark(ctx context.Context, accountID, mailboxID string, n int) error {
	defer s.pool.Exec(ctx, "ANALYZE messages") //nolint:errcheck // statistics, as autovacuum would gather
	return s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO messages (account_id, id, mailbox_id, uid, modseq, received_at, size, subject,
			thread_id, snippet, blob_ref)
			SELECT $1, gen_random_uuid(), $2, g, g, now() - (g || ' seconds')::interval, 2048, 'Message ' || g,
				gen_random_uuid(), 'snippet of message ' || g, 'bench'
			FROM generate_series(1, $3) AS g`, accountID, mailboxID, n); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE mailboxes SET uidnext = $3 + 1, total = $3, unread = $3 WHERE account_id = $1 AND id = $2`,
			accountID, mailboxID, n)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE accounts SET modseq = $2 WHERE id = $1`, accountID, n)
		return err
	})
}
