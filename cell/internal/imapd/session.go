package imapd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/controlplane/routing"
	"github.com/cellmail/cellmail/internal/oneline"
)

// session is one IMAP connection.
type session struct {
	srv    *Server
	conn   *imapserver.Conn
	ctx    context.Context
	cancel context.CancelFunc
	acct   mail.Account
	authed bool
	sel    *selected
	// client is the client's address as the router saw it (its ID
	// x-originating-ip), empty until then; epoch is the router's map
	// epoch (its ID x-cellmail-epoch, the routing contract), which the
	// fence checks at login, 0 until then. loginTried and idSeen say that
	// they can no longer be set.
	client             string
	epoch              uint64
	loginTried, idSeen bool
}

var (
	_ imapserver.SessionIMAP4rev2      = (*session)(nil)
	_ imapserver.SessionUnauthenticate = (*session)(nil)
	_ imapserver.SessionAppendLimit    = (*session)(nil)
)

const delim = '/'

// op is the context of one command.
func (se *session) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(se.ctx, opTimeout)
}

func (se *session) Close() error {
	se.cancel()
	select {
	case <-se.srv.sem:
	default:
	}
	return nil
}

// Login checks the password (argon2id) of an address this cell owns, as of
// the router's map epoch (fromRouter): an address another cell owns, or
// one frozen by a move, is answered with the routing contract's response
// code, "NO [CELLMAIL-WRONG-CELL owner epoch]" or "NO [CELLMAIL-MOVING
// ms]" (RFC 9051 §7.1 resp-text-code), which the router reads to re-route
// or wait. The answer is the same for an unknown address and a wrong
// password. Every
// attempt — LOGIN, AUTHENTICATE PLAIN (which go-imap brings here), also
// after UNAUTHENTICATE (RFC 8437) — passes the login limits first, for the
// client's address (auth.LoginLimits; runbooks/login-limits.md).
func (se *session) Login(username, password string) error {
	ctx, cancel := se.op()
	defer cancel()
	se.loginTried = true
	if len(password) > maxPassword || len(username) > 320 || !utf8.ValidString(username) {
		return imapserver.ErrAuthFailed
	}
	rt, err := se.srv.cfg.Fence.Check(ctx, username, se.epoch)
	var wrong *mail.WrongCellError
	var moving *mail.MovingError
	if errors.As(err, &wrong) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCode(wrong.ResponseCode()),
			Text: "This mailbox is served by another cell, reconnect"}
	}
	if errors.As(err, &moving) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCode(moving.ResponseCode()),
			Text: "This mailbox is moving, try again shortly"}
	}
	if errors.Is(err, mail.ErrUnavailable) || errors.Is(err, mail.ErrStaleMap) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Try again shortly"}
	}
	if err != nil {
		return imapserver.ErrAuthFailed
	}
	addr := rt.Address.String()
	att, err := se.srv.cfg.Logins.Begin(ctx, addr, se.source())
	var limited *auth.LimitError
	if errors.As(err, &limited) {
		se.srv.log.Info("imap login refused by the login limits", "address", addr, "source", se.source(), "retry_after", limited.RetryAfter)
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
			Text: fmt.Sprintf("Too many failed logins, try again in %ds", limited.RetrySeconds())}
	}
	if err != nil {
		return se.toIMAPError("login", err)
	}
	a, err := se.srv.cfg.Store.AccountByAddress(ctx, addr)
	if err != nil && !errors.Is(err, mail.ErrNotFound) {
		att.Abandoned(ctx)
		return se.toIMAPError("login", err)
	}
	if verr := se.srv.cfg.Hasher.Verify(ctx, a.PasswordHash, password); verr != nil || err != nil {
		if verr != nil && !errors.Is(verr, auth.ErrMismatch) {
			se.srv.log.Error("password verification failed", "address", addr, "err", verr)
			att.Abandoned(ctx)
			return imapserver.ErrAuthFailed
		}
		att.Failed(ctx)
		se.srv.log.Info("imap login failed", "address", addr, "source", se.source())
		return imapserver.ErrAuthFailed
	}
	att.Succeeded(ctx)
	se.acct, se.authed = a, true
	return nil
}

// source is the login limits' source: the address the router named, or the
// peer's own.
func (se *session) source() string {
	if se.client != "" {
		return auth.Source(se.client)
	}
	return auth.Source(remote(se.conn))
}

