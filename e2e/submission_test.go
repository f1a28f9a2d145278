package e2e_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// A mail client submits on 587 (STARTTLS, AUTH) to a user in another cell
// and to a remote domain; the message is in the sender's Sent, the other
// user's INBOX and at the remote MX. Sending as someone else, AUTH before
// TLS, and a wrong password are refused.
func TestSubmission(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	tlsConf := &tls.Config{InsecureSkipVerify: true}

	// AUTH before STARTTLS is not offered.
	c, err := smtp.Dial(s.submission)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before STARTTLS")
	}
	if err := c.Mail("alice@eu.example", nil); smtpCode(err) != 530 {
		t.Fatalf("MAIL without AUTH: %v, want 530", err)
	}
	c.Close()

	dial := func() *smtp.Client {
		c, err := smtp.Dial(s.submission)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.StartTLS(tlsConf); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c = dial()
	if err := c.Auth(sasl.NewPlainClient("", "alice@eu.example", "wrong password")); smtpCode(err) != 535 {
		t.Fatalf("wrong password: %v, want 535", err)
	}
	c.Close()
	c = dial()
	if err := c.Auth(sasl.NewLoginClient("nobody@eu.example", "x")); smtpCode(err) != 535 {
		t.Fatalf("unknown user: %v, want 535", err)
	}
	c.Close()

	c = dial()
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice@eu.example", "correct horse battery")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("bob@us.example", nil); smtpCode(err) != 553 {
		t.Fatalf("MAIL FROM another user: %v, want 553", err)
	}
	msg := "From: Alice <alice@eu.example>\r\nTo: bob@us.example, ann@remote.test\r\nSubject: submitted\r\n" +
		"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <sub1@eu.example>\r\n\r\nFrom my mail client.\r\n"
	if err := c.SendMail("alice@eu.example", []string{"bob@us.example", "ann2@remote.test", "nobody@us.example"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	if in := waitInbox(t, bob, 1); in[0].Subject != "submitted" {
		t.Fatalf("bob's INBOX: %v", in)
	}
	sent := alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT).Id)
	if len(sent) != 1 || sent[0].Subject != "submitted" {
		t.Fatalf("alice's Sent: %v", sent)
	}
	deadline := time.Now().Add(20 * time.Second)
	for remoteMX.message("ann2@remote.test") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the remote MX never got the submitted message")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Implicit TLS (465) works the same.
	tc, err := smtp.DialTLS(s.submissions, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := tc.Auth(sasl.NewLoginClient("bob@us.example", "correct horse battery")); err != nil {
		t.Fatalf("AUTH LOGIN on 465: %v", err)
	}
	if err := tc.SendMail("bob@us.example", []string{"alice@eu.example"}, strings.NewReader("Subject: via 465\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	// alice has bob's message and the bounce for nobody@us.example (the
	// submission was answered 250 before the cell found no such user).
	subjects := map[string]bool{}
	for _, m := range waitInbox(t, alice, 2) {
		subjects[m.Subject] = true
	}
	if !subjects["via 465"] || !subjects["Undelivered Mail Returned to Sender"] {
		t.Fatalf("alice's INBOX: %v", subjects)
	}
}

// A submitted message whose From or Sender is not the user's own address
// is refused 553 5.7.1 (the cell would sign it with our domain), the
// SubmitMessage API answers permission_denied with an ErrorInfo reason,
// and nothing reaches the recipient or Sent. The user's own address in
// another case or with a +tag is the same account and goes through.
func TestSubmissionFromForgery(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	c, err := smtp.DialTLS(s.submissions, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice@eu.example", "correct horse battery")); err != nil {
		t.Fatal(err)
	}
	send := func(header string) error {
		return c.SendMail("alice@eu.example", []string{"bob@us.example"}, strings.NewReader(header+
			"To: bob@us.example\r\nSubject: forged\r\n\r\nbody\r\n"))
	}
	for _, h := range []string{
		"From: Bob <bob@us.example>\r\n",                               // another user
		"From: Acme <ceo@acme.example>\r\n",                            // another domain we host
		"From: Security <security@bank.example>\r\n",                   // anyone
		"From: alice@eu.example, security@bank.example\r\n",            // one of several
		"From: alice@eu.example\r\nSender: security@bank.example\r\n",  // Sender
		"From: alice@eu.example\r\nFrom: security@bank.example\r\n",    // a second From
		"From : security@bank.example\r\n",                             // obsolete space before the colon
		"From: =?utf-8?q?security=40bank.example?=\r\n",                // no address at all
		"Subject: x\r\nnot a field\r\nFrom: security@bank.example\r\n", // header cut short for us only
		"From: \"alice@eu.example\" <security@bank.example>\r\n",       // own address as the name
	} {
		var se *smtp.SMTPError
		if err := send(h); !errors.As(err, &se) || se.Code != 553 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
			t.Errorf("%q: %v, want 553 5.7.1", h, err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []string{
		"From: Alice <alice@eu.example>\r\n",
		"From: Alice <Alice+lists@EU.example>\r\nSender: alice@eu.example\r\n",
	} {
		if err := send(h); err != nil {
			t.Errorf("%q: %v, want 250", h, err)
		}
	}
	// No From (nor Date, nor Message-ID): the submission agent adds them,
	// From naming the sender (RFC 6409 §8), before the message is signed.
	if err := c.SendMail("alice@eu.example", []string{"bob@us.example"},
		strings.NewReader("To: bob@us.example\r\nSubject: no from\r\n\r\nbody\r\n")); err != nil {
		t.Fatalf("a message without From: %v, want 250", err)
	}
	in := waitInbox(t, bob, 3)
	if len(in) != 3 {
		t.Fatalf("bob's INBOX has %d messages, want the 3 genuine ones", len(in))
	}
	if sent := alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT).Id); len(sent) != 3 {
		t.Fatalf("alice's Sent has %d messages, want 3", len(sent))
	}
	for _, m := range in {
		if m.Subject != "no from" {
			continue
		}
		full, err := bob.c.GetMessage(context.Background(), withToken(bob.access, &mailv1.GetMessageRequest{MessageId: m.Id}))
		if err != nil {
			t.Fatal(err)
		}
		if sm := full.Msg.Summary; sm.GetFrom().GetEmail() != "alice@eu.example" || sm.DateUnix == 0 || full.Msg.MessageIdHeader == "" {
			t.Errorf("a message without From arrived as from %v, date %d, Message-ID %q", sm.GetFrom(), sm.DateUnix, full.Msg.MessageIdHeader)
		}
	}

	// The API's answer carries the reason.
	_, err = alice.c.SubmitMessage(context.Background(), withToken(alice.access, &mailv1.SubmitMessageRequest{
		MailFrom: "alice@eu.example", Recipients: []string{"bob@us.example"},
		Raw: []byte("From: bob@us.example\r\nTo: bob@us.example\r\nSubject: forged\r\n\r\nbody\r\n")}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("SubmitMessage with a forged From: %v, want permission_denied", err)
	}
	var reason string
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if v, derr := d.Value(); derr == nil {
				if info, ok := v.(*errdetails.ErrorInfo); ok {
					reason = info.Reason
				}
			}
		}
	}
	if reason != "FROM_NOT_OWNED" {
		t.Fatalf("SubmitMessage with a forged From: detail reason %q, want FROM_NOT_OWNED (%v)", reason, err)
	}
}
