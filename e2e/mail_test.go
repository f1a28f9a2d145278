package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/controlplane/cptest"
	"github.com/cellmail/cellmail/internal/redisserver"
)

type user struct {
	addr, access string
	c            mailv1connect.MailServiceClient
}

func withToken[T any](tok string, m *T) *connect.Request[T] {
	r := connect.NewRequest(m)
	if tok != "" {
		r.Header().Set("Authorization", "Bearer "+tok)
	}
	return r
}

func (s *stack) user(t *testing.T, routerURL, addr string) *user { return s.userTB(t, routerURL, addr) }

func (s *stack) userTB(t testing.TB, routerURL, addr string) *user {
	t.Helper()
	c := mailv1connect.NewMailServiceClient(&http.Client{Transport: h2cTransport()}, routerURL)
	ctx := context.Background()
	if _, err := c.CreateAccount(ctx, withToken(cptest.AdminToken, &mailv1.CreateAccountRequest{Address: addr, Password: "correct horse battery", DisplayName: strings.Split(addr, "@")[0]})); err != nil {
		t.Fatalf("create %s: %v", addr, err)
	}
	resp, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: addr, Password: "correct horse battery"}))
	if err != nil {
		t.Fatalf("login %s: %v", addr, err)
	}
	return &user{addr: addr, access: resp.Msg.AccessToken, c: c}
}

func (u *user) box(t *testing.T, use mailv1.SpecialUse) *mailv1.Mailbox { return u.boxTB(t, use) }

