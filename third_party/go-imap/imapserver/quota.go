package imapserver

// (cellmail patch) The server side of QUOTA (RFC 9208), which upstream's
// server lacks: GETQUOTA, GETQUOTAROOT, and SETQUOTA refused.

import (
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/internal/imapwire"
)

// QuotaResource is one resource of a quota root: its usage and limit, in
// the resource's unit (STORAGE: units of 1024 octets, RFC 9208 §5.1).
type QuotaResource struct {
	Type         imap.QuotaResourceType
	Usage, Limit int64
}

// SessionQuota is implemented by sessions that tell quotas (RFC 9208).
type SessionQuota interface {
	// QuotaRoots returns the quota roots of a mailbox (GETQUOTAROOT).
	QuotaRoots(mailbox string) ([]string, error)
	// Quota returns the resources of a quota root; an unknown root is an
	// error.
	Quota(root string) ([]QuotaResource, error)
}

// handleGetQuota answers GETQUOTA quota-root (RFC 9208 §4.2).
func (c *Conn) handleGetQuota(dec *imapwire.Decoder) error {
	var root string
	if !dec.ExpectSP() || !dec.ExpectAString(&root) || !dec.ExpectCRLF() {
		return dec.Err()
	}
	s, err := c.quotaSession()
	if err != nil {
		return err
	}
	res, err := s.Quota(root)
	if err != nil {
		return err
	}
	return c.writeQuota(root, res)
}

// handleGetQuotaRoot answers GETQUOTAROOT mailbox (RFC 9208 §4.3): the
// mailbox's roots, then each root's QUOTA.
func (c *Conn) handleGetQuotaRoot(dec *imapwire.Decoder) error {
	var mailbox string
	if !dec.ExpectSP() || !dec.ExpectMailbox(&mailbox) || !dec.ExpectCRLF() {
		return dec.Err()
	}
	s, err := c.quotaSession()
	if err != nil {
		return err
	}
	roots, err := s.QuotaRoots(mailbox)
	if err != nil {
		return err
	}
	enc := newResponseEncoder(c)
	enc.Atom("*").SP().Atom("QUOTAROOT").SP().Mailbox(mailbox)
	for _, r := range roots {
		enc.SP().String(r)
	}
	err = enc.CRLF()
	enc.end()
	if err != nil {
		return err
	}
	for _, r := range roots {
		res, err := s.Quota(r)
		if err != nil {
			return err
		}
		if err := c.writeQuota(r, res); err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) quotaSession() (SessionQuota, error) {
	if err := c.checkState(imap.ConnStateAuthenticated); err != nil {
		return nil, err
	}
	s, ok := c.session.(SessionQuota)
	if !ok {
		return nil, newClientBugError("QUOTA is not supported")
	}
	return s, nil
}

func (c *Conn) writeQuota(root string, res []QuotaResource) error {
	enc := newResponseEncoder(c)
	defer enc.end()
	enc.Atom("*").SP().Atom("QUOTA").SP().String(root).SP().List(len(res), func(i int) {
		enc.Atom(string(res[i].Type)).SP().Number64(res[i].Usage).SP().Number64(res[i].Limit)
	})
	return enc.CRLF()
}

// handleSetQuota reads SETQUOTA quota-root (resource limit ...) and refuses
// it: limits are set by the operator, not by the user (RFC 9208 §4.2.3).
func (c *Conn) handleSetQuota(dec *imapwire.Decoder) error {
	var root string
	if !dec.ExpectSP() || !dec.ExpectAString(&root) || !dec.ExpectSP() {
		return dec.Err()
	}
	err := dec.ExpectList(func() error {
		var name string
		var limit int64
		if !dec.ExpectAtom(&name) || !dec.ExpectSP() || !dec.ExpectNumber64(&limit) {
			return dec.Err()
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !dec.ExpectCRLF() {
		return dec.Err()
	}
	if err := c.checkState(imap.ConnStateAuthenticated); err != nil {
		return err
	}
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "Quotas are set by the administrator"}
}