// fromRouter takes the client's address and the router's map epoch from
// the first ID of a connection (RFC 2971), before any login, when the peer
// is a trusted proxy: the router sends them so ("x-originating-ip", as
// Dovecot's proxies do, and routing.EpochIDField). Later IDs — a client's
// own, sent through the splice — change nothing.
func (se *session) fromRouter(client *imap.IDData, from string) {
	first := !se.idSeen && !se.loginTried
	se.idSeen = true
	if !first || client == nil || (client.Extra["x-originating-ip"] == "" && client.Extra[routing.EpochIDField] == "") {
		return
	}
	peer, err := netip.ParseAddr(from)
	if err != nil {
		return
	}
	peer = peer.Unmap()
	for _, p := range se.srv.cfg.TrustedProxies {
		if p.Contains(peer) {
			if ip, err := netip.ParseAddr(client.Extra["x-originating-ip"]); err == nil {
				se.client = ip.String()
			}
			if v := client.Extra[routing.EpochIDField]; v != "" {
				if e, err := routing.ParseEpoch(v); err == nil {
					se.epoch = e
				} else {
					se.srv.log.Warn("imap: bad map epoch in the router's ID", "peer", peer, "err", err)
				}
			}
			return
		}
	}
	se.srv.log.Info("imap: x-originating-ip or map epoch from an untrusted peer ignored", "peer", peer)
}

func remote(c *imapserver.Conn) string {
	if c == nil || c.NetConn() == nil {
		return ""
	}
	host, _, _ := net.SplitHostPort(c.NetConn().RemoteAddr().String())
	return host
}

func (se *session) Unauthenticate() error {
	se.sel, se.acct, se.authed = nil, mail.Account{}, false
	return nil
}

func (se *session) AppendLimit() uint32 { return MaxAppend }

func (se *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: delim}}}, nil
}

// mailbox finds a mailbox by its IMAP name.
func (se *session) mailbox(ctx context.Context, name string) (mail.Mailbox, error) {
	name = strings.TrimSuffix(name, string(delim))
	mb, err := se.srv.cfg.Store.MailboxByName(ctx, se.acct.ID, name)
	if errors.Is(err, mail.ErrNotFound) {
		return mb, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "No such mailbox"}
	}
	return mb, err
}

// checkName applies the store's rules for a new mailbox name
// (mail.MailboxName).
func checkName(name string) error {
	if _, err := mail.MailboxName(name); err != nil {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: oneline.Text(err.Error(), 200)}
	}
	return nil
}

// Create makes a mailbox; a trailing delimiter only says the client means
// to make mailboxes under it (RFC 9051 §6.3.4).
func (se *session) Create(name string, _ *imap.CreateOptions) error {
	ctx, cancel := se.op()
	defer cancel()
	name = strings.TrimSuffix(name, string(delim))
	if strings.EqualFold(name, "INBOX") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "INBOX exists"}
	}
	if err := checkName(name); err != nil {
		return err
	}
	// CREATE does not subscribe (RFC 3501 §6.3.3, §6.3.6): the client
	// subscribes if it wants to. (Mailboxes the API makes start
	// subscribed.)
	_, err := se.srv.cfg.Store.CreateMailbox(ctx, se.acct.ID, name, false)
	se.notify(ctx, err)
	return se.toIMAPError("create", err)
}

func (se *session) Delete(name string) error {
	ctx, cancel := se.op()
	defer cancel()
	if strings.EqualFold(name, "INBOX") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "INBOX cannot be deleted"}
	}
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return se.toIMAPError("delete", err)
	}
	if mb.SpecialUse != mail.UseNone {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "A special-use mailbox stays"}
	}
	err = se.srv.cfg.Store.DeleteMailbox(ctx, se.acct.ID, mb.ID)
	if errors.Is(err, mail.ErrInvalid) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeHasChildren, Text: "Delete the mailboxes under it first"}
	}
	se.notify(ctx, err)
	return se.toIMAPError("delete", err)
}

func (se *session) Rename(name, newName string, _ *imap.RenameOptions) error {
	ctx, cancel := se.op()
	defer cancel()
	if strings.EqualFold(name, "INBOX") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
			Text: "INBOX cannot be renamed; move its messages instead"}
	}
	newName = strings.TrimSuffix(newName, string(delim))
	if err := checkName(newName); err != nil {
		return err
	}
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return se.toIMAPError("rename", err)
	}
	_, err = se.srv.cfg.Store.RenameMailbox(ctx, se.acct.ID, mb.ID, newName)
	se.notify(ctx, err)
	return se.toIMAPError("rename", err)
}

func (se *session) Subscribe(name string) error   { return se.subscribe(name, true) }
func (se *session) Unsubscribe(name string) error { return se.subscribe(name, false) }

