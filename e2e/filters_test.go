package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// A user's filter rules, set through the API, file inbound SMTP mail; a
// rule cannot name another user's mailbox.
func TestFiltersFileInboundMail(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	ctx := context.Background()
	archive := alice.box(t, mailv1.SpecialUse_SPECIAL_USE_ARCHIVE)
	set, err := alice.c.SetFilters(ctx, withToken(alice.access, &mailv1.SetFiltersRequest{Filters: []*mailv1.Filter{
		{Field: "subject", Contains: "Invoice", MailboxId: archive.Id, MarkSeen: true, Labels: []string{"bills"}, Stop: true},
	}}))
	if err != nil || len(set.Msg.Filters) != 1 || set.Msg.Filters[0].Id == "" {
		t.Fatalf("set filters: %v %v", set, err)
	}
	// Bob's mailbox in alice's rule: not found, and alice's rules unchanged.
	bobInbox := bob.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	_, err = alice.c.SetFilters(ctx, withToken(alice.access, &mailv1.SetFiltersRequest{Filters: []*mailv1.Filter{
		{Field: "from", Contains: "x", MailboxId: bobInbox.Id}}}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("a rule naming another user's mailbox: %v", err)
	}
	_, err = alice.c.SetFilters(ctx, withToken(alice.access, &mailv1.SetFiltersRequest{Filters: []*mailv1.Filter{
		{Field: "body", Contains: "x"}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("a rule on an unknown field: %v", err)
	}
	list, err := alice.c.ListFilters(ctx, withToken(alice.access, &mailv1.ListFiltersRequest{}))
	if err != nil || len(list.Msg.Filters) != 1 || list.Msg.Filters[0].Contains != "Invoice" {
		t.Fatalf("list filters: %v %v", list, err)
	}
	if bl, err := bob.c.ListFilters(ctx, withToken(bob.access, &mailv1.ListFiltersRequest{})); err != nil || len(bl.Msg.Filters) != 0 {
		t.Fatalf("bob sees filters %v %v", bl, err)
	}

	c, err := smtp.Dial(s.smtp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, subj := range []string{"Your invoice 42", "lunch"} {
		if err := c.SendMail("a@remote.test", []string{"alice@eu.example"}, strings.NewReader("Subject: "+subj+"\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	in := waitInbox(t, alice, 1)
	if len(in) != 1 || in[0].Subject != "lunch" {
		t.Fatalf("inbox %v", in)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		arch := alice.list(t, archive.Id)
		if len(arch) == 1 {
			if arch[0].Subject != "Your invoice 42" || !arch[0].Seen || len(arch[0].Labels) != 1 || arch[0].Labels[0] != "bills" {
				t.Fatalf("archive %v", arch)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("archive has %d messages", len(arch))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
