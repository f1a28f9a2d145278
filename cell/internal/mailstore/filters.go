package mailstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/yugabyte/pgx/v5"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// MaxFilters bounds an account's rules.
const MaxFilters = 200

// Filters returns the account's rules in order.
func (s *Store) Filters(ctx context.Context, accountID string) ([]mail.Filter, error) {
	rows, err := s.pool.Query(ctx, filtersSQL, accountID)
	if err != nil {
		return nil, fmt.Errorf("filters: %w", err)
	}
	return pgx.CollectRows(rows, scanFilter)
}

const filtersSQL = `SELECT id, field, contains, COALESCE(mailbox_id::text, ''), mark_seen, flag, labels, stop
	FROM filters WHERE account_id = $1 ORDER BY position`

func scanFilter(r pgx.CollectableRow) (mail.Filter, error) {
	var f mail.Filter
	err := r.Scan(&f.ID, &f.Field, &f.Contains, &f.MailboxID, &f.MarkSeen, &f.Flag, &f.Labels, &f.Stop)
	return f, err
}

// SetFilters replaces the account's rules. A rule naming a mailbox the
// account does not have is refused (ErrNotFound), as is a rule with an
// unknown field or nothing to match (ErrInvalid).
func (s *Store) SetFilters(ctx context.Context, accountID string, fs []mail.Filter) ([]mail.Filter, error) {
	if len(fs) > MaxFilters {
		return nil, fmt.Errorf("%w: at most %d filters", mail.ErrInvalid, MaxFilters)
	}
	all := []string{}
	for i, f := range fs {
		if err := mail.CheckLabels(f.Labels, mail.MaxFilterLabels, "labels in one filter"); err != nil {
			return nil, fmt.Errorf("filter %d: %w", i+1, err)
		}
		all = append(all, f.Labels...)
		field := strings.ToLower(f.Field)
		if f.Contains == "" || len(f.Contains) > 1000 ||
			(field != "from" && field != "to" && field != "subject" && !(strings.HasPrefix(field, "header:") && len(field) > 7)) {
			return nil, fmt.Errorf("%w: filter %d: field must be from, to, subject or header:<name>, with a value to match", mail.ErrInvalid, i+1)
		}
		if f.MailboxID != "" && !validID(f.MailboxID) {
			return nil, fmt.Errorf("%w: filter %d: mailbox", mail.ErrNotFound, i+1)
		}
		fs[i].Field = field
		fs[i].ID = NewID()
		if fs[i].Labels == nil {
			fs[i].Labels = []string{}
		}
	}
	if err := mail.CheckLabels(all, mail.MaxFiltersLabels, "distinct labels in all filters"); err != nil {
		return nil, err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM filters WHERE account_id = $1`, accountID); err != nil {
			return err
		}
		for i, f := range fs {
			if f.MailboxID != "" {
				var n int
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM mailboxes WHERE account_id = $1 AND id = $2`, accountID, f.MailboxID).Scan(&n); err != nil {
					return err
				}
				if n == 0 {
					return fmt.Errorf("%w: filter %d: mailbox", mail.ErrNotFound, i+1)
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO filters (account_id, id, position, field, contains, mailbox_id, mark_seen, flag, labels, stop)
				VALUES ($1,$2,$3,$4,$5,NULLIF($6,'')::uuid,$7,$8,$9,$10)`,
				accountID, f.ID, i, f.Field, f.Contains, f.MailboxID, f.MarkSeen, f.Flag, f.Labels, f.Stop); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("set filters: %w", err)
	}
	return fs, nil
}

// DeliveryTarget returns the account's mailbox of that special use and its
// filter rules, in one round trip: what the inbound pipeline needs to file
// a message.
func (s *Store) DeliveryTarget(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, []mail.Filter, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT `+mailboxCols+` FROM mailboxes WHERE account_id = $1 AND special_use = $2`, accountID, int16(use))
	b.Queue(filtersSQL, accountID)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	box, err := scanMailbox(br.QueryRow())
	if err != nil {
		return mail.Mailbox{}, nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return mail.Mailbox{}, nil, fmt.Errorf("filters: %w", err)
	}
	fs, err := pgx.CollectRows(rows, scanFilter)
	if err != nil {
		return mail.Mailbox{}, nil, fmt.Errorf("filters: %w", err)
	}
	return box, fs, nil
}