func (u *user) boxTB(t testing.TB, use mailv1.SpecialUse) *mailv1.Mailbox {
	t.Helper()
	resp, err := u.c.ListMailboxes(context.Background(), withToken(u.access, &mailv1.ListMailboxesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.Msg.Mailboxes {
		if b.SpecialUse == use {
			return b
		}
	}
	t.Fatalf("%s has no %v mailbox", u.addr, use)
	return nil
}

func (u *user) list(t *testing.T, mailboxID string) []*mailv1.MessageSummary {
	t.Helper()
	resp, err := u.c.ListMessages(context.Background(), withToken(u.access, &mailv1.ListMessagesRequest{MailboxId: mailboxID}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.Messages
}

func download(t *testing.T, routerURL, path, token, rangeHdr string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, routerURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// The README's walk-through: alice (eu) sends bob (us) a message with a
// 5 MB attachment through the router; bob reads it and downloads the
// attachment byte-identical; alice finds it in Sent.
func TestMailWalkthroughAcrossJurisdictions(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	ctx := context.Background()

	attachment := make([]byte, 5<<20)
	_, _ = rand.Read(attachment)
	sent, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To:      []*mailv1.EmailAddress{{Name: "Bob", Email: "Bob@US.example"}},
		Subject: "Quarterly report", Text: "See attached.",
		Html:        `<p>See <b>attached</b>.</p><script>alert(1)</script><img src="https://tracker.example/p.gif">`,
		Attachments: []*mailv1.OutgoingAttachment{{Filename: "report.bin", ContentType: "application/octet-stream", Content: attachment}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(sent.Msg.Recipients) != 1 || sent.Msg.Recipients[0].Status != "delivered" {
		t.Fatalf("recipient status %v", sent.Msg.Recipients)
	}

	// Accepted by bob's cell (durable there), then filed by its pipeline.
	waitFor(t, "the message in bob's INBOX", func() bool { return bob.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX).Total == 1 })
	inbox := bob.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	if inbox.Total != 1 || inbox.Unread != 1 {
		t.Fatalf("bob's INBOX %d/%d, want 1/1", inbox.Unread, inbox.Total)
	}
	msgs := bob.list(t, inbox.Id)
	if len(msgs) != 1 || msgs[0].Subject != "Quarterly report" || !msgs[0].HasAttachments || msgs[0].From.Email != "alice@eu.example" {
		t.Fatalf("bob's INBOX: %v", msgs)
	}
	got, err := bob.c.GetMessage(ctx, withToken(bob.access, &mailv1.GetMessageRequest{MessageId: msgs[0].Id}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Msg.Text, "See attached.") || strings.Contains(got.Msg.Html, "<script") || strings.Contains(got.Msg.Html, "tracker.example") {
		t.Fatalf("text %q html %q", got.Msg.Text, got.Msg.Html)
	}
	if len(got.Msg.Attachments) != 1 {
		t.Fatalf("attachments %v", got.Msg.Attachments)
	}
	a := got.Msg.Attachments[0]
	code, body := download(t, url, a.DownloadPath, bob.access, "")
	if code != http.StatusOK || !bytes.Equal(body, attachment) {
		t.Fatalf("download: %d, %d bytes, identical=%v", code, len(body), bytes.Equal(body, attachment))
	}
	code, part := download(t, url, a.DownloadPath, bob.access, "bytes=1000-1999")
	if code != http.StatusPartialContent || !bytes.Equal(part, attachment[1000:2000]) {
		t.Fatalf("range download: %d, %d bytes", code, len(part))
	}
	if code, raw := download(t, url, got.Msg.RawPath, bob.access, ""); code != http.StatusOK || !bytes.Contains(raw, []byte("Quarterly report")) {
		t.Fatalf("raw download: %d", code)
	}

	sentBox := alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT)
	if list := alice.list(t, sentBox.Id); len(list) != 1 || list[0].Id != sent.Msg.MessageId || !list[0].Seen {
		t.Fatalf("alice's Sent: %v", list)
	}

	// Read on one device is read everywhere: flags, then the journal.
	before, err := bob.c.GetChanges(ctx, withToken(bob.access, &mailv1.GetChangesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	if _, err := bob.c.UpdateFlags(ctx, withToken(bob.access, &mailv1.UpdateFlagsRequest{MessageIds: []string{msgs[0].Id}, Seen: &yes, AddLabels: []string{"finance"}})); err != nil {
		t.Fatal(err)
	}
	ch, err := bob.c.GetChanges(ctx, withToken(bob.access, &mailv1.GetChangesRequest{SinceState: before.Msg.NewState}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Msg.Changes) != 1 || ch.Msg.Changes[0].Kind != "flags_changed" || ch.Msg.Changes[0].MessageId != msgs[0].Id {
		t.Fatalf("changes %v", ch.Msg.Changes)
	}
	if b := bob.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX); b.Unread != 0 {
		t.Fatalf("unread %d after reading", b.Unread)
	}
	// Delete: to Trash, then for good.
	del, err := bob.c.DeleteMessages(ctx, withToken(bob.access, &mailv1.DeleteMessagesRequest{MessageIds: []string{msgs[0].Id}}))
	if err != nil || del.Msg.Trashed != 1 {
		t.Fatalf("delete: %v %v", del, err)
	}
	del, err = bob.c.DeleteMessages(ctx, withToken(bob.access, &mailv1.DeleteMessagesRequest{MessageIds: []string{msgs[0].Id}}))
	if err != nil || del.Msg.Expunged != 1 {
		t.Fatalf("expunge: %v %v", del, err)
	}
}

func TestLoginAndAccountErrors(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	ctx := context.Background()
	c := alice.c
	for _, tc := range []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"wrong password", func() error {
			_, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "alice@eu.example", Password: "nope-nope-nope"}))
			return err
		}, connect.CodeUnauthenticated},
		{"unknown user", func() error {
			_, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "nobody@eu.example", Password: "nope-nope-nope"}))
			return err
		}, connect.CodeUnauthenticated},
		{"create without operator token", func() error {
			_, err := c.CreateAccount(ctx, withToken("", &mailv1.CreateAccountRequest{Address: "eve@eu.example", Password: "long enough pw"}))
			return err
		}, connect.CodeUnauthenticated},
		{"create with a user token", func() error {
			_, err := c.CreateAccount(ctx, withToken(alice.access, &mailv1.CreateAccountRequest{Address: "eve@eu.example", Password: "long enough pw"}))
			return err
		}, connect.CodeUnauthenticated},
		{"duplicate", func() error {
			_, err := c.CreateAccount(ctx, withToken(cptest.AdminToken, &mailv1.CreateAccountRequest{Address: "Alice+x@EU.example", Password: "long enough pw"}))
			return err
		}, connect.CodeAlreadyExists},
		{"short password", func() error {
			_, err := c.CreateAccount(ctx, withToken(cptest.AdminToken, &mailv1.CreateAccountRequest{Address: "eve@eu.example", Password: "short"}))
			return err
		}, connect.CodeInvalidArgument},
		{"page too large", func() error {
			_, err := c.ListMessages(ctx, withToken(alice.access, &mailv1.ListMessagesRequest{MailboxId: alice.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX).Id, PageSize: 10000}))
			return err
		}, connect.CodeInvalidArgument},
		{"bad mailbox name", func() error {
			_, err := c.CreateMailbox(ctx, withToken(alice.access, &mailv1.CreateMailboxRequest{Name: "a//b"}))
			return err
		}, connect.CodeInvalidArgument},
		{"no token", func() error {
			_, err := c.ListMailboxes(ctx, withToken("", &mailv1.ListMailboxesRequest{}))
			return err
		}, connect.CodeUnauthenticated},
		{"garbage token", func() error {
			_, err := c.ListMailboxes(ctx, withToken("cm1.YWxpY2VAZXUuZXhhbXBsZQ.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &mailv1.ListMailboxesRequest{}))
			return err
		}, connect.CodeUnauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); connect.CodeOf(err) != tc.code {
				t.Fatalf("err = %v, want %v", err, tc.code)
			}
		})
	}
	// The same answer for an unknown user and a wrong password.
	_, e1 := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "alice@eu.example", Password: "nope-nope-nope"}))
	_, e2 := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "nobody@eu.example", Password: "nope-nope-nope"}))
	if e1.Error() != e2.Error() {
		t.Fatalf("different answers: %q vs %q", e1, e2)
	}
	// Logout revokes the token.
	if _, err := c.Logout(ctx, withToken(alice.access, &mailv1.LogoutRequest{})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListMailboxes(ctx, withToken(alice.access, &mailv1.ListMailboxesRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("after logout: %v", err)
	}
}

// User A reaches nothing of user B's by any call, including with B's ids
// and with a token whose subject was rewritten to B.
func TestCrossAccountIsolation(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	a := s.user(t, url, "a1@eu.example")
	b := s.user(t, url, "b1@eu.example") // same jurisdiction, maybe the same cell
	ctx := context.Background()
	if _, err := b.c.SendMessage(ctx, withToken(b.access, &mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: "b1@eu.example"}}, Subject: "private",
		Attachments: []*mailv1.OutgoingAttachment{{Filename: "x.txt", ContentType: "text/plain", Content: []byte("secret")}}})); err != nil {
		t.Fatal(err)
	}
	binbox := b.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	bm := waitInbox(t, b, 1)[0]
	full, err := b.c.GetMessage(ctx, withToken(b.access, &mailv1.GetMessageRequest{MessageId: bm.Id}))
	if err != nil {
		t.Fatal(err)
	}
	atrash := a.box(t, mailv1.SpecialUse_SPECIAL_USE_TRASH)
	yes := true
	for name, call := range map[string]func() error{
		"get": func() error {
			_, err := a.c.GetMessage(ctx, withToken(a.access, &mailv1.GetMessageRequest{MessageId: bm.Id}))
			return err
		},
		"list": func() error {
			_, err := a.c.ListMessages(ctx, withToken(a.access, &mailv1.ListMessagesRequest{MailboxId: binbox.Id}))
			return err
		},
		"flag": func() error {
			_, err := a.c.UpdateFlags(ctx, withToken(a.access, &mailv1.UpdateFlagsRequest{MessageIds: []string{bm.Id}, Seen: &yes}))
			return err
		},
		"move": func() error {
			_, err := a.c.MoveMessages(ctx, withToken(a.access, &mailv1.MoveMessagesRequest{MessageIds: []string{bm.Id}, ToMailboxId: atrash.Id}))
			return err
		},
		"delete": func() error {
			_, err := a.c.DeleteMessages(ctx, withToken(a.access, &mailv1.DeleteMessagesRequest{MessageIds: []string{bm.Id}}))
			return err
		},
		"rename": func() error {
			_, err := a.c.RenameMailbox(ctx, withToken(a.access, &mailv1.RenameMailboxRequest{MailboxId: binbox.Id, Name: "x"}))
			return err
		},
		"drop": func() error {
			_, err := a.c.DeleteMailbox(ctx, withToken(a.access, &mailv1.DeleteMailboxRequest{MailboxId: binbox.Id}))
			return err
		},
		"reply": func() error {
			_, err := a.c.SendMessage(ctx, withToken(a.access, &mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: "a1@eu.example"}}, InReplyToId: bm.Id}))
			return err
		},
		"guess": func() error {
			_, err := a.c.GetMessage(ctx, withToken(a.access, &mailv1.GetMessageRequest{MessageId: "00000000-0000-4000-8000-000000000000"}))
			return err
		},
	} {
		if err := call(); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("%s of b's object: %v, want not_found", name, err)
		}
	}
	for _, p := range []string{full.Msg.RawPath, full.Msg.Attachments[0].DownloadPath} {
		if code, body := download(t, url, p, a.access, ""); code != http.StatusNotFound || bytes.Contains(body, []byte("secret")) {
			t.Errorf("a downloaded %s: %d", p, code)
		}
	}
	// a's token with its subject rewritten to b: routed to b's cell, and
	// refused there.
	parts := strings.SplitN(a.access, ".", 3)
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("b1@eu.example")) + "." + parts[2]
	if _, err := a.c.ListMailboxes(ctx, withToken(forged, &mailv1.ListMailboxesRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("forged subject: %v", err)
	}
	if b.list(t, binbox.Id)[0].Seen {
		t.Error("b's message changed")
	}
	// A call sent straight to a cell that does not own the caller is fenced.
	for name, u := range s.cells {
		if owner := s.owner(b.addr); owner != name {
			c := mailv1connect.NewMailServiceClient(http.DefaultClient, u)
			if _, err := c.ListMailboxes(ctx, withToken(b.access, &mailv1.ListMailboxesRequest{})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("b's call at %s: %v, want WRONG_CELL", name, err)
			}
		}
	}
}

