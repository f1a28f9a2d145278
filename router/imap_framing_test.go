package router_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"
)

// send writes raw bytes (commands with their CRLFs and literals) and
// returns the lines up to the one tagged tag, which must come within a few
// seconds: a server waiting for more input fails the test.
func (r *rawIMAP) send(tag, raw string) (untagged []string, status string) {
	r.t.Helper()
	start := time.Now()
	if _, err := io.WriteString(r.w, raw); err != nil {
		r.t.Fatal(err)
	}
	for {
		l := r.line()
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			if d := time.Since(start); d > 5*time.Second {
				r.t.Errorf("%q answered after %v", raw[:min(len(raw), 40)], d)
			}
			return untagged, rest
		}
		untagged = append(untagged, l)
	}
}

func hasLine(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// Malformed commands after login, through the router to the cell: each
// gets its BAD or NO at once (never SERVERBUG, never a wait for more
// input), and the session goes on with the next command.
func TestIMAPMalformedCommandsAnswered(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	s.deliver(t, alice.addr, "one", "body")
	waitInbox(t, alice, 1)

	// Before login the router parses: an unterminated quoted string is
	// refused at the end of its line.
	c, err := tls.Dial("tcp", s.imaps, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pre := &rawIMAP{t: t, c: c, r: bufio.NewReader(c), w: c}
	pre.line() // greeting
	if _, st := pre.send("p1", "p1 LOGIN \"alice@eu.example\r\np2 NOOP\r\n"); !strings.HasPrefix(st, "BAD") {
		t.Errorf("unterminated quoted string before login: %s", st)
	}
	if _, st := pre.send("p2", ""); !strings.HasPrefix(st, "OK") {
		t.Errorf("the command after it: %s", st)
	}

	r := rawLogin(t, s.imaps, alice.addr)
	r.ok("SELECT INBOX")
	for _, c := range []struct{ name, tag, raw, want string }{
		// RFC 9051 §9: a quoted string ends on its line.
		{"unterminated quoted string", "a1", "a1 SELECT \"INBOX\r\n", "BAD"},
		{"unterminated quoted string, escape at the end", "a2", "a2 STATUS \"INBOX\\\r\n", "BAD"},
		// A synchronizing literal over 4 KiB is refused before it is sent
		// (no "+"), RFC 9051 §7.1 TOOBIG.
		{"synchronizing literal over 4 KiB", "a3", "a3 STATUS {5000}\r\n", "NO [TOOBIG]"},
		// A non-synchronizing one (LITERAL+, RFC 7888) is skipped: its
		// data, which here looks like a command, is never run.
		{"non-synchronizing literal over 4 KiB", "a4",
			"a4 STATUS {5000+}\r\n" + strings.Repeat("x", 4000) + "\r\nz1 DELETE Trash\r\n" + strings.Repeat("y", 5000-4000-len("\r\nz1 DELETE Trash\r\n")) + " (MESSAGES)\r\n",
			"NO [TOOBIG]"},
		{"invalid modified UTF-7", "a5", "a5 STATUS &Jjo (MESSAGES)\r\n", "BAD"},
		{"invalid modified UTF-7 in SELECT", "a6", "a6 EXAMINE \"&AGE-&AGE-\"\r\n", "BAD"},
		{"sequence number over 2^32-1", "a7", "a7 FETCH 4294967296 FLAGS\r\n", "BAD"},
		{"UID range over 2^32-1", "a8", "a8 UID FETCH 1:99999999999 FLAGS\r\n", "BAD"},
		{"UID search over 2^32-1", "a9", "a9 UID SEARCH UID 4294967296\r\n", "BAD"},
		{"deep parentheses", "b1", "b1 SEARCH " + strings.Repeat("(", 500) + "ALL" + strings.Repeat(")", 500) + "\r\n", "BAD"},
		{"deeper parentheses", "b2", "b2 SEARCH " + strings.Repeat("(", 5000) + "\r\n", "BAD"},
		{"bad date", "b3", "b3 SEARCH SINCE 31-Foo-2020\r\n", "BAD"},
		{"bad date-time", "b4", "b4 APPEND INBOX \"99-Jan-2020 10:00:00 +0000\" {3}\r\n", "BAD"},
		// A line over the command limit: BAD [TOOBIG], and nothing of it
		// is read as a command.
		{"line over the limit", "b5", "b5 SEARCH TEXT " + strings.Repeat("a", 60000) + " z2 DELETE Trash\r\n", "BAD [TOOBIG]"},
	} {
		t.Logf("%s", c.name)
		u, st := r.send(c.tag, c.raw)
		if !strings.HasPrefix(st, c.want) {
			t.Errorf("%s: got %s (untagged %q), want %s", c.name, st, u, c.want)
		}
		// The session goes on, and nothing of the refused command was
		// read as one.
		if u := r.ok("NOOP"); hasLine(u, "z") {
			t.Errorf("%s: data was read as a command: %q", c.name, u)
		}
	}
	// A line with no command: untagged BAD, the session goes on.
	if u, st := r.send("c1", "\r\nc1 NOOP\r\n"); !hasLine(u, "* BAD") || !strings.HasPrefix(st, "OK") {
		t.Errorf("empty line: %q %s", u, st)
	}
	// Trash is still there: nothing injected ran.
	if u := r.ok(`LIST "" Trash`); !hasLine(u, "* LIST") {
		t.Errorf("Trash was deleted: %q", u)
	}
}

// LIST "" "" answers the hierarchy delimiter (RFC 3501 §6.3.8, RFC 9051
// §6.3.9); SELECT's LIST response goes only to IMAP4rev2 clients
// (RFC 9051 §6.3.2; RFC 3501 has none).
func TestIMAPListDelimiterAndSelectList(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	r := rawLogin(t, s.imaps, alice.addr)
	if u := r.ok(`LIST "" ""`); !hasLine(u, `* LIST (\Noselect) "/" ""`) {
		t.Errorf(`LIST "" "": %q`, u)
	}
	if u := r.ok("SELECT INBOX"); hasLine(u, "* LIST") {
		t.Errorf("SELECT sent an IMAP4rev1 client a LIST response: %q", u)
	}
	r.ok("ENABLE IMAP4rev2")
	if u := r.ok("SELECT INBOX"); !hasLine(u, `* LIST () "/" INBOX`) && !hasLine(u, `* LIST () "/" "INBOX"`) {
		t.Errorf("SELECT after ENABLE IMAP4rev2: no LIST response: %q", u)
	}
}
