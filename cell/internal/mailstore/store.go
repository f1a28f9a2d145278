// Package mailstore keeps a cell's metadata in SQL (YugabyteDB in
// production, PostgreSQL here): accounts, mailboxes, messages, the
// per-account change journal and sessions. It is the only package that
// imports the database driver. Every statement is valid on both servers.
//
// Consistency: each account's journal modseq is allocated by updating the
// account row, and each mailbox's UIDs by updating the mailbox row, inside
// the transaction that writes the change; so modseqs and UIDs of an account
// are gap-tolerant, strictly rising and never reused.
package mailstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/yugabyte/pgx/v5"
	"github.com/yugabyte/pgx/v5/pgconn"
	"github.com/yugabyte/pgx/v5/pgxpool"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// Store is a handle on a cell's database.
type Store struct {
	pool     db
	log      *slog.Logger
	yugabyte bool
}

// Open connects and applies pending migrations. The smart driver's load
// balancing stays off unless the DSN asks for it (see DEPENDENCIES.md).
func Open(ctx context.Context, dsn string, log *slog.Logger) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("mailstore: parse DSN: %w", err)
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("mailstore: connect: %w", err)
	}
	s := &Store{pool: db{pool}, log: log}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the connections.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// NewID returns a random UUID (version 4) in text form.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// validID reports whether s has the form of a UUID, so that a malformed id
// from a client answers not found instead of a database error.
func validID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// tx runs f in a transaction, retrying serialization failures and
// deadlocks (YugabyteDB reports conflicts as 40001) a few times.
func (s *Store) tx(ctx context.Context, f func(tx pgx.Tx) error) error {
	return s.retry(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, f) })
}

// retry runs f (one statement in its own implicit transaction, or a whole
// transaction), again after a serialization failure or a deadlock, five
// times at most, with a short growing pause while the conflicting
// transaction finishes.
func (s *Store) retry(ctx context.Context, f func() error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = f()
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01") {
			time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
			continue
		}
		return err
	}
	return err
}

// interval is d as a PostgreSQL interval literal (passed as text, cast
// with ::interval).
func interval(d time.Duration) string { return fmt.Sprintf("%d milliseconds", d.Milliseconds()) }

// nextModseq allocates n journal positions for an account and returns the
// last one (the first is last-n+1). It locks the account row until commit.
func nextModseq(ctx context.Context, tx pgx.Tx, accountID string, n int) (uint64, error) {
	var last int64
	err := tx.QueryRow(ctx, `UPDATE accounts SET modseq = modseq + $2 WHERE id = $1 RETURNING modseq`, accountID, n).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: account", mail.ErrNotFound)
	}
	return uint64(last), err
}

const journalSQL = `INSERT INTO changes (account_id, modseq, kind, mailbox_id, message_id, uid)
	VALUES ($1, $2, $3, NULLIF($4, '')::uuid, NULLIF($5, '')::uuid, NULLIF($6, 0))`

func journal(ctx context.Context, tx pgx.Tx, accountID string, modseq uint64, kind, mailboxID, messageID string, uid uint32) error {
	_, err := tx.Exec(ctx, journalSQL, accountID, int64(modseq), kind, mailboxID, messageID, int64(uid))
	return err
}

// CreateAccount stores a new account with its default mailboxes.
func (s *Store) CreateAccount(ctx context.Context, a mail.Account) (mail.Account, error) {
	a.ID = NewID()
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO accounts (id, address, domain, placement_key, jurisdiction, key_hash,
			display_name, password_hash, quota_bytes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING created_at`,
			a.ID, a.Address, a.Domain, a.PlacementKey, a.Jurisdiction, int64(a.KeyHash), a.DisplayName,
			a.PasswordHash, a.QuotaBytes).Scan(&a.CreatedAt)
		if err != nil {
			return err
		}
		uidvalidity := int64(uint32(time.Now().Unix()))
		for _, mb := range mail.DefaultMailboxes {
			if _, err := tx.Exec(ctx, `INSERT INTO mailboxes (account_id, id, name, special_use, uidvalidity)
				VALUES ($1, $2, $3, $4, $5)`, a.ID, NewID(), mb.Name, int16(mb.Use), uidvalidity); err != nil {
				return err
			}
			if err := subscribeTx(ctx, tx, a.ID, mb.Name); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE accounts SET uidvalidity_last = $2 WHERE id = $1`, a.ID, uidvalidity)
		return err
	})
	if isUnique(err) {
		return mail.Account{}, fmt.Errorf("%w: account %s", mail.ErrExists, a.Address)
	}
	if err != nil {
		return mail.Account{}, fmt.Errorf("create account: %w", err)
	}
	return a, nil
}

