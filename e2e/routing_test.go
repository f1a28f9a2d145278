package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/controlplane/client"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// lineConn speaks a line protocol (LMTP, IMAP) as text.
type lineConn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dialLines(t testing.TB, addr string) *lineConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, r: bufio.NewReader(c)}
}

// line reads one line without its CRLF.
func (l *lineConn) line() string {
	l.t.Helper()
	_ = l.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	s, err := l.r.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read: %v (after %q)", err, s)
	}
	return strings.TrimRight(s, "\r\n")
}

// smtpReply sends a command and returns the last line of its reply (all of
// them joined for a multi-line one).
func (l *lineConn) smtpReply(cmd string) string {
	l.t.Helper()
	if cmd != "" {
		fmt.Fprintf(l.c, "%s\r\n", cmd)
	}
	var all []string
	for {
		s := l.line()
		all = append(all, s)
		if len(s) < 4 || s[3] != '-' {
			return strings.Join(all, "\n")
		}
	}
}

// imapStatus sends a tagged command and returns its tagged status.
func (l *lineConn) imapStatus(tag, cmd string) string {
	l.t.Helper()
	fmt.Fprintf(l.c, "%s %s\r\n", tag, cmd)
	for {
		if rest, ok := strings.CutPrefix(l.line(), tag+" "); ok {
			return rest
		}
	}
}

// cellEndpoints are a cell's LMTP and IMAP addresses, from the map.
func (s *stack) cellEndpoints(name string) (lmtp, imap string) {
	s.t.Helper()
	resp, err := s.admin.GetCell(context.Background(), call(s.t, connect.NewRequest(&pb.GetCellRequest{Name: name})))
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.Msg.Cell.Cell.LmtpAddr, resp.Msg.Cell.Cell.ImapAddr
}

// A cell's LMTP and IMAP take the caller's map epoch (the RCPT parameter,
// the first ID) and answer a subject they do not serve with the routing
// contract's machine-readable code, which the contract's parser reads;
// a caller ahead of the cell's map is refused, not served from it.
func TestCellsAnswerTheRoutingContractOnLMTPAndIMAP(t *testing.T) {
	s := newStack(t)
	var theirs, ours string // owned by eu-2, and by eu-1
	for _, a := range addresses() {
		switch o := s.owner(a); {
		case o == "eu-2" && theirs == "":
			theirs = a
		case o == "eu-1" && ours == "":
			ours = a
		}
	}
	lmtpAddr, imapAddr := s.cellEndpoints("eu-1")

	l := dialLines(t, lmtpAddr)
	l.line() // greeting
	if caps := l.smtpReply("LHLO router.test"); !strings.Contains(caps, routing.EpochParam) {
		t.Fatalf("LHLO does not advertise %s: %q", routing.EpochParam, caps)
	}
	if r := l.smtpReply("MAIL FROM:<a@b.example>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("MAIL: %q", r)
	}
	r := l.smtpReply(fmt.Sprintf("RCPT TO:<%s> %s=%d", theirs, routing.EpochParam, s.epoch))
	wc, ok := routing.ParseResponseCode(strings.TrimPrefix(r, "451 4.4.0 ")).(*routing.WrongCell)
	if !strings.HasPrefix(r, "451 4.4.0 [") || !ok || wc.Owner != "eu-2" || wc.Epoch < s.epoch {
		t.Fatalf("RCPT of eu-2's subject at eu-1: %q, want 451 4.4.0 [%s eu-2 ≥%d]", r, routing.CodeWrongCell, s.epoch)
	}
	r = l.smtpReply(fmt.Sprintf("RCPT TO:<%s> %s=1000000", ours, routing.EpochParam))
	if !strings.HasPrefix(r, "451 4.4.0") || routing.ParseResponseCode(strings.TrimPrefix(r, "451 4.4.0 ")) != nil {
		t.Fatalf("RCPT with an epoch the cell has not seen: %q, want a plain 451 4.4.0", r)
	}
	if r = l.smtpReply(fmt.Sprintf("RCPT TO:<%s> %s=soon", ours, routing.EpochParam)); !strings.HasPrefix(r, "501 5.5.4") {
		t.Fatalf("RCPT with a malformed epoch: %q, want 501 5.5.4", r)
	}

	// IMAP: the epoch in the router's first ID (the test runs on loopback,
	// a trusted proxy by default).
	i := dialLines(t, imapAddr)
	i.line()
	if st := i.imapStatus("I", fmt.Sprintf(`ID ("x-originating-ip" "192.0.2.1" %q "%d")`, routing.EpochIDField, s.epoch)); !strings.HasPrefix(st, "OK") {
		t.Fatalf("ID: %q", st)
	}
	st := i.imapStatus("L", fmt.Sprintf(`LOGIN %q "correct horse battery"`, theirs))
	wc, ok = routing.ParseResponseCode(strings.TrimPrefix(st, "NO ")).(*routing.WrongCell)
	if !strings.HasPrefix(st, "NO [") || !ok || wc.Owner != "eu-2" || wc.Epoch < s.epoch {
		t.Fatalf("LOGIN of eu-2's subject at eu-1: %q, want NO [%s eu-2 ≥%d]", st, routing.CodeWrongCell, s.epoch)
	}
	i = dialLines(t, imapAddr)
	i.line()
	i.imapStatus("I", fmt.Sprintf(`ID (%q "1000000")`, routing.EpochIDField))
	if st := i.imapStatus("L", fmt.Sprintf(`LOGIN %q "x"`, ours)); !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Fatalf("LOGIN with an epoch the cell has not seen: %q, want NO [UNAVAILABLE]", st)
	}
}

