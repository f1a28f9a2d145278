package e2e_test

import (
	"regexp"
	"strings"
	"testing"
)

// kwSeen follows one session's responses as imaptest does: the keywords of
// the last FLAGS response, and an error for a FETCH that shows a keyword
// not among them ("Keyword used without being in FLAGS").
type kwSeen struct {
	t     *testing.T
	name  string
	known map[string]bool
}

var (
	reFlagsResp = regexp.MustCompile(`^\* FLAGS \(([^)]*)\)`)
	reFetchFl   = regexp.MustCompile(`^\* \d+ FETCH \(.*FLAGS \(([^)]*)\)`)
)

// check reads the untagged responses of one command, in order.
func (k *kwSeen) check(cmd string, lines []string) {
	k.t.Helper()
	for _, l := range lines {
		if m := reFlagsResp.FindStringSubmatch(l); m != nil {
			k.known = map[string]bool{}
			for _, f := range strings.Fields(m[1]) {
				k.known[strings.ToLower(f)] = true
			}
			continue
		}
		m := reFetchFl.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		for _, f := range strings.Fields(m[1]) {
			if !strings.HasPrefix(f, `\`) && !k.known[strings.ToLower(f)] {
				k.t.Errorf("session %s, %s: keyword %s shown before any FLAGS listed it: %q", k.name, cmd, f, lines)
			}
		}
	}
}

// A keyword another session has just put on a message is announced (FLAGS,
// RFC 3501 §7.2.6) before any response that shows it: the FETCH and STORE
// answers read the message as it is now, newer than what the last poll
// told, so they announce it themselves rather than leave it to the poll
// that follows them (imaptest stress: "Keyword used without being in
// FLAGS").
func TestIMAPKeywordsAnnouncedBeforeCommandResponses(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	a := rawLogin(t, s.imaps, alice.addr)
	for i := range 6 {
		if st := a.appendRaw("INBOX", "", "m"+string(rune('0'+i))); !strings.HasPrefix(st, "OK") {
			t.Fatalf("APPEND: %s", st)
		}
	}
	b := rawLogin(t, s.imaps, alice.addr)
	b.ok("SELECT INBOX")
	seen := &kwSeen{t: t, name: "a"}
	run := func(cmd string) {
		t.Helper()
		seen.check(cmd, a.ok("%s", cmd))
	}
	run("SELECT INBOX")

	// Each time, b adds a keyword new to the mailbox and a's next command
	// is the first to show that message's flags.
	for _, c := range []struct{ kw, cmd string }{
		{"kwfetch", "FETCH 1 FLAGS"},
		{"kwuid", "UID FETCH 2 (FLAGS)"},
		{"kwbody", "FETCH 3 (BODY[])"}, // sets \Seen, shows FLAGS
		{"kwstore", `STORE 4 +FLAGS (\Flagged)`},
		{"kwsilent", `STORE 5 -FLAGS (\Answered)`}, // no change: FLAGS as they are
	} {
		seq := c.cmd[strings.IndexAny(c.cmd, "0123456789")]
		b.ok("STORE %c +FLAGS.SILENT (%s)", seq, c.kw)
		run(c.cmd)
	}
	// With CONDSTORE, STORE .SILENT still answers MODSEQ (no FLAGS), and
	// FETCH answers MODSEQ with FLAGS.
	run("ENABLE CONDSTORE")
	b.ok("STORE 6 +FLAGS.SILENT (kwmodseq)")
	run("FETCH 6 (FLAGS MODSEQ)")
	for k := range map[string]bool{"kwfetch": true, "kwuid": true, "kwbody": true, "kwstore": true, "kwsilent": true, "kwmodseq": true} {
		if !seen.known[k] {
			t.Errorf("a was never told of %s: %v", k, seen.known)
		}
	}
}
