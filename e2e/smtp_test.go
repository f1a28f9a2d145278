package e2e_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

func smtpCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// waitInbox polls the user's INBOX until it holds n messages.
func waitInbox(t *testing.T, u *user, n int) []*mailv1.MessageSummary {
	t.Helper()
	inbox := u.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	deadline := time.Now().Add(20 * time.Second)
	for {
		msgs := u.list(t, inbox.Id)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d messages, want %d", u.addr, len(msgs), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestInboundSMTPAcrossJurisdictions(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")

	c := s.mx(t)
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("PIPELINING not advertised")
	}
	if ok, _ := c.Extension("8BITMIME"); !ok {
		t.Error("8BITMIME not advertised")
	}
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]int{
		"nobody@eu.example":           550, // unknown user, checked at its cell
		"friend@gmail.test":           550, // not hosted: relaying denied
		"alice%eu.example@us.example": 501, // percent hack
		// RFC 5321 Appendix C: a source route is ignored, so this is
		// alice@eu.example (hosted): accepted, nothing relayed.
		"@relay.test:alice@eu.example": 0,
		"not an address":               501,
	} {
		if err := c.Rcpt(addr, nil); smtpCode(err) != want {
			t.Errorf("RCPT %s: %v, want %d", addr, err, want)
		}
	}
	for _, addr := range []string{"Alice+news@EU.example", "bob@us.example"} {
		if err := c.Rcpt(addr, nil); err != nil {
			t.Fatalf("RCPT %s: %v", addr, err)
		}
	}
	body := "From: someone@remote.test\r\nTo: alice@eu.example, bob@us.example\r\nSubject: Hello cells\r\nMessage-ID: <m1@remote.test>\r\n\r\nHi both.\r\n"
	send := func() error {
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte(body)); err != nil {
			return err
		}
		return w.Close()
	}
	if err := send(); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	for _, u := range []*user{alice, bob} {
		msgs := waitInbox(t, u, 1)
		if msgs[0].Subject != "Hello cells" {
			t.Fatalf("%s got %q", u.addr, msgs[0].Subject)
		}
	}

	// The sender retries the same message (say, it missed our 250): the
	// cells recognise it and store nothing twice.
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"alice@eu.example", "bob@us.example"} {
		if err := c.Rcpt(addr, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := send(); err != nil {
		t.Fatalf("retried DATA: %v", err)
	}
	// A different message afterwards arrives, so the retry had its chance.
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@eu.example", nil); err != nil {
		t.Fatal(err)
	}
	body = strings.Replace(body, "Hello cells", "Second", 1)
	if err := send(); err != nil {
		t.Fatal(err)
	}
	msgs := waitInbox(t, alice, 2)
	if len(msgs) != 2 {
		t.Fatalf("alice has %d messages, want 2 (the retry stored once)", len(msgs))
	}
	if n := len(waitInbox(t, bob, 1)); n != 1 {
		t.Fatalf("bob has %d messages, want 1", n)
	}

	// More than 100 recipients: 452 4.5.3 from the 101st.
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	var last error
	for i := range 101 {
		last = c.Rcpt(fmt.Sprintf("alice+%d@eu.example", i), nil)
	}
	if smtpCode(last) != 452 {
		t.Fatalf("101st recipient: %v, want 452", last)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	// DATA before RCPT: a bad sequence, and the session stays usable.
	if err := c.Mail("someone@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Data(); smtpCode(err) != 502 && smtpCode(err) != 503 && smtpCode(err) != 554 {
		t.Fatalf("DATA without RCPT: %v", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("session unusable after a bad sequence: %v", err)
	}
	_ = context.Background()
}

// SMTP smuggling: a bare-LF (or bare-CR) dot line inside DATA must not end
// the message, so no hidden second transaction is ever accepted.
func TestSMTPSmugglingIsNotPossible(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	for _, sep := range []string{"\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n"} {
		conn, err := net.Dial("tcp", s.smtp)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		read := func() string {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			var all string
			for {
				line, err := r.ReadString('\n')
				all += line
				if err != nil || len(line) < 4 || line[3] == ' ' {
					return all
				}
			}
		}
		read()
		smuggled := "MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@us.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
		for _, cmd := range []string{"EHLO evil.test\r\n", "MAIL FROM:<a@remote.test>\r\n", "RCPT TO:<alice@eu.example>\r\n", "DATA\r\n"} {
			conn.Write([]byte(cmd))
			read()
		}
		conn.Write([]byte("Subject: outer\r\n\r\nhello" + sep + smuggled + "\r\n.\r\n"))
		reply := read()
		conn.Write([]byte("QUIT\r\n"))
		read()
		conn.Close()
		if !strings.HasPrefix(reply, "554 5.6.0") {
			t.Fatalf("separator %q: reply %q, want the message refused (bare CR or LF)", sep, reply)
		}
	}
	// A marker to bob after the attempts: once it is in, anything smuggled
	// (spooled earlier) would be in too. Bob must hold only the marker.
	c, err := smtp.Dial(s.smtp)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("a@remote.test", []string{"bob@us.example", "alice@eu.example"}, strings.NewReader("Subject: marker\r\n\r\nm\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, m := range waitInbox(t, alice, 1) {
		if m.Subject != "marker" {
			t.Fatalf("a refused message reached alice: %q", m.Subject)
		}
	}
	for _, m := range waitInbox(t, bob, 1) {
		if m.Subject != "marker" {
			t.Fatalf("a smuggled message reached bob: %q", m.Subject)
		}
	}
}
