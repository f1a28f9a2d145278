package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/internal/clamdtest"
)

// gtube is SpamAssassin's spam test string (cell/internal/spam.GTUBE).
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// addressIn returns an address of eu.example that the stack places in
// cell (or, with not, outside it).
func (s *stack) addressIn(t *testing.T, cell string, not bool, prefix string) string {
	t.Helper()
	for i := range 200 {
		a := fmt.Sprintf("%s%d@eu.example", prefix, i)
		if (s.owner(a) == cell) != not {
			return a
		}
	}
	t.Fatalf("no address of eu.example in (not=%v) %s", not, cell)
	return ""
}

// One way into a mailbox (DESIGN.md §4): a hosted sender's message goes
// through each recipient cell's acceptance and pipeline, as MX mail does —
// in the sender's own cell, in another cell of its jurisdiction, and in
// another jurisdiction: the recipient's filter files it, the pipeline's
// fields are on it, and an IMAP IDLE session on the folder is woken at
// once (well within the 30 s IDLE poll).
func TestHostedSendGoesThroughThePipeline(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	home := s.owner(alice.addr)
	rcpts := []*user{
		s.user(t, url, s.addressIn(t, home, false, "same")),
		s.user(t, url, s.addressIn(t, home, true, "other")),
		s.user(t, url, "bob@us.example"),
	}
	ctx := context.Background()
	archives := map[string]string{}
	for _, u := range rcpts {
		archive := u.box(t, mailv1.SpecialUse_SPECIAL_USE_ARCHIVE)
		archives[u.addr] = archive.Id
		if _, err := u.c.SetFilters(ctx, withToken(u.access, &mailv1.SetFiltersRequest{Filters: []*mailv1.Filter{
			{Field: "subject", Contains: "falcon", MailboxId: archive.Id, Labels: []string{"project"}},
		}})); err != nil {
			t.Fatal(err)
		}
	}
	// The user in another cell watches Archive over IMAP.
	var exists atomic.Uint32
	c := imapLogin(t, s.imaps, rcpts[1].addr, &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists.Store(*d.NumMessages)
			}
		}})
	if _, err := c.Select("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}

	var to []*mailv1.EmailAddress
	for _, u := range rcpts {
		to = append(to, &mailv1.EmailAddress{Email: u.addr})
	}
	sent, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: to, Subject: "Project Falcon", Text: "the plan"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sent.Msg.Recipients {
		if st.Status != "delivered" {
			t.Fatalf("%s: %s (%s)", st.Address, st.Status, st.Detail)
		}
	}
	woken := time.Now()
	waitFor(t, "EXISTS 1 in Archive during IDLE", func() bool { return exists.Load() == 1 })
	if d := time.Since(woken); d > 10*time.Second {
		t.Fatalf("IDLE saw the message after %s: polled, not woken", d)
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, u := range rcpts {
		waitFor(t, "the message in "+u.addr+"'s Archive", func() bool { return len(u.list(t, archives[u.addr])) == 1 })
		m := u.list(t, archives[u.addr])[0]
		if m.Subject != "Project Falcon" || !slices.Contains(m.Labels, "project") {
			t.Fatalf("%s's Archive: %+v", u.addr, m)
		}
		if n := len(u.list(t, u.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX).Id)); n != 0 {
			t.Fatalf("%s's INBOX holds %d messages", u.addr, n)
		}
		_, _, raw := getRaw(t, url, "/v1/messages/"+m.Id+"/raw", u.access, "")
		if !strings.Contains(string(raw), "X-Spam-Status: No") {
			t.Fatalf("%s's copy did not go through the pipeline:\n%s", u.addr, raw)
		}
	}
}