func (se *session) subscribe(name string, on bool) error {
	ctx, cancel := se.op()
	defer cancel()
	if !on {
		// A name whose mailbox is gone can still be unsubscribed.
		name = strings.TrimSuffix(name, string(delim))
		if strings.EqualFold(name, "INBOX") {
			name = "INBOX"
		}
		return se.toIMAPError("unsubscribe", se.srv.cfg.Store.SetSubscribed(ctx, se.acct.ID, name, false))
	}
	// SUBSCRIBE checks that the mailbox exists (RFC 9051 §6.3.7 allows
	// it) and records its name as stored.
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return se.toIMAPError("subscribe", err)
	}
	return se.toIMAPError("subscribe", se.srv.cfg.Store.SetSubscribed(ctx, se.acct.ID, mb.Name, true))
}

// useAttr is the RFC 6154 attribute of a special-use mailbox.
func useAttr(u mail.SpecialUse) imap.MailboxAttr {
	switch u {
	case mail.UseSent:
		return imap.MailboxAttrSent
	case mail.UseDrafts:
		return imap.MailboxAttrDrafts
	case mail.UseTrash:
		return imap.MailboxAttrTrash
	case mail.UseJunk:
		return imap.MailboxAttrJunk
	case mail.UseArchive:
		return imap.MailboxAttrArchive
	}
	return ""
}

// List answers LIST and LSUB (RFC 9051 §6.3.9, RFC 5258, RFC 6154,
// RFC 5819 LIST-STATUS). A level with no mailbox of its own but mailboxes
// under it is listed \NonExistent (\Noselect).
func (se *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	ctx, cancel := se.op()
	defer cancel()
	if len(patterns) == 0 || len(patterns) == 1 && patterns[0] == "" {
		// The hierarchy delimiter query, LIST "" "" (RFC 3501 §6.3.8,
		// RFC 9051 §6.3.9): the library passes an empty pattern as none.
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: delim})
	}
	boxes, _, err := se.srv.cfg.Store.ListMailboxes(ctx, se.acct.ID)
	if err != nil {
		return se.toIMAPError("list", err)
	}
	if options == nil {
		options = &imap.ListOptions{}
	}
	// Subscriptions matter only to LSUB and LIST (SUBSCRIBED) or RETURN
	// (SUBSCRIBED): a plain LIST, which clients send at every sync, does
	// not read them.
	var subs map[string]bool
	if options.SelectSubscribed || options.ReturnSubscribed {
		if subs, err = se.srv.cfg.Store.Subscriptions(ctx, se.acct.ID); err != nil {
			return se.toIMAPError("list", err)
		}
	}
	names := map[string]mail.Mailbox{}
	implied := map[string]bool{}
	parents := map[string]bool{}
	for _, mb := range boxes {
		names[mb.Name] = mb
		parts := strings.Split(mb.Name, string(delim))
		for i := 1; i < len(parts); i++ {
			p := strings.Join(parts[:i], string(delim))
			parents[p] = true
			implied[p] = true
		}
	}
	all := make([]string, 0, len(names)+len(implied))
	for n := range names {
		all = append(all, n)
	}
	for n := range implied {
		if _, ok := names[n]; !ok {
			all = append(all, n)
		}
	}
	if options.SelectSubscribed {
		// A subscription whose mailbox is gone is still listed, as
		// \NonExistent (RFC 5258 §3.1, RFC 3501 §6.3.9).
		for n := range subs {
			if _, ok := names[n]; !ok && !implied[n] {
				all = append(all, n) // implied names are in all already
			}
		}
	}
	sortNames(all)
	matches := func(name string) bool {
		for _, p := range patterns {
			if imapserver.MatchList(name, delim, ref, p) {
				return true
			}
		}
		return false
	}
	// subscribedBelow: a subscribed mailbox under name that the patterns
	// do not match themselves, for LSUB's \Noselect levels (RFC 3501
	// §6.3.9) and RECURSIVEMATCH's CHILDINFO (RFC 5258 §3.5).
	subscribedBelow := func(name string) bool {
		prefix := name + string(delim)
		for n := range subs {
			if strings.HasPrefix(n, prefix) && !matches(n) {
				return true
			}
		}
		return false
	}
	for _, name := range all {
		if !matches(name) {
			continue
		}
		mb, exists := names[name]
		if options.SelectSubscribed && subs[name] && !exists {
			// A subscription without its mailbox: \NonExistent, which
			// implies \NoSelect (RFC 5258 §3.1); LSUB has only \Noselect
			// (RFC 3501 §6.3.9).
			data := &imap.ListData{Mailbox: name, Delim: delim}
			switch {
			case w.LSub():
				data.Attrs = []imap.MailboxAttr{imap.MailboxAttrNoSelect}
			default:
				data.Attrs = []imap.MailboxAttr{imap.MailboxAttrSubscribed, imap.MailboxAttrNonExistent}
				if options.ReturnChildren && parents[name] {
					data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
				}
				if options.SelectRecursiveMatch && subscribedBelow(name) {
					data.ChildInfo = &imap.ListDataChildInfo{Subscribed: true}
				}
			}
			if err := w.WriteList(data); err != nil {
				return err
			}
			continue
		}
		if options.SelectSubscribed && (!exists || !subs[name]) {
			switch {
			case w.LSub() && subscribedBelow(name):
				if err := w.WriteList(&imap.ListData{Mailbox: name, Delim: delim,
					Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}}); err != nil {
					return err
				}
			case options.SelectRecursiveMatch && subscribedBelow(name):
				data := &imap.ListData{Mailbox: name, Delim: delim, ChildInfo: &imap.ListDataChildInfo{Subscribed: true}}
				if !exists {
					data.Attrs = append(data.Attrs, imap.MailboxAttrNonExistent, imap.MailboxAttrNoSelect)
				}
				if options.ReturnChildren && parents[name] {
					data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
				}
				if err := w.WriteList(data); err != nil {
					return err
				}
			}
			continue
		}
		if options.SelectSpecialUse && (!exists || mb.SpecialUse == mail.UseNone || mb.SpecialUse == mail.UseInbox) {
			continue
		}
		data := &imap.ListData{Mailbox: name, Delim: delim}
		if !exists {
			data.Attrs = append(data.Attrs, imap.MailboxAttrNonExistent, imap.MailboxAttrNoSelect)
		}
		if parents[name] {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
		} else {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if exists {
			if a := useAttr(mb.SpecialUse); a != "" {
				data.Attrs = append(data.Attrs, a)
			}
			if (options.ReturnSubscribed || options.SelectSubscribed) && subs[name] {
				data.Attrs = append(data.Attrs, imap.MailboxAttrSubscribed)
			}
			if options.ReturnStatus != nil {
				st, err := se.status(ctx, mb, options.ReturnStatus)
				if err != nil {
					return se.toIMAPError("list", err)
				}
				data.Status = st
			}
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}

// sortNames puts INBOX first, then the rest by name.
func sortNames(names []string) {
	less := func(a, b string) bool {
		if a == "INBOX" {
			return b != "INBOX"
		}
		if b == "INBOX" {
			return false
		}
		return a < b
	}
	for i := 1; i < len(names); i++ {
		for j := i; j > 0 && less(names[j], names[j-1]); j-- {
			names[j], names[j-1] = names[j-1], names[j]
		}
	}
}

func (se *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	ctx, cancel := se.op()
	defer cancel()
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return nil, se.toIMAPError("status", err)
	}
	st, err := se.status(ctx, mb, options)
	return st, se.toIMAPError("status", err)
}

