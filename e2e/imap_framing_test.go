package e2e_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
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

// hasText: some line contains sub.
func hasText(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
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
		// Modified UTF-7 (RFC 3501 §5.1.3): no mailbox has such a name,
		// and none is made.
		{"invalid modified UTF-7", "a5", "a5 STATUS &Jjo (MESSAGES)\r\n", "NO [NONEXISTENT]"},
		{"invalid modified UTF-7 in SELECT", "a6", "a6 EXAMINE \"&AGE-&AGE-\"\r\n", "NO [NONEXISTENT]"},
		{"invalid modified UTF-7 in CREATE", "a6c", "a6c CREATE &Jjo\r\n", "BAD"},
		{"invalid modified UTF-7 in RENAME", "a6r", "a6r RENAME Trash &Jjo\r\n", "BAD"},
		{"invalid modified UTF-7 in LIST", "a6l", "a6l LIST \"\" &Jjo*\r\n", "OK"},
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

	// An APPEND over the limit sent non-synchronizing: NO [TOOBIG] after
	// its data, none of which is read as commands.
	big := strings.Repeat(strings.Repeat("x", 1000)+"\r\nz3 DELETE Trash\r\n", 52<<10) // over MaxAppend (50 MiB)
	if u, st := r.send("c3", fmt.Sprintf("c3 APPEND INBOX {%d+}\r\n%s\r\n", len(big), big)); !strings.HasPrefix(st, "NO [TOOBIG]") || hasLine(u, "z3") {
		t.Errorf("APPEND over the limit, non-synchronizing: %s %q", st, u[:min(len(u), 5)])
	}
	if u := r.ok(`LIST "" Trash`); !hasLine(u, "* LIST") {
		t.Errorf("Trash was deleted: %q", u)
	}

	// A non-synchronizing literal too large to skip (RFC 7888 §4): BAD
	// [TOOBIG] and BYE at once, since its data cannot be told from
	// commands.
	r = rawLogin(t, s.imaps, alice.addr)
	if u, st := r.send("d1", "d1 APPEND INBOX {99999999999+}\r\n"); !strings.HasPrefix(st, "BAD [TOOBIG]") {
		t.Errorf("APPEND of a 100 GB non-synchronizing literal: %s %q", st, u)
	}
	if l := r.line(); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("after it: %q, want BYE", l)
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

// appendRaw APPENDs a small message with the given flags (a LITERAL+
// literal) and returns the tagged status.
func (r *rawIMAP) appendRaw(box, flags, subject string) string {
	r.t.Helper()
	msg := "From: a@b.example\r\nSubject: " + subject + "\r\n\r\nbody\r\n"
	_, st := r.send("ap", fmt.Sprintf("ap APPEND %s (%s) {%d+}\r\n%s\r\n", box, flags, len(msg), msg))
	return st
}

// indexOf is the position of the first line starting with prefix, -1 if none.
func indexOf(lines []string, prefix string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}

// A keyword new to the mailbox is announced to every session that has it
// selected (FLAGS, OK [PERMANENTFLAGS]) before a FETCH shows it, a SELECT
// lists the keywords in use (RFC 3501 §7.2.6, §7.1), and a mailbox takes
// a bounded number of them (NO [LIMIT]).
func TestIMAPKeywordsAnnounced(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	a := rawLogin(t, s.imaps, alice.addr)
	for i := range 6 {
		if st := a.appendRaw("INBOX", `\Seen`, fmt.Sprint("m", i)); !strings.HasPrefix(st, "OK") {
			t.Fatalf("APPEND: %s", st)
		}
	}
	u := a.ok("SELECT INBOX")
	if i := indexOf(u, "* FLAGS"); i < 0 || strings.Contains(u[i], "kw1") {
		t.Fatalf("SELECT FLAGS: %q", u)
	}
	b := rawLogin(t, s.imaps, alice.addr)
	b.ok("SELECT INBOX")

	u = a.ok("STORE 1 +FLAGS (kw1)")
	fl, perm, fetch := indexOf(u, "* FLAGS ("), indexOf(u, "* OK [PERMANENTFLAGS ("), indexOf(u, "* 1 FETCH")
	if fl < 0 || !strings.Contains(u[fl], " kw1") || perm < 0 || !strings.Contains(u[perm], `kw1 \*`) || fetch < fl || fetch < perm {
		t.Errorf("STORE of a new keyword: %q", u)
	}
	u = b.ok("NOOP")
	if fl, fetch := indexOf(u, "* FLAGS ("), indexOf(u, "* 1 FETCH"); fl < 0 || !strings.Contains(u[fl], " kw1") || fetch < fl {
		t.Errorf("the other session was not told of kw1 before the FETCH: %q", u)
	}
	if u := a.ok("STORE 2 +FLAGS (kw1)"); indexOf(u, "* FLAGS") >= 0 {
		t.Errorf("a keyword in use announced again: %q", u)
	}
	b.ok("NOOP")

	// APPEND with a new keyword: the selected sessions learn it with the
	// new message.
	c := rawLogin(t, s.imaps, alice.addr)
	if st := c.appendRaw("INBOX", "kw2", "m6"); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND: %s", st)
	}
	for name, r := range map[string]*rawIMAP{"a": a, "b": b} {
		u := r.ok("NOOP")
		if fl := indexOf(u, "* FLAGS ("); fl < 0 || !strings.Contains(u[fl], "kw1 kw2") || indexOf(u, "* 7 EXISTS") < 0 {
			t.Errorf("session %s after an APPEND with kw2: %q", name, u)
		}
	}
	// A new SELECT lists both.
	if u := c.ok("EXAMINE INBOX"); indexOf(u, "* FLAGS") < 0 || !strings.Contains(u[indexOf(u, "* FLAGS")], "kw1 kw2") {
		t.Errorf("EXAMINE FLAGS: %q", u)
	}

	// The bound: 5 × 50 more keywords fit (252), 50 more do not.
	kws := func(from int) string {
		var k []string
		for i := range 50 {
			k = append(k, fmt.Sprintf("k%03d", from+i))
		}
		return strings.Join(k, " ")
	}
	for i := range 5 {
		a.ok("STORE %d +FLAGS (%s)", i+1, kws(i*50))
	}
	if _, st := a.do("STORE 6 +FLAGS (%s)", kws(250)); !strings.HasPrefix(st, "NO [LIMIT]") {
		t.Errorf("past the keyword bound: %s", st)
	}
	// At the bound (256) PERMANENTFLAGS no longer offers \* (RFC 3501
	// §7.1), and one more is refused.
	u = a.ok("STORE 6 +FLAGS (x1 x2 x3 x4)")
	if i := indexOf(u, "* OK [PERMANENTFLAGS ("); i < 0 || strings.Contains(u[i], `\*`) || !strings.Contains(u[i], "x4") {
		t.Errorf("PERMANENTFLAGS at the bound: %q", u)
	}
	if _, st := a.do("STORE 6 +FLAGS (x5)"); !strings.HasPrefix(st, "NO [LIMIT]") {
		t.Errorf("one past the keyword bound: %s", st)
	}
	if st := c.appendRaw("INBOX", kws(300), "m7"); !strings.HasPrefix(st, "NO [LIMIT]") {
		t.Errorf("APPEND past the keyword bound: %s", st)
	}
	// Keywords in use still go on messages.
	a.ok("STORE 6 +FLAGS (k000 kw2)")
}

