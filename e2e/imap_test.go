package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// mx connects to the router's MX as a sender would, past EHLO; the
// connection is closed when the test ends.
func (s *stack) mx(t testing.TB) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(s.smtp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("sender.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

// deliver sends one message through the router's MX.
func (s *stack) deliver(t testing.TB, to, subject, body string) {
	t.Helper()
	msg := fmt.Sprintf("From: Sender <sender@elsewhere.test>\r\nTo: %s\r\nSubject: %s\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"+
		"Message-ID: <%d.%s@elsewhere.test>\r\n\r\n%s\r\n", to, subject, time.Now().UnixNano(), strings.ReplaceAll(subject, " ", "."), body)
	c := s.mx(t)
	defer c.Close() // deliver is called in loops: one connection at a time
	if err := c.SendMail("sender@elsewhere.test", []string{to}, strings.NewReader(msg)); err != nil {
		t.Fatalf("deliver to %s: %v", to, err)
	}
}

func imapDial(t testing.TB, addr string, h *imapclient.UnilateralDataHandler) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}, UnilateralDataHandler: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func imapLogin(t testing.TB, addr, user string, h *imapclient.UnilateralDataHandler) *imapclient.Client {
	t.Helper()
	c := imapDial(t, addr, h)
	if err := c.Login(user, "correct horse battery").Wait(); err != nil {
		t.Fatalf("IMAP login %s: %v", user, err)
	}
	return c
}

func subjects(t testing.TB, c *imapclient.Client, set imap.NumSet) []string {
	t.Helper()
	msgs, err := c.Fetch(set, &imap.FetchOptions{Envelope: true, UID: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, m.Envelope.Subject)
	}
	return out
}

func waitFor(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One scenario per command group, through the router's IMAP ports, on
// the same data the API serves.
func TestIMAPThroughTheRouter(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	for i := 1; i <= 3; i++ { // one at a time: UIDs in this order
		s.deliver(t, alice.addr, fmt.Sprintf("hello %d", i), fmt.Sprintf("body number %d zebra%d", i, i))
		waitInbox(t, alice, i)
	}

	// Wrong password and unknown user: the same NO.
	c := imapDial(t, s.imaps, nil)
	if err := c.Login(alice.addr, "wrong").Wait(); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("wrong password: %v", err)
	}
	if err := c.Login("nobody@eu.example", "x").Wait(); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("unknown user: %v", err)
	}
	c.Close()

	var exists atomic.Uint32
	var flagUpdates atomic.Int32
	h := &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists.Store(*d.NumMessages)
			}
		},
		Fetch: func(m *imapclient.FetchMessageData) {
			for it := m.Next(); it != nil; it = m.Next() {
				if _, ok := it.(imapclient.FetchItemDataFlags); ok {
					flagUpdates.Add(1)
				}
			}
		},
	}
	c = imapLogin(t, s.imaps, alice.addr, h)
	for _, want := range []imap.Cap{imap.CapIMAP4rev2, imap.CapUIDPlus, imap.CapMove, imap.CapSpecialUse, imap.CapIdle, imap.CapLiteralPlus, imap.CapNamespace, imap.CapESearch} {
		if !c.Caps().Has(want) {
			t.Errorf("capability %s missing after login: %v", want, c.Caps())
		}
	}

	// LIST with SPECIAL-USE attributes.
	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string][]imap.MailboxAttr{}
	for _, b := range boxes {
		attrs[b.Mailbox] = b.Attrs
	}
	for name, attr := range map[string]imap.MailboxAttr{"Sent": imap.MailboxAttrSent, "Trash": imap.MailboxAttrTrash,
		"Junk": imap.MailboxAttrJunk, "Drafts": imap.MailboxAttrDrafts, "Archive": imap.MailboxAttrArchive} {
		if !slices.Contains(attrs[name], attr) {
			t.Errorf("LIST %s: %v, want %s", name, attrs[name], attr)
		}
	}
	if _, ok := attrs["INBOX"]; !ok {
		t.Errorf("LIST has no INBOX: %v", attrs)
	}

	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 3 || sel.UIDValidity == 0 || sel.UIDNext != 4 {
		t.Fatalf("SELECT INBOX: %+v", sel)
	}
	if got := subjects(t, c, imap.SeqSetNum(1, 2, 3)); !slices.Equal(got, []string{"hello 1", "hello 2", "hello 3"}) {
		t.Fatalf("subjects: %v", got)
	}
	// BODY[] without PEEK sets \Seen, and the API shows it.
	msgs, err := c.Fetch(imap.UIDSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch body: %v %v", msgs, err)
	}
	if b := msgs[0].FindBodySection(&imap.FetchItemBodySection{}); !strings.Contains(string(b), "body number 1 zebra1") {
		t.Fatalf("body: %q", b)
	}
	inbox := alice.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	apiMsgs := alice.list(t, inbox.Id) // newest first: uid 3, 2, 1
	if !apiMsgs[2].Seen || apiMsgs[1].Seen {
		t.Fatalf("API after IMAP read: %v", apiMsgs)
	}
	// A flag set over IMAP shows in the API.
	if err := c.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged, "$Important"}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	apiMsgs = alice.list(t, inbox.Id)
	if !apiMsgs[1].Flagged || !slices.Contains(apiMsgs[1].Labels, "$Important") {
		t.Fatalf("API after IMAP STORE: %+v", apiMsgs[1])
	}
	// A flag set in the API shows in IMAP, unsolicited on NOOP.
	tr := true
	if _, err := alice.c.UpdateFlags(context.Background(), withToken(alice.access, &mailv1.UpdateFlagsRequest{
		MessageIds: []string{apiMsgs[0].Id}, Answered: &tr})); err != nil {
		t.Fatal(err)
	}
	before := flagUpdates.Load()
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	// The client hands unsolicited FETCH to the handler asynchronously.
	waitFor(t, "FETCH FLAGS after NOOP", func() bool { return flagUpdates.Load() > before })
	got, err := c.Fetch(imap.UIDSetNum(3), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil || len(got) != 1 || !slices.Contains(got[0].Flags, imap.FlagAnswered) {
		t.Fatalf("flags of uid 3: %v %v", got, err)
	}

	// IDLE sees a delivery made through SMTP.
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	s.deliver(t, alice.addr, "during idle", "idle body")
	waitFor(t, "EXISTS 4 during IDLE", func() bool { return exists.Load() == 4 })
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}

	// SEARCH and ESEARCH.
	res, err := c.UIDSearch(&imap.SearchCriteria{Body: []string{"ZEBRA2"}}, nil).Wait()
	if err != nil || !slices.Equal(res.AllUIDs(), []imap.UID{2}) {
		t.Fatalf("UID SEARCH BODY: %v %v", res, err)
	}
	res, err = c.Search(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, nil).Wait()
	if err != nil || !slices.Equal(res.AllSeqNums(), []uint32{2, 3, 4}) {
		t.Fatalf("SEARCH UNSEEN: %v %v", res, err)
	}
	res, err = c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "IDLE"}}},
		&imap.SearchOptions{ReturnCount: true, ReturnMin: true}).Wait()
	if err != nil || res.Count != 1 || res.Min != 4 {
		t.Fatalf("ESEARCH: %+v %v", res, err)
	}

	// COPY (COPYUID), MOVE, \Deleted and UID EXPUNGE.
	cp, err := c.Copy(imap.UIDSetNum(1), "Archive").Wait()
	if err != nil || cp.DestUIDs.String() != "1" {
		t.Fatalf("COPY: %+v %v", cp, err)
	}
	mv, err := c.Move(imap.UIDSetNum(2), "Trash").Wait()
	if err != nil || mv.DestUIDs.String() != "1" {
		t.Fatalf("MOVE: %+v %v", mv, err)
	}
	if err := c.Store(imap.UIDSetNum(3, 4), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	ex, err := c.UIDExpunge(imap.UIDSetNum(4)).Collect()
	if err != nil || len(ex) != 1 {
		t.Fatalf("UID EXPUNGE: %v %v", ex, err)
	}
	if got := subjects(t, c, imap.SeqSetNum(1, 2)); !slices.Equal(got, []string{"hello 1", "hello 3"}) {
		t.Fatalf("INBOX after MOVE and EXPUNGE: %v", got)
	}
	if n := len(alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_TRASH).Id)); n != 1 {
		t.Fatalf("Trash in the API: %d messages", n)
	}

	// APPEND is durable, gets APPENDUID, and the API sees it in Drafts.
	draft := "From: alice@eu.example\r\nTo: bob@us.example\r\nSubject: a draft\r\n\r\nNot yet.\r\n"
	ap := c.Append("Drafts", int64(len(draft)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagDraft, imap.FlagSeen}})
	if _, err := ap.Write([]byte(draft)); err != nil {
		t.Fatal(err)
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	ad, err := ap.Wait()
	if err != nil || ad.UID != 1 || ad.UIDValidity == 0 {
		t.Fatalf("APPEND: %+v %v", ad, err)
	}
	drafts := alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_DRAFTS).Id)
	if len(drafts) != 1 || drafts[0].Subject != "a draft" || !drafts[0].Draft {
		t.Fatalf("Drafts in the API: %v", drafts)
	}
	bad := c.Append("No Such Box", 1, nil)
	_, _ = bad.Write([]byte("x"))
	_ = bad.Close()
	if _, err := bad.Wait(); err == nil || !strings.Contains(err.Error(), "TRYCREATE") {
		t.Fatalf("APPEND to a missing mailbox: %v, want TRYCREATE", err)
	}

	// Mailboxes: CREATE, RENAME, STATUS, DELETE; UIDVALIDITY never repeats.
	if err := c.Create("Projects/2026", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status("Projects/2026", &imap.StatusOptions{UIDValidity: true, NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 0 {
		t.Fatalf("STATUS: %+v %v", st, err)
	}
	boxes, _ = c.List("", "Projects/%", nil).Collect()
	if len(boxes) != 1 || boxes[0].Mailbox != "Projects/2026" {
		t.Fatalf("LIST Projects/%%: %v", boxes)
	}
	if err := c.Rename("Projects/2026", "Projects/Done", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("Projects/Done").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Projects/Done", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	st2, err := c.Status("Projects/Done", &imap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil || st2.UIDValidity == st.UIDValidity {
		t.Fatalf("UIDVALIDITY of a mailbox made again: %d then %d (%v)", st.UIDValidity, st2.UIDValidity, err)
	}
	// UIDs are never reused: after the expunge of UID 4, a new message gets 5.
	s.deliver(t, alice.addr, "after expunge", "x")
	waitFor(t, "the new message", func() bool {
		_ = c.Noop().Wait()
		sel := c.Mailbox()
		return sel != nil && sel.NumMessages == 3
	})
	uids, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil || !slices.Equal(uids.AllUIDs(), []imap.UID{1, 3, 5}) {
		t.Fatalf("UIDs after a delivery: %v %v", uids.AllUIDs(), err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	// Cross-account: bob, in another cell, sees only his own mailbox, and
	// nothing he does by number reaches alice's.
	bc := imapLogin(t, s.imaps, bob.addr, nil)
	sel, err = bc.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 0 {
		t.Fatalf("bob's INBOX: %+v %v", sel, err)
	}
	if err := bc.Store(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Expunge().Collect(); err != nil {
		t.Fatal(err)
	}
	if msgs, err := bc.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Envelope: true}).Collect(); err != nil || len(msgs) != 0 {
		t.Fatalf("bob fetched %d messages: %v", len(msgs), err)
	}
	if _, err := bc.Select("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if msgs, err := bc.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Envelope: true}).Collect(); err != nil || len(msgs) != 0 {
		t.Fatalf("bob's Archive: %d messages: %v", len(msgs), err)
	}
	if n := len(alice.list(t, inbox.Id)); n != 3 {
		t.Fatalf("alice's INBOX after bob's commands: %d messages", n)
	}
}

// Before login the proxy reads little: LOGIN in the clear is refused, a
// literal it would refuse is never invited with "+", and an overlong line
// ends the session.
func TestIMAPProxyPreLoginLimits(t *testing.T) {
	s := newStack(t)
	s.startRouter(nil)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", s.imap)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		greeting, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(greeting, "* OK") || !strings.Contains(greeting, "STARTTLS") || !strings.Contains(greeting, "LOGINDISABLED") {
			t.Fatalf("greeting %q %v", greeting, err)
		}
		return c, br
	}
	expect := func(br *bufio.Reader, prefix string) string {
		t.Helper()
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, prefix) {
			t.Fatalf("got %q (%v), want %q…", line, err, prefix)
		}
		return line
	}
	c, br := dial()
	fmt.Fprintf(c, "a LOGIN alice@eu.example secret\r\n")
	expect(br, "a NO [PRIVACYREQUIRED]")
	fmt.Fprintf(c, "b APPEND INBOX {100}\r\n")
	expect(br, "b BAD") // no "+": the 100 bytes are never invited
	fmt.Fprintf(c, "c SELECT INBOX\r\n")
	expect(br, "c BAD")
	fmt.Fprintf(c, "d CAPABILITY\r\n")
	expect(br, "* CAPABILITY")
	expect(br, "d OK")
	fmt.Fprintf(c, "e LOGOUT\r\n")
	expect(br, "* BYE")

	c, br = dial()
	fmt.Fprintf(c, "a NOOP %s\r\n", strings.Repeat("x", 10000))
	expect(br, "* BYE")

	// A non-synchronizing literal over LITERAL-'s 4096 closes the session.
	c, br = dial()
	fmt.Fprintf(c, "a APPEND INBOX {5000+}\r\n")
	expect(br, "* BYE")

	// STARTTLS with plaintext queued behind it is refused (injection).
	c, br = dial()
	fmt.Fprintf(c, "a STARTTLS\r\nb LOGIN x y\r\n")
	expect(br, "* BYE")
}
