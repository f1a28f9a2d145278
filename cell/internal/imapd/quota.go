package imapd

import (
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// The account has one quota root, "", over all its mailboxes: storage, as
// the API counts it (RFC 9208 §5.1, in units of 1024 octets, rounded up).

// QuotaRoots answers GETQUOTAROOT: every existing mailbox is under "".
func (se *session) QuotaRoots(mailbox string) ([]string, error) {
	ctx, cancel := se.op()
	defer cancel()
	if _, err := se.mailbox(ctx, mailbox); err != nil {
		return nil, se.toIMAPError("getquotaroot", err)
	}
	return []string{""}, nil
}

// Quota answers GETQUOTA for the account's root, read afresh.
func (se *session) Quota(root string) ([]imapserver.QuotaResource, error) {
	if root != "" {
		return nil, imapNo(imap.ResponseCodeNonExistent, "No such quota root")
	}
	ctx, cancel := se.op()
	defer cancel()
	a, err := se.srv.cfg.Store.AccountByAddress(ctx, se.acct.Address)
	if err != nil {
		return nil, se.toIMAPError("getquota", err)
	}
	if a.QuotaBytes <= 0 {
		return nil, nil // no limit: a root without resources
	}
	return []imapserver.QuotaResource{{Type: imap.QuotaResourceStorage,
		Usage: (max(a.UsedBytes, 0) + 1023) / 1024, Limit: a.QuotaBytes / 1024}}, nil
}