// \Recent (RFC 3501 §2.3.2): a message is \Recent in the one session
// first told of it, by SELECT or by a later update; EXAMINE shows without
// taking; STATUS RECENT counts those not yet taken; IMAP4rev2 clients see
// neither (RFC 9051).
func TestIMAPRecent(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	w := rawLogin(t, s.imaps, alice.addr) // only APPENDs
	for i := range 2 {
		w.appendRaw("INBOX", "", fmt.Sprint("m", i))
	}
	recentFlags := func(r *rawIMAP) string {
		t.Helper()
		var out []string
		for _, l := range r.ok("FETCH 1:* FLAGS") {
			out = append(out, fmt.Sprint(strings.Contains(l, `\Recent`)))
		}
		return strings.Join(out, " ")
	}
	a := rawLogin(t, s.imaps, alice.addr)
	// IMAP4rev1's SELECT also names the first unseen message (RFC 3501
	// §6.3.1).
	if u := a.ok("SELECT INBOX"); indexOf(u, "* 2 RECENT") < 0 || indexOf(u, "* OK [UNSEEN 1]") < 0 {
		t.Errorf("first SELECT: %q", u)
	}
	if got := recentFlags(a); got != "true true" {
		t.Errorf("first session's \\Recent: %s", got)
	}
	b := rawLogin(t, s.imaps, alice.addr)
	if u := b.ok("SELECT INBOX"); indexOf(u, "* 0 RECENT") < 0 {
		t.Errorf("second SELECT: %q", u)
	}
	if got := recentFlags(b); got != "false false" {
		t.Errorf("second session's \\Recent: %s", got)
	}
	w.appendRaw("INBOX", "", "m2")
	if u := w.ok("STATUS INBOX (RECENT)"); indexOf(u, "* STATUS INBOX (RECENT 1)") < 0 {
		t.Errorf("STATUS RECENT: %q", u)
	}
	// b is told first: the new message is \Recent there.
	if u := b.ok("NOOP"); indexOf(u, "* 3 EXISTS") < 0 || indexOf(u, "* 1 RECENT") < 0 {
		t.Errorf("b's update: %q", u)
	}
	if u := a.ok("NOOP"); indexOf(u, "* 3 EXISTS") < 0 || indexOf(u, "* 2 RECENT") < 0 {
		t.Errorf("a's update: %q", u)
	}
	if got := recentFlags(b); got != "false false true" {
		t.Errorf("b's \\Recent: %s", got)
	}
	if got := recentFlags(a); got != "true true false" {
		t.Errorf("a's \\Recent: %s", got)
	}
	if u := b.ok("SEARCH RECENT"); indexOf(u, "* SEARCH 3") < 0 {
		t.Errorf("SEARCH RECENT: %q", u)
	}
	if u := w.ok("STATUS INBOX (RECENT)"); indexOf(u, "* STATUS INBOX (RECENT 0)") < 0 {
		t.Errorf("STATUS RECENT once taken: %q", u)
	}

	// EXAMINE shows what is unclaimed and leaves it.
	w.appendRaw("INBOX", "", "m3")
	e := rawLogin(t, s.imaps, alice.addr)
	if u := e.ok("EXAMINE INBOX"); indexOf(u, "* 1 RECENT") < 0 {
		t.Errorf("EXAMINE: %q", u)
	}
	c := rawLogin(t, s.imaps, alice.addr)
	if u := c.ok("SELECT INBOX"); indexOf(u, "* 1 RECENT") < 0 {
		t.Errorf("SELECT after EXAMINE: %q", u)
	}
	// An IMAP4rev2 client hears nothing of \Recent.
	w.appendRaw("INBOX", "", "m4")
	r2 := rawLogin(t, s.imaps, alice.addr)
	r2.ok("ENABLE IMAP4rev2")
	if u := r2.ok("SELECT INBOX"); indexOf(u, "* 1 RECENT") >= 0 || indexOf(u, "RECENT") >= 0 {
		t.Errorf("IMAP4rev2 SELECT: %q", u)
	}
	if got := recentFlags(r2); strings.Contains(got, "true") {
		t.Errorf("IMAP4rev2 FETCH shows \\Recent: %s", got)
	}
}