// With Redis stopped, reads still work from the database.
func TestReadsWorkWithoutRedis(t *testing.T) {
	rs, err := redisserver.Start(context.Background(), redisserver.Config{Dir: filepath.Join(t.TempDir(), "redis")})
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, rs.Addr)
	url := s.startRouter(nil)
	u := s.user(t, url, "r@us.example")
	ctx := context.Background()
	if _, err := u.c.SendMessage(ctx, withToken(u.access, &mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: "r@us.example"}}, Subject: "hello"})); err != nil {
		t.Fatal(err)
	}
	inbox := u.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	waitInbox(t, u, 1)
	if n := len(u.list(t, inbox.Id)); n != 1 { // cached now
		t.Fatalf("%d messages", n)
	}
	rs.Stop()
	if n := len(u.list(t, inbox.Id)); n != 1 {
		t.Fatalf("%d messages with Redis down", n)
	}
	if _, err := u.c.SendMessage(ctx, withToken(u.access, &mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: "r@us.example"}}, Subject: "again"})); err != nil {
		t.Fatal(err)
	}
	if n := len(waitInbox(t, u, 2)); n != 2 {
		t.Fatalf("%d messages after a send with Redis down, want 2", n)
	}
	if _, err := u.c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: u.addr, Password: "correct horse battery"})); err != nil {
		t.Fatalf("login with Redis down: %v", err)
	}
}

// totalTB is the mailbox's message count.
func (u *user) totalTB(t testing.TB, mailboxID string) int {
	resp, err := u.c.ListMailboxes(context.Background(), withToken(u.access, &mailv1.ListMailboxesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.Msg.Mailboxes {
		if b.Id == mailboxID {
			return int(b.Total)
		}
	}
	return 0
}
