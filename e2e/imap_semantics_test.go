package e2e_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// rawAppend APPENDs one message with a synchronizing literal.
func (r *rawIMAP) rawAppend(mailbox, msg string) {
	r.t.Helper()
	r.tag++
	tag := fmt.Sprintf("T%d", r.tag)
	if _, err := fmt.Fprintf(r.w, "%s APPEND %s {%d}\r\n", tag, mailbox, len(msg)); err != nil {
		r.t.Fatal(err)
	}
	if l := r.line(); !strings.HasPrefix(l, "+") {
		r.t.Fatalf("APPEND continuation: %q", l)
	}
	if _, err := fmt.Fprintf(r.w, "%s\r\n", msg); err != nil {
		r.t.Fatal(err)
	}
	for {
		l := r.line()
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			if !strings.HasPrefix(rest, "OK") {
				r.t.Fatalf("APPEND: %s", rest)
			}
			return
		}
	}
}

// searchResult is the numbers of the one "* SEARCH" line among untagged.
func searchResult(t *testing.T, untagged []string) string {
	t.Helper()
	for _, l := range untagged {
		if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("no SEARCH in %q", untagged)
	return ""
}

// SEARCH's date, address and CONDSTORE semantics and ENVELOPE's address
// lists, as RFC 3501 and RFC 7162 give them (imaptest's search-date,
// search-addresses, esearch-condstore and fetch-envelope tests found each).
func TestIMAPSearchFetchSemantics(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	u := s.user(t, url, "semantics@eu.example")
	r := rawLogin(t, s.imaps, u.addr)
	for _, m := range []struct{ date, from, to string }{
		{"Sat, 24 Mar 2007 23:00:00 +0200", "<user-from (comment)@ (comment) domain.org>", "group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;"},
		{"Sun, 25 Mar 2007 00:30:00 +0200", "user-from@domain.org (RealFrom)", "<@route:user@domain>"},
		{"Sun, 25 Mar 2007 23:00:00 -0500", "Real From <other@domain.org>", "empty:;"},
	} {
		r.rawAppend("INBOX", fmt.Sprintf("Date: %s\r\nFrom: %s\r\nTo: %s\r\nSubject: s\r\n\r\nbody", m.date, m.from, m.to))
	}
	r.ok("SELECT INBOX")

	// SENTON and friends take the Date field's own day (RFC 3501 §6.4.4):
	// message 1 was sent on the 24th (21:00 UTC), message 2 on the 25th
	// (the 24th in UTC), message 3 on the 25th (the 26th in UTC).
	for q, want := range map[string]string{
		"SENTON 24-Mar-2007":     "1",
		"SENTON 25-Mar-2007":     "2 3",
		"SENTON 26-Mar-2007":     "",
		"SENTBEFORE 25-Mar-2007": "1",
		"SENTSINCE 25-Mar-2007":  "2 3",
		"SENTSINCE 26-Mar-2007":  "",
	} {
		if got := searchResult(t, r.ok("SEARCH %s", q)); got != want {
			t.Errorf("SEARCH %s = %q, want %q", q, got, want)
		}
	}

	// FROM/TO match the address as ENVELOPE has it: comments left out,
	// a trailing comment as the name, groups by their name (§6.4.4).
	for q, want := range map[string]string{
		"FROM user-from@domain.org": "1 2",
		"FROM realfrom":             "2",
		"FROM real":                 "2 3",
		"FROM comment":              "",
		"TO groupname":              "",
		"TO group2":                 "1",
		"TO g2@d2.org":              "1",
		"TO user@domain":            "2",
		"TO empty":                  "3",
	} {
		if got := searchResult(t, r.ok("SEARCH %s", q)); got != want {
			t.Errorf("SEARCH %s = %q, want %q", q, got, want)
		}
	}

	// ENVELOPE: groups as start/end entries, the source route as adl
	// (RFC 3501 §7.4.2).
	env := strings.Join(r.ok("FETCH 1:3 ENVELOPE"), "\n")
	for _, want := range []string{
		`((NIL NIL "group" NIL) (NIL NIL "g1" "d1.org") (NIL NIL "g2" "d2.org") (NIL NIL NIL NIL) (NIL NIL "group2" NIL) (NIL NIL "g3" "d3.org") (NIL NIL NIL NIL))`,
		`((NIL NIL "user-from" "domain.org"))`,
		`(("RealFrom" NIL "user-from" "domain.org"))`,
		`((NIL "@route" "user" "domain"))`,
		`((NIL NIL "empty" NIL) (NIL NIL NIL NIL))`,
	} {
		if !strings.Contains(env, want) {
			t.Errorf("ENVELOPE lacks %s:\n%s", want, env)
		}
	}

	// FETCH MODSEQ enables CONDSTORE: the mailbox's HIGHESTMODSEQ comes
	// with it (RFC 7162 §3.1), once.
	u1 := r.ok("FETCH 1 (MODSEQ)")
	highest := highestModSeq(t, u1...)
	if highest == 0 {
		t.Fatalf("HIGHESTMODSEQ 0 in %q", u1)
	}
	if u2 := r.ok("FETCH 1 (MODSEQ)"); strings.Contains(strings.Join(u2, "\n"), "HIGHESTMODSEQ") {
		t.Errorf("HIGHESTMODSEQ again on the second FETCH MODSEQ: %q", u2)
	}

	// ESEARCH MODSEQ (RFC 7162 §3.1.5): with MIN or MAX alone, the
	// mod-sequence of the message it names; else the highest found.
	mod := map[int]string{}
	for _, seq := range []int{1, 3, 2} { // modseq(1) < modseq(3) < modseq(2)
		for _, l := range r.ok("STORE %d +FLAGS (\\Seen)", seq) {
			if m := regexp.MustCompile(`MODSEQ \((\d+)\)`).FindStringSubmatch(l); m != nil {
				mod[seq] = m[1]
			}
		}
	}
	esearch := func(ret string) string {
		for _, l := range r.ok(`SEARCH RETURN (%s) 1:3 MODSEQ "/flags/\\seen" all 1`, ret) {
			if strings.HasPrefix(l, "* ESEARCH") {
				return l
			}
		}
		t.Fatalf("no ESEARCH for RETURN (%s)", ret)
		return ""
	}
	for ret, want := range map[string]string{
		"MIN":     "MIN 1 MODSEQ " + mod[1],
		"MAX":     "MAX 3 MODSEQ " + mod[3],
		"MIN MAX": "MIN 1 MAX 3 MODSEQ " + mod[3],
		"ALL":     "ALL 1:3 MODSEQ " + mod[2],
		"MIN ALL": "ALL 1:3 MIN 1 MODSEQ " + mod[2],
	} {
		if got := esearch(ret); !strings.HasSuffix(got, want) {
			t.Errorf("SEARCH RETURN (%s) MODSEQ: %q, want it to end %q", ret, got, want)
		}
	}
}