// Subscriptions in LIST and LSUB: CREATE does not subscribe (RFC 3501
// §6.3.3); LSUB lists a level whose subscribed children "%" does not
// reach with \Noselect (RFC 3501 §6.3.9); LIST (SUBSCRIBED RECURSIVEMATCH)
// gives it CHILDINFO ("SUBSCRIBED") (RFC 5258 §3.5).
func TestIMAPSubscriptionListing(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	r := rawLogin(t, s.imaps, alice.addr)
	for _, n := range []string{"p", "p/a", "q/b"} {
		r.ok("CREATE %s", n)
	}
	if u := r.ok(`LSUB "" *`); hasText(u, `"/" "p"`) || hasText(u, `"p/a"`) {
		t.Errorf("CREATE subscribed: %q", u)
	}
	r.ok("SUBSCRIBE p/a")
	r.ok("SUBSCRIBE q/b")
	u := r.ok(`LSUB "" %%`)
	if !hasLine(u, `* LSUB (\Noselect) "/" "p"`) || !hasLine(u, `* LSUB (\Noselect) "/" "q"`) || hasText(u, `"p/a"`) {
		t.Errorf(`LSUB "" %%: %q`, u)
	}
	if u := r.ok(`LSUB "" *`); hasText(u, `(\Noselect) "/" "p"`) || indexOf(u, `* LSUB (\HasNoChildren \Subscribed) "/" "p/a"`) < 0 {
		t.Errorf(`LSUB "" *: %q`, u)
	}
	u = r.ok(`LIST (SUBSCRIBED RECURSIVEMATCH) "" %% RETURN (CHILDREN)`)
	if !hasLine(u, `* LIST (\HasChildren) "/" "p" (CHILDINFO ("SUBSCRIBED"))`) ||
		!hasLine(u, `* LIST (\NonExistent \Noselect \HasChildren) "/" "q" (CHILDINFO ("SUBSCRIBED"))`) {
		t.Errorf("LIST (SUBSCRIBED RECURSIVEMATCH): %q", u)
	}
	if u := r.ok(`LIST (SUBSCRIBED) "" %%`); hasText(u, `"/" "p"`) {
		t.Errorf("LIST (SUBSCRIBED) listed an unsubscribed parent: %q", u)
	}

	// A subscription outlives its mailbox (RFC 3501 §6.3.6) and is listed
	// \NonExistent (RFC 5258 §3.1); it can still be unsubscribed.
	r.ok("DELETE q/b")
	if u := r.ok(`LIST (SUBSCRIBED) "" q/*`); !hasLine(u, `* LIST (\Subscribed \NonExistent) "/" "q/b"`) {
		t.Errorf("LIST (SUBSCRIBED) after DELETE: %q", u)
	}
	if u := r.ok(`LIST "" q/*`); hasText(u, `"q/b"`) {
		t.Errorf("LIST shows a deleted mailbox: %q", u)
	}
	if u := r.ok(`LSUB "" q/*`); !hasLine(u, `* LSUB (\Noselect) "/" "q/b"`) {
		t.Errorf("LSUB after DELETE: %q", u)
	}
	r.ok("CREATE q/b") // made again by IMAP: still subscribed, from before
	if u := r.ok(`LSUB "" q/*`); !hasLine(u, `* LSUB (\HasNoChildren \Subscribed) "/" "q/b"`) {
		t.Errorf("LSUB after CREATE again: %q", u)
	}
	r.ok("DELETE q/b")
	r.ok("UNSUBSCRIBE q/b")
	if u := r.ok(`LSUB "" *`); hasText(u, `"q/b"`) {
		t.Errorf("UNSUBSCRIBE of a deleted mailbox: %q", u)
	}
	r.ok("UNSUBSCRIBE never/was") // not subscribed: no error

	// RENAME takes the subscriptions of the mailboxes it renames along.
	r.ok("RENAME p r")
	if u := r.ok(`LSUB "" *`); hasText(u, `"p/a"`) || !hasText(u, `"r/a"`) {
		t.Errorf("LSUB after RENAME: %q", u)
	}
}
