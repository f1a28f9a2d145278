package e2e_test

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// RFC 5321 §4.5.1: mail to postmaster is accepted and reaches a real
// mailbox. <postmaster> with no domain, and postmaster@ a hosted domain
// with no such account (consumer or tenant), go to the router's configured
// postmaster; a domain that has its own postmaster account keeps its mail.
func TestPostmasterReachesAMailbox(t *testing.T) {
	s := newStack(t)
	s.postmaster = "ops@eu.example"
	url := s.startRouter(nil)
	ops := s.user(t, url, "ops@eu.example")
	own := s.user(t, url, "postmaster@us.example")

	c := s.mx(t)
	send := func(rcpt, subject string) {
		t.Helper()
		if err := c.Mail("someone@remote.test", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT TO:<%s>: %v", rcpt, err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("From: someone@remote.test\r\nTo: " + rcpt + "\r\nSubject: " + subject + "\r\nMessage-ID: <" + subject + "@remote.test>\r\n\r\nHello postmaster.\r\n"))
		if err := w.Close(); err != nil {
			t.Fatalf("DATA to %s: %v", rcpt, err)
		}
	}
	send("postmaster", "no domain")
	send("PostMaster@eu.example", "consumer domain")
	send("postmaster@acme.example", "tenant domain")
	send("postmaster@us.example", "own account")
	msgs := waitInbox(t, ops, 3)
	var subjects []string
	for _, m := range msgs {
		subjects = append(subjects, m.Subject)
	}
	if got := strings.Join(subjects, ","); len(msgs) != 3 || !strings.Contains(got, "no domain") || !strings.Contains(got, "consumer domain") || !strings.Contains(got, "tenant domain") {
		t.Fatalf("the configured postmaster got %q", got)
	}
	if m := waitInbox(t, own, 1); len(m) != 1 || m[0].Subject != "own account" {
		t.Fatalf("postmaster@us.example got %v", m)
	}
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("postmaster@elsewhere.test", nil); smtpCode(err) != 550 {
		t.Fatalf("postmaster of a domain not hosted: %v, want 550 (no relaying)", err)
	}

	// Submission: <postmaster> is the same mailbox.
	sc, err := smtp.Dial(s.submission)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := sc.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Auth(sasl.NewPlainClient("", "postmaster@us.example", "correct horse battery")); err != nil {
		t.Fatal(err)
	}
	msg := "From: postmaster@us.example\r\nTo: postmaster\r\nSubject: submitted\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <pm-sub@us.example>\r\n\r\nHi.\r\n"
	if err := sc.SendMail("postmaster@us.example", []string{"postmaster"}, strings.NewReader(msg)); err != nil {
		t.Fatalf("submission to <postmaster>: %v", err)
	}
	if m := waitInbox(t, ops, 4); len(m) != 4 {
		t.Fatalf("the configured postmaster has %d messages, want 4", len(m))
	}
}