// A router whose map is stale (held at a snapshot taken before the eu
// ranges went from eu-2 to eu-1) still delivers inbound mail, logs IMAP
// and submission clients in, through the contract: the old owner answers
// WRONG_CELL, the router refreshes that one range and tries eu-1. Each
// edge gets an address in a range of its own, so each does its own
// refresh.
func TestStaleRouterReroutesMailAndLogins(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	// eu's upper half, eu-2's, in four ranges.
	for _, at := range []uint64{placement.SpaceEnd / 8 * 5, placement.SpaceEnd / 8 * 6, placement.SpaceEnd / 8 * 7} {
		if _, err := s.admin.SplitRange(ctx, call(t, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: at}))); err != nil {
			t.Fatal(err)
		}
	}
	snap := client.FileSnapshot{Path: filepath.Join(t.TempDir(), "map.snapshot")}
	live, err := client.New(client.Config{Endpoints: s.cp.Etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); _ = live.Run(lctx) }()
	<-live.Ready()
	eu, _ := placement.ParseJurisdiction("eu")
	waitFor(t, "the splits in the map copy", func() bool { return len(live.Map().Ranges(eu)) == 5 })
	cancel()
	<-ran
	live.Close()
	stale, err := client.New(client.Config{Endpoints: s.cp.Etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if err := stale.LoadSnapshot(ctx); err != nil {
		t.Fatal(err)
	}
	for _, at := range []uint64{placement.SpaceEnd / 2, placement.SpaceEnd / 8 * 5, placement.SpaceEnd / 8 * 6, placement.SpaceEnd / 8 * 7} {
		s.assign("eu", at, "eu-1")
	}
	// One address per range the stale copy gives to eu-2.
	byRange := map[uint64]string{}
	for _, a := range addresses() {
		if rt, err := stale.Lookup(a); err == nil && rt.Cell == "eu-2" && byRange[rt.Range.Start] == "" {
			byRange[rt.Range.Start] = a
		}
	}
	if len(byRange) < 3 {
		t.Fatalf("addresses in only %d of the moved ranges", len(byRange))
	}
	var picked []string
	for _, a := range byRange {
		picked = append(picked, a)
	}
	mxTo, imapUser, submitter := picked[0], picked[1], picked[2]
	users := map[string]*user{}
	for _, a := range picked[:3] {
		users[a] = s.user(t, s.cells["eu-1"], a) // at the owner itself: the stale router's copy stays as it is
	}
	staleOwner := func(a string) string {
		rt, err := stale.Lookup(a)
		if err != nil {
			t.Fatal(err)
		}
		return rt.Cell
	}
	s.startRouter(stale)

	// Inbound SMTP: the LMTP RCPT at eu-2 is re-routed to eu-1.
	s.deliver(t, mxTo, "rerouted over LMTP", "hello")
	if o := staleOwner(mxTo); o != "eu-1" {
		t.Fatalf("after the delivery the router's copy still says %s: no refresh happened", o)
	}
	if o := staleOwner(imapUser); o != "eu-2" {
		t.Fatalf("the refresh went beyond the delivery's range (%s → %s)", imapUser, o)
	}
	inbox := users[mxTo].box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	waitFor(t, "the delivered message", func() bool { return len(users[mxTo].list(t, inbox.Id)) == 1 })

	// IMAP: the LOGIN at eu-2 is re-routed to eu-1, the client sees an OK.
	c := imapLogin(t, s.imaps, imapUser, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT after a re-routed login: %v", err)
	}
	if o := staleOwner(imapUser); o != "eu-1" {
		t.Fatalf("after the IMAP login the router's copy still says %s", o)
	}

	// Submission: AUTH's login at eu-2 is re-routed; the message is sent.
	if o := staleOwner(submitter); o != "eu-2" {
		t.Fatalf("%s: copy says %s before submission", submitter, o)
	}
	sc := submitFrom(t, s.submissions, "127.0.0.1")
	if err := sc.Auth(sasl.NewPlainClient("", submitter, "correct horse battery")); err != nil {
		t.Fatalf("AUTH through a stale router: %v", err)
	}
	if o := staleOwner(submitter); o != "eu-1" {
		t.Fatalf("after AUTH the router's copy still says %s", o)
	}
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: rerouted submission\r\n\r\nhi\r\n", submitter, mxTo)
	if err := sendVia(sc, submitter, mxTo, msg); err != nil {
		t.Fatalf("submission through a stale router: %v", err)
	}
	waitFor(t, "the submitted message", func() bool { return len(users[mxTo].list(t, inbox.Id)) == 2 })
}

// sendVia sends one message on an authenticated submission session.
func sendVia(c *smtp.Client, from, to, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	return w.Close()
}