func (se *session) status(ctx context.Context, mb mail.Mailbox, options *imap.StatusOptions) (*imap.StatusData, error) {
	st := &imap.StatusData{Mailbox: mb.Name}
	u32 := func(n int) *uint32 { v := uint32(max(n, 0)); return &v }
	if options.NumMessages {
		st.NumMessages = u32(mb.Total)
	}
	if options.NumRecent {
		// Those no session has been told of, and those this one holds
		// as \Recent (RFC 3501 §2.3.2, §6.3.10).
		n, err := se.srv.cfg.Store.RecentCount(ctx, se.acct.ID, mb.ID)
		if err != nil {
			return nil, err
		}
		if s := se.sel; s != nil && s.box.ID == mb.ID && !s.readOnly {
			n += len(s.recent)
		}
		st.NumRecent = u32(n)
	}
	if options.UIDNext {
		st.UIDNext = imap.UID(mb.UIDNext)
	}
	if options.UIDValidity {
		st.UIDValidity = mb.UIDValidity
	}
	if options.NumUnseen {
		st.NumUnseen = u32(mb.Unread)
	}
	if options.AppendLimit {
		st.AppendLimit = new(uint32)
		*st.AppendLimit = MaxAppend
	}
	if options.HighestModSeq {
		st.HighestModSeq = max(mb.HighestModseq, 1)
	}
	if options.NumDeleted || options.Size {
		deleted, size, err := se.srv.cfg.Store.MailboxStats(ctx, se.acct.ID, mb.ID)
		if err != nil {
			return nil, err
		}
		if options.NumDeleted {
			st.NumDeleted = u32(deleted)
		}
		if options.Size {
			st.Size = &size
		}
	}
	return st, nil
}

// notify tells the account's other sessions (here and in other processes)
// that something changed, when err is nil.
func (se *session) notify(ctx context.Context, err error) {
	if err != nil {
		return
	}
	if se.srv.cfg.Publish != nil {
		_ = se.srv.cfg.Publish.Publish(ctx, changesChannel(se.acct.ID), []byte("imap"))
	} else if se.srv.cfg.Hub != nil {
		se.srv.cfg.Hub.Wake(se.acct.ID)
	}
}

func imapNo(code imap.ResponseCode, format string, args ...any) error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: fmt.Sprintf(format, args...)}
}