const accountCols = `id, address, domain, placement_key, jurisdiction, key_hash, display_name, password_hash,
	quota_bytes, used_bytes, created_at`

func scanAccount(row pgx.Row) (mail.Account, error) {
	var a mail.Account
	var kh int64
	err := row.Scan(&a.ID, &a.Address, &a.Domain, &a.PlacementKey, &a.Jurisdiction, &kh, &a.DisplayName,
		&a.PasswordHash, &a.QuotaBytes, &a.UsedBytes, &a.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("%w: account", mail.ErrNotFound)
	}
	a.KeyHash = uint64(kh)
	return a, err
}

// AccountByAddress finds an account by its canonical address.
func (s *Store) AccountByAddress(ctx context.Context, address string) (mail.Account, error) {
	return scanAccount(s.pool.QueryRow(ctx, `SELECT `+accountCols+` FROM accounts WHERE address = $1`, address))
}

// AccountByID finds an account by id.
func (s *Store) AccountByID(ctx context.Context, id string) (mail.Account, error) {
	if !validID(id) {
		return mail.Account{}, fmt.Errorf("%w: account", mail.ErrNotFound)
	}
	return scanAccount(s.pool.QueryRow(ctx, `SELECT `+accountCols+` FROM accounts WHERE id = $1`, id))
}

// CountPlaced counts accounts under a domain, a placement key, or in a
// key-hash interval [start, end) of a jurisdiction.
func (s *Store) CountPlaced(ctx context.Context, domain, placementKey, jurisdiction string, start, end uint64) (uint64, error) {
	var n int64
	var err error
	switch {
	case domain != "":
		err = s.pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE domain = $1`, domain).Scan(&n)
	case placementKey != "":
		err = s.pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE placement_key = $1`, placementKey).Scan(&n)
	default:
		err = s.pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE jurisdiction = $1 AND key_hash >= $2 AND key_hash < $3`,
			jurisdiction, int64(start), int64(min(end, 1<<56))).Scan(&n)
	}
	if err != nil {
		return 0, fmt.Errorf("count placed: %w", err)
	}
	return uint64(n), nil
}

// Session kinds.
const (
	SessionAccess  int16 = 1
	SessionRefresh int16 = 2
)

// Session is a stored token's record.
type Session struct {
	AccountID string
	Kind      int16
	Family    string
	ExpiresAt time.Time
}

// CreateSession stores a token hash.
func (s *Store) CreateSession(ctx context.Context, hash []byte, sess Session) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO sessions (token_hash, account_id, kind, family, expires_at) VALUES ($1,$2,$3,$4,$5)`,
		hash, sess.AccountID, sess.Kind, sess.Family, sess.ExpiresAt)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// SessionByHash finds a live session by its token hash.
func (s *Store) SessionByHash(ctx context.Context, hash []byte) (Session, error) {
	var sess Session
	err := s.pool.QueryRow(ctx, `SELECT account_id, kind, family, expires_at FROM sessions WHERE token_hash = $1 AND expires_at > now()`,
		hash).Scan(&sess.AccountID, &sess.Kind, &sess.Family, &sess.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return sess, mail.ErrUnauthorized
	}
	return sess, err
}

// DeleteSessionFamily revokes every token of one login (access and
// refresh tokens issued from it).
func (s *Store) DeleteSessionFamily(ctx context.Context, family string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE family = $1`, family)
	return err
}

// DeleteAccountSessions revokes every token of an account.
func (s *Store) DeleteAccountSessions(ctx context.Context, accountID string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE account_id = $1`, accountID)
	return err
}

// ConsumeSession deletes a token and reports whether it existed (refresh
// tokens are used once).
func (s *Store) ConsumeSession(ctx context.Context, hash []byte) (bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE token_hash = $1 AND expires_at > now()`, hash)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// ContentBytesForBenchmark is how many bytes of message content the
// metadata store holds: inline blobs, message prefixes and spool bodies (a
// benchmark's measure of storage; the blob store's files are counted
// apart).
func (s *Store) ContentBytesForBenchmark(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT coalesce(sum(octet_length(data)), 0) FROM inline_blobs) +
		(SELECT coalesce(sum(octet_length(prefix)), 0) FROM messages) +
		(SELECT coalesce(sum(octet_length(body)), 0) FROM spool)`).Scan(&n)
	return n, err
}