// A virus from a hosted sender to a hosted recipient is quarantined by the
// recipient's pipeline (a notice in their INBOX, the message kept out);
// sent to a remote address it is refused to the sender, before anything is
// stored (nothing in Sent, nothing at the remote MX); likely spam to a
// remote address is held for the operator, and the sender is told.
func TestHostedSenderMalwareAndSpam(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	ctx := context.Background()
	eicar := []*mailv1.OutgoingAttachment{{Filename: "eicar.com", ContentType: "application/octet-stream", Content: []byte(clamdtest.EICAR)}}

	// To a hosted recipient: quarantined there.
	if _, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: bob.addr}}, Subject: "invoice", Text: "see attached", Attachments: eicar})); err != nil {
		t.Fatal(err)
	}
	in := waitInbox(t, bob, 1)
	if len(in) != 1 || !strings.HasPrefix(in[0].Subject, "Message quarantined") {
		t.Fatalf("bob's INBOX: %v", in)
	}

	// To a remote recipient: refused, with the reason.
	sentBefore := len(alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT).Id))
	_, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "virus@remote.test"}}, Subject: "invoice", Text: "see attached", Attachments: eicar}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || reasonOf(err) != "MALWARE" || !strings.Contains(err.Error(), "Eicar") {
		t.Fatalf("EICAR to a remote address: %v, want permission_denied MALWARE naming the virus", err)
	}
	// The same by submission: 554 5.7.1, after DATA.
	c, err := smtp.Dial(s.submission)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", alice.addr, "correct horse battery")); err != nil {
		t.Fatal(err)
	}
	msg := "From: alice@eu.example\r\nTo: virus2@remote.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte(clamdtest.EICAR)) + "\r\n"
	err = c.SendMail(alice.addr, []string{"virus2@remote.test"}, strings.NewReader(msg))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(se.Message, "virus") {
		t.Fatalf("submitted EICAR: %v, want 554 5.7.1", err)
	}

	// GTUBE to a remote address: held, the sender told why.
	resp, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "spam@remote.test"}}, Subject: "offer", Text: "buy now\n" + gtube + "\n"}))
	if err != nil {
		t.Fatal(err)
	}
	if st := resp.Msg.Recipients[0]; st.Status != "held" || !strings.Contains(st.Detail, "spam") {
		t.Fatalf("GTUBE to a remote address: %s (%s), want held", st.Status, st.Detail)
	}
	// A clean message sent after them all reaches the remote MX; the three
	// never do.
	if _, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "clean@remote.test"}}, Subject: "hello", Text: "hi"})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the clean message at the remote MX", func() bool { return remoteMX.message("clean@remote.test") != nil })
	for _, rc := range []string{"virus@remote.test", "virus2@remote.test", "spam@remote.test"} {
		if remoteMX.message(rc) != nil {
			t.Fatalf("%s got the message", rc)
		}
	}
	// Sent has the held message and the clean one, not the refused two.
	if n := len(alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT).Id)); n != sentBefore+2 {
		t.Fatalf("alice's Sent holds %d, want %d", n, sentBefore+2)
	}

	// The operator sees the held entry (mailctl queue list) and releases
	// it: then it is sent.
	op := cellv1connect.NewOperatorServiceClient(http.DefaultClient, s.cells[s.owner(alice.addr)])
	list, err := op.ListQueue(ctx, call(t, connect.NewRequest(&cellv1.ListQueueRequest{})))
	if err != nil {
		t.Fatal(err)
	}
	held := ""
	for _, e := range list.Msg.Entries {
		if e.Rcpt == "spam@remote.test" && e.State == "held" && strings.Contains(e.LastError, "spam") {
			held = e.Id
		}
	}
	if held == "" {
		t.Fatalf("no held entry for spam@remote.test in %v", list.Msg.Entries)
	}
	if _, err := op.ReleaseQueueEntry(ctx, connect.NewRequest(&cellv1.ReleaseQueueEntryRequest{Id: held})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("release without the operator token: %v", err)
	}
	if _, err := op.ReleaseQueueEntry(ctx, call(t, connect.NewRequest(&cellv1.ReleaseQueueEntryRequest{Id: held}))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released message at the remote MX", func() bool { return remoteMX.message("spam@remote.test") != nil })
}

// reasonOf is the ErrorInfo reason of a Connect error.
func reasonOf(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return ""
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok {
				return info.Reason
			}
		}
	}
	return ""
}
