package e2e_test

import (
	"bufio"
	"compress/flate"
	"crypto/tls"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// rawIMAP speaks IMAP as text, for what go-imap's client does not (QRESYNC,
// VANISHED, ID) and to see the exact responses.
type rawIMAP struct {
	t   testing.TB
	c   *tls.Conn
	r   *bufio.Reader
	w   io.Writer // c, or a DEFLATE stream over it
	tag int
}

func rawLogin(t testing.TB, addr, user string) *rawIMAP {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawIMAP{t: t, c: c, r: bufio.NewReader(c), w: c}
	if greet := r.line(); !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("greeting: %q", greet)
	}
	if _, st := r.do(`LOGIN %q "correct horse battery"`, user); !strings.HasPrefix(st, "OK") {
		t.Fatalf("LOGIN: %s", st)
	}
	return r
}

// line reads one response line, literals included, without its CRLF.
func (r *rawIMAP) line() string {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b strings.Builder
	for {
		l, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read: %v (after %q)", err, b.String()+l)
		}
		l = strings.TrimRight(l, "\r\n")
		b.WriteString(l)
		m := regexp.MustCompile(`\{(\d+)\}$`).FindStringSubmatch(l)
		if m == nil {
			return b.String()
		}
		n, _ := strconv.Atoi(m[1])
		lit := make([]byte, n)
		if _, err := io.ReadFull(r.r, lit); err != nil {
			r.t.Fatal(err)
		}
		b.Write(lit)
	}
}

// do sends one command and returns its untagged responses and the tagged
// status ("OK ...", "NO ...", "BAD ...").
func (r *rawIMAP) do(format string, args ...any) (untagged []string, status string) {
	r.t.Helper()
	r.tag++
	tag := fmt.Sprintf("T%d", r.tag)
	if _, err := fmt.Fprintf(r.w, tag+" "+format+"\r\n", args...); err != nil {
		r.t.Fatal(err)
	}
	if f, ok := r.w.(*flate.Writer); ok {
		if err := f.Flush(); err != nil {
			r.t.Fatal(err)
		}
	}
	for {
		l := r.line()
		if rest, ok := strings.CutPrefix(l, tag+" "); ok {
			return untagged, rest
		}
		untagged = append(untagged, l)
	}
}

// compress turns on COMPRESS=DEFLATE (RFC 4978): both ways compressed
// from the end of the command and of its tagged OK.
func (r *rawIMAP) compress() {
	r.t.Helper()
	r.ok("COMPRESS DEFLATE")
	fw, err := flate.NewWriter(r.c, flate.BestSpeed)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.r.Buffered() > 0 {
		r.t.Fatalf("%d bytes after COMPRESS's OK", r.r.Buffered())
	}
	r.w, r.r = fw, bufio.NewReader(flate.NewReader(r.c))
}

// ok is do for a command that must succeed.
func (r *rawIMAP) ok(format string, args ...any) []string {
	r.t.Helper()
	u, st := r.do(format, args...)
	if !strings.HasPrefix(st, "OK") {
		r.t.Fatalf("%s: %s (untagged %q)", fmt.Sprintf(format, args...), st, u)
	}
	return u
}

var (
	reHighest = regexp.MustCompile(`HIGHESTMODSEQ (\d+)`)
	reFetch   = regexp.MustCompile(`^\* \d+ FETCH \(UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)$`)
)

func highestModSeq(t testing.TB, lines ...string) uint64 {
	t.Helper()
	for _, l := range lines {
		if m := reHighest.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n
		}
	}
	t.Fatalf("no HIGHESTMODSEQ in %q", lines)
	return 0
}

// fetched maps UID to (flags, modseq) for FETCH (UID FLAGS MODSEQ) lines;
// other lines are returned apart.
func fetched(lines []string) (map[uint32]string, map[uint32]uint64, []string) {
	flags, mods := map[uint32]string{}, map[uint32]uint64{}
	var rest []string
	for _, l := range lines {
		m := reFetch.FindStringSubmatch(l)
		if m == nil {
			rest = append(rest, l)
			continue
		}
		uid, _ := strconv.ParseUint(m[1], 10, 32)
		mod, _ := strconv.ParseUint(m[3], 10, 64)
		flags[uint32(uid)], mods[uint32(uid)] = m[2], mod
	}
	return flags, mods, rest
}

// CONDSTORE and QRESYNC (RFC 7162) and ID (RFC 2971) through the router:
// a client that was away learns, in its SELECT, exactly what changed.
func TestIMAPCondStoreQResync(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	for i := 1; i <= 5; i++ {
		s.deliver(t, alice.addr, fmt.Sprintf("m%d", i), "x")
		waitInbox(t, alice, i)
	}

	a := rawLogin(t, s.imaps, alice.addr)
	caps := strings.Join(a.ok("CAPABILITY"), " ")
	for _, c := range []string{"CONDSTORE", "QRESYNC", "ID", "ENABLE"} {
		if !slices.Contains(strings.Fields(caps), c) {
			t.Errorf("capability %s missing: %s", c, caps)
		}
	}
	if u := a.ok(`ID ("name" "rawtest" "version" "1")`); len(u) != 1 || !strings.HasPrefix(u[0], `* ID ("name" "cellmail"`) {
		t.Fatalf("ID: %q", u)
	}
	if u := a.ok("ID NIL"); len(u) != 1 || !strings.HasPrefix(u[0], "* ID (") {
		t.Fatalf("ID NIL: %q", u)
	}
	if _, st := a.do(`ID ("a-field-name-longer-than-thirty-octets" "x")`); !strings.HasPrefix(st, "BAD") {
		t.Fatalf("ID with a long field: %s", st)
	}
	// QUOTA (RFC 9208): one root over the account, storage in KiB; the
	// user cannot set it.
	if !slices.Contains(strings.Fields(caps), "QUOTA") || !slices.Contains(strings.Fields(caps), "QUOTA=RES-STORAGE") {
		t.Errorf("QUOTA capabilities missing: %s", caps)
	}
	u := a.ok("GETQUOTAROOT INBOX")
	if len(u) != 2 || u[0] != `* QUOTAROOT INBOX ""` || !regexp.MustCompile(`^\* QUOTA "" \(STORAGE [1-9]\d* [1-9]\d*\)$`).MatchString(u[1]) {
		t.Fatalf("GETQUOTAROOT: %q", u)
	}
	if _, st := a.do("GETQUOTAROOT Nonexistent"); !strings.HasPrefix(st, "NO") {
		t.Fatalf("GETQUOTAROOT of a missing mailbox: %s", st)
	}
	if _, st := a.do(`GETQUOTA "other"`); !strings.HasPrefix(st, "NO [NONEXISTENT]") {
		t.Fatalf("GETQUOTA of another root: %s", st)
	}
	if _, st := a.do(`SETQUOTA "" (STORAGE 1)`); !strings.HasPrefix(st, "NO [NOPERM]") {
		t.Fatalf("SETQUOTA: %s", st)
	}
	// QRESYNC in SELECT needs ENABLE first; VANISHED needs UID FETCH.
	if _, st := a.do("SELECT INBOX (QRESYNC (1 1))"); !strings.HasPrefix(st, "BAD") {
		t.Fatalf("SELECT QRESYNC before ENABLE: %s", st)
	}
	if u := a.ok("ENABLE QRESYNC"); len(u) != 1 || u[0] != "* ENABLED QRESYNC" {
		t.Fatalf("ENABLE: %q", u)
	}
	sel := a.ok("SELECT INBOX")
	m0 := highestModSeq(t, sel...)
	var uidValidity string
	for _, l := range sel {
		if m := regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`).FindStringSubmatch(l); m != nil {
			uidValidity = m[1]
		}
	}
	flags, mods, _ := fetched(a.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)"))
	if len(flags) != 5 || uidValidity == "" {
		t.Fatalf("UID FETCH CHANGEDSINCE 0: %v %v (UIDVALIDITY %q)", flags, mods, uidValidity)
	}
	for uid, m := range mods {
		if m == 0 || m > m0 {
			t.Fatalf("UID %d has MODSEQ %d, HIGHESTMODSEQ is %d", uid, m, m0)
		}
	}
	if _, st := a.do("FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"); !strings.HasPrefix(st, "BAD") {
		t.Fatalf("FETCH VANISHED without UID: %s", st)
	}
	a.ok("LOGOUT")

	// While the client is away, another one flags 2, expunges 3, and a
	// message arrives (UID 6).
	b := imapLogin(t, s.imaps, alice.addr, nil)
	if _, err := b.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Store(imap.UIDSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.UIDExpunge(imap.UIDSetNum(3)).Collect(); err != nil {
		t.Fatal(err)
	}
	s.deliver(t, alice.addr, "m6", "x")
	waitInbox(t, alice, 5)
	waitFor(t, "UID 6", func() bool {
		r, err := b.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{imap.UIDSetNum(6)}}, nil).Wait()
		return err == nil && len(r.AllUIDs()) == 1
	})

	// Back: one SELECT tells it all, and nothing it already knew.
	a = rawLogin(t, s.imaps, alice.addr)
	a.ok("ENABLE QRESYNC")
	sel = a.ok("SELECT INBOX (QRESYNC (%s %d 1:5))", uidValidity, m0)
	flags, mods, rest := fetched(sel)
	if !slices.Contains(rest, "* VANISHED (EARLIER) 3") {
		t.Errorf("SELECT QRESYNC: no VANISHED (EARLIER) 3 in %q", rest)
	}
	if len(flags) != 2 || !strings.Contains(flags[2], `\Flagged`) || mods[2] <= m0 || mods[6] <= m0 {
		t.Errorf("SELECT QRESYNC: FETCH %v %v, want UIDs 2 (flagged) and 6 above %d", flags, mods, m0)
	}
	m1 := highestModSeq(t, sel...)
	if m1 <= m0 {
		t.Fatalf("HIGHESTMODSEQ %d after changes, was %d", m1, m0)
	}
	// The same through UID FETCH CHANGEDSINCE VANISHED.
	flags, _, rest = fetched(a.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", m0))
	if len(flags) != 2 || !slices.Contains(rest, "* VANISHED (EARLIER) 3") {
		t.Errorf("UID FETCH CHANGEDSINCE VANISHED: %v %q", flags, rest)
	}
	// A wrong UIDVALIDITY gets a plain SELECT.
	uv, _ := strconv.ParseUint(uidValidity, 10, 32)
	sel = a.ok("SELECT INBOX (QRESYNC (%d %d))", uv^1, m0)
	if flags, _, rest := fetched(sel); len(flags) != 0 || slices.ContainsFunc(rest, func(l string) bool { return strings.Contains(l, "VANISHED") }) {
		t.Errorf("SELECT QRESYNC with a wrong UIDVALIDITY resynced: %q", sel)
	}

	// STORE UNCHANGEDSINCE: 1 is unchanged since m0 and is stored; 2 was
	// changed, so it is refused with MODIFIED.
	u, st := a.do("UID STORE 1,2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)", m0)
	flags, mods, _ = fetched(u)
	if !strings.HasPrefix(st, "OK [MODIFIED 2]") || len(flags) != 1 || !strings.Contains(flags[1], `\Seen`) || mods[1] <= m1 {
		t.Fatalf("STORE UNCHANGEDSINCE: %s, %q", st, u)
	}

	// SEARCH MODSEQ, both forms, and STATUS HIGHESTMODSEQ.
	if u := a.ok("UID SEARCH MODSEQ %d", m1+1); len(u) != 1 || !regexp.MustCompile(`^\* SEARCH 1 \(MODSEQ \d+\)$`).MatchString(u[0]) {
		t.Errorf("UID SEARCH MODSEQ: %q", u)
	}
	if u := a.ok("UID SEARCH RETURN (COUNT) MODSEQ %d", m0+1); len(u) != 1 || !regexp.MustCompile(`^\* ESEARCH \(TAG "T\d+"\) UID COUNT 3 MODSEQ \d+$`).MatchString(u[0]) {
		t.Errorf("ESEARCH MODSEQ: %q", u)
	}
	if u := a.ok("STATUS Archive (MESSAGES HIGHESTMODSEQ)"); len(u) != 1 || !strings.Contains(u[0], "HIGHESTMODSEQ") {
		t.Errorf("STATUS HIGHESTMODSEQ: %q", u)
	}

	// With QRESYNC, an expunge is told as VANISHED, and EXPUNGE's OK
	// carries the new HIGHESTMODSEQ.
	a.ok("UID STORE 4 +FLAGS.SILENT (\\Deleted)")
	u, st = a.do("UID EXPUNGE 4")
	if !slices.Equal(u, []string{"* VANISHED 4"}) || highestModSeq(t, st) <= m1 {
		t.Fatalf("UID EXPUNGE under QRESYNC: %q %s", u, st)
	}
	// Another client's changes come unsolicited: FETCH with MODSEQ, VANISHED.
	if err := b.Store(imap.UIDSetNum(5), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagAnswered}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Move(imap.UIDSetNum(6), "Archive").Wait(); err != nil {
		t.Fatal(err)
	}
	flags, _, rest = fetched(a.ok("NOOP"))
	if !strings.Contains(flags[5], `\Answered`) || !slices.Contains(rest, "* VANISHED 6") {
		t.Fatalf("NOOP after another client's changes: %v %q", flags, rest)
	}
	// MOVE under QRESYNC: COPYUID, then VANISHED.
	u = a.ok("UID MOVE 5 Trash")
	if len(u) != 2 || !strings.Contains(u[0], "COPYUID") || u[1] != "* VANISHED 5" {
		t.Fatalf("UID MOVE under QRESYNC: %q", u)
	}

	// Bad QRESYNC data ($ is not a UID set here) is refused and changes
	// nothing; the session goes on.
	if _, st := a.do("SELECT INBOX (QRESYNC (%s 1 ($ 1:2)))", uidValidity); !strings.HasPrefix(st, "BAD") {
		t.Fatalf("SELECT QRESYNC with $: %s", st)
	}
	if _, st := a.do("SELECT INBOX (QRESYNC (%s 1 $))", uidValidity); !strings.HasPrefix(st, "BAD") {
		t.Fatalf("SELECT QRESYNC with $ as known UIDs: %s", st)
	}
	sel = a.ok("SELECT INBOX")
	// UNCHANGEDSINCE 0 always fails (RFC 7162 §3.1.3).
	if u, st := a.do("STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\\Flagged)"); !strings.HasPrefix(st, "OK [MODIFIED 1]") || len(u) != 0 {
		t.Fatalf("STORE UNCHANGEDSINCE 0: %s %q", st, u)
	}
	if flags, _, _ := fetched(a.ok("UID FETCH 1 (FLAGS) (CHANGEDSINCE 0)")); strings.Contains(flags[1], "Flagged") {
		t.Fatalf("STORE UNCHANGEDSINCE 0 changed flags: %v", flags)
	}
	// Under CONDSTORE a plain STORE answers with UID and MODSEQ.
	if flags, mods, rest := fetched(a.ok("STORE 1 +FLAGS (\\Answered)")); !strings.Contains(flags[1], "Answered") || mods[1] == 0 || len(rest) != 0 {
		t.Fatalf("STORE under CONDSTORE: %v %v %q", flags, mods, rest)
	}
	// An expunge by another client during a FETCH is held back (no
	// VANISHED then), and the client is told a HIGHESTMODSEQ below it;
	// the next NOOP tells the VANISHED.
	if err := b.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.UIDExpunge(imap.UIDSetNum(2)).Collect(); err != nil {
		t.Fatal(err)
	}
	u = a.ok("FETCH 1 (FLAGS MODSEQ)")
	_, mods, rest = fetched(u)
	held := highestModSeq(t, rest...)
	if slices.ContainsFunc(u, func(l string) bool { return strings.Contains(l, "VANISHED") || strings.Contains(l, "EXPUNGE") }) || held < mods[1] {
		t.Fatalf("FETCH with an expunge held back: %q", u)
	}
	if u := a.ok("NOOP"); !slices.Contains(u, "* VANISHED 2") {
		t.Fatalf("NOOP after a held-back expunge: %q", u)
	}
	if _, st := a.do("UID EXPUNGE 99"); highestModSeq(t, st) <= held {
		t.Fatalf("HIGHESTMODSEQ after the VANISHED: %s, held at %d", st, held)
	}
	a.ok("LOGOUT")

	// COMPRESS=DEFLATE (RFC 4978): the same answers, compressed both ways;
	// offered once, then refused as active.
	c := rawLogin(t, s.imaps, alice.addr)
	plainCaps := strings.Join(c.ok("CAPABILITY"), " ")
	if !strings.Contains(plainCaps, "COMPRESS=DEFLATE") {
		t.Fatalf("COMPRESS=DEFLATE not offered: %s", plainCaps)
	}
	c.ok("SELECT INBOX")
	plain := c.ok("UID FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[])")
	c.compress()
	if caps := strings.Join(c.ok("CAPABILITY"), " "); strings.Contains(caps, "COMPRESS=DEFLATE") {
		t.Errorf("COMPRESS=DEFLATE still offered once active: %s", caps)
	}
	if _, st := c.do("COMPRESS DEFLATE"); !strings.HasPrefix(st, "NO [COMPRESSIONACTIVE]") {
		t.Fatalf("second COMPRESS: %s", st)
	}
	if got := c.ok("UID FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[])"); !slices.Equal(got, plain) || len(got) == 0 {
		t.Fatalf("FETCH under COMPRESS differs:\n%q\nwas\n%q", got, plain)
	}
	c.ok("LOGOUT")

	// CONDSTORE alone, as go-imap's client uses it: SELECT (CONDSTORE),
	// FETCH MODSEQ, STORE UNCHANGEDSINCE, on two new messages.
	var two []imap.UID
	for i := range 2 {
		m := fmt.Sprintf("Subject: appended %d\r\n\r\nx\r\n", i)
		ap := b.Append("INBOX", int64(len(m)), nil)
		if _, err := ap.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
		if err := ap.Close(); err != nil {
			t.Fatal(err)
		}
		d, err := ap.Wait()
		if err != nil {
			t.Fatal(err)
		}
		two = append(two, d.UID)
	}
	selData, err := b.Select("INBOX", &imap.SelectOptions{CondStore: true}).Wait()
	if err != nil || selData.HighestModSeq == 0 {
		t.Fatalf("SELECT (CONDSTORE): %+v %v", selData, err)
	}
	msgs, err := b.Fetch(imap.UIDSetNum(two...), &imap.FetchOptions{UID: true, ModSeq: true}).Collect()
	if err != nil || len(msgs) != 2 || msgs[0].ModSeq == 0 || msgs[1].ModSeq == 0 {
		t.Fatalf("FETCH MODSEQ: %+v %v", msgs, err)
	}
	lo, hi := msgs[0], msgs[1]
	if lo.ModSeq > hi.ModSeq {
		lo, hi = hi, lo
	}
	msgs, err = b.Fetch(imap.UIDSetNum(two...), &imap.FetchOptions{UID: true, Flags: true, ChangedSince: lo.ModSeq}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].UID != hi.UID || msgs[0].ModSeq != hi.ModSeq {
		t.Fatalf("FETCH CHANGEDSINCE: %+v %v", msgs, err)
	}
	if _, err := b.Store(imap.UIDSetNum(two[0]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}},
		&imap.StoreOptions{UnchangedSince: 1}).Collect(); err != nil {
		t.Fatalf("STORE UNCHANGEDSINCE 1: %v", err)
	}
	got, err := b.Fetch(imap.UIDSetNum(two[0]), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil || len(got) != 1 || slices.Contains(got[0].Flags, imap.FlagFlagged) {
		t.Fatalf("a refused conditional STORE changed flags: %+v %v", got, err)
	}
}
