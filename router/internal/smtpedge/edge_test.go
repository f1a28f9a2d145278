package smtpedge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// sink is an LMTP server standing in for a cell in these unit tests and the
// fuzz target (which need thousands of sessions a second; the real cell's
// LMTP endpoint is exercised through the router's and dev stack's tests).
// It accepts every recipient at sink.example but postmaster (the domain
// has no postmaster account) and counts stored messages.
type sink struct {
	stored    atomic.Int64
	last      atomic.Value // []byte of the last message
	lastRcpts atomic.Value // []string, the last message's recipients
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{k: k}, nil }

type sinkSession struct {
	k     *sink
	rcpts []string
}

func (s *sinkSession) Reset()                               { s.rcpts = nil }
func (s *sinkSession) Logout() error                        { return nil }
func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !strings.HasSuffix(to, "@sink.example") || to == "postmaster@sink.example" {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.last.Store(b)
	s.k.lastRcpts.Store(s.rcpts)
	s.k.stored.Add(1)
	return nil
}

// resolver routes sink.example to the sink, once; every other domain is
// not ours. (TestWrongCellReroutes runs the contract's own loop.)
type resolver struct{ lmtp string }

func (r resolver) Do(ctx context.Context, address string, call func(context.Context, routing.Target) error) error {
	if !strings.HasSuffix(address, "@sink.example") {
		return placement.ErrUnknownDomain
	}
	return call(ctx, routing.Target{Cell: placement.Cell{Name: "sink", LMTPAddr: r.lmtp}, Epoch: 1, Hop: 1})
}

type harness struct {
	sink *sink
	addr string
}

var (
	harnessOnce sync.Once
	shared      *harness
)

// start runs one sink and one edge for the whole test binary.
func start(tb testing.TB) *harness {
	harnessOnce.Do(func() {
		k := &sink{}
		lsrv := smtp.NewServer(k)
		lsrv.LMTP = true
		lsrv.Domain = "sink"
		lln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		go lsrv.Serve(lln)
		e := New(resolver{lmtp: lln.Addr().String()}, Config{MaxMessageBytes: 64 << 10, MaxRecipients: 5,
			Postmaster: "admin@sink.example", Logger: slog.New(slog.DiscardHandler)})
		e.srv.ReadTimeout = 2 * time.Second
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		go e.Serve(ln)
		shared = &harness{sink: k, addr: ln.Addr().String()}
	})
	return shared
}

// session writes input as a client would (all of it, then half-closes)
// and returns everything the edge answered.
func (h *harness) session(tb testing.TB, input []byte) string {
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Write(input)
		c.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(c)
	wg.Wait()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tb.Fatalf("session did not end: %q", out)
	}
	return string(out)
}

// queued counts the edge's "message accepted" replies.
func queued(replies string) int64 { return int64(strings.Count(replies, "250 2.0.0 OK: queued")) }

const hello = "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@sink.example>\r\n"

func TestOneMessage(t *testing.T) {
	h := start(t)
	before := h.sink.stored.Load()
	out := h.session(t, []byte(hello+"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"))
	if queued(out) != 1 || h.sink.stored.Load()-before != 1 {
		t.Fatalf("replies %q, stored %d", out, h.sink.stored.Load()-before)
	}
	last := string(h.sink.last.Load().([]byte))
	if !strings.HasPrefix(last, "Received: from client.example ([127.0.0.1])") || !strings.HasSuffix(last, "Subject: hi\r\n\r\nbody\r\n") {
		t.Fatalf("the cell got %q", last)
	}
}

// Smuggling (RFC 5321 §4.1.1.4, §2.3.8): only <CRLF>.<CRLF> ends DATA, and
// a message with a bare CR or LF is refused (554 5.6.0), so a bare-LF or
// bare-CR "end" neither splits the message nor reaches a cell.
func TestSmugglingTricksStayOneMessage(t *testing.T) {
	h := start(t)
	smuggled := "MAIL FROM:<evil@b.example>\r\nRCPT TO:<bob@sink.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"
	for _, end := range []string{"\n.\n", "\r.\r", "\n.\r\n", "\r.\n", "\r\n.\n", "\n.\r"} {
		before := h.sink.stored.Load()
		out := h.session(t, []byte(hello+"DATA\r\nSubject: one\r\n\r\nbody"+end+smuggled+".\r\nQUIT\r\n"))
		if got := h.sink.stored.Load() - before; got != 0 || queued(out) != 0 || !strings.Contains(out, "554 5.6.0") {
			t.Errorf("end %q: %d messages stored, %d acknowledged: %q", end, got, queued(out), out)
		}
	}
}

func TestMalformedBDATClosesTheSession(t *testing.T) {
	h := start(t)
	chunk := "MAIL FROM:<evil@b.example>\r\nRCPT TO:<bob@sink.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
	for _, cmd := range []string{"BDAT x", "BDAT", "BDAT 10 LAST extra", "BDAT 10 NOTLAST", "BDAT -5"} {
		before := h.sink.stored.Load()
		out := h.session(t, []byte(hello+cmd+"\r\n"+chunk+"QUIT\r\n"))
		if h.sink.stored.Load() != before || queued(out) != 0 {
			t.Errorf("%q: the chunk was read as commands: %q", cmd, out)
		}
		if !strings.Contains(out, "501 5.5.4") || strings.Contains(out, "221") {
			t.Errorf("%q: want 501 and the connection closed, got %q", cmd, out)
		}
	}
	// A well-formed BDAT still works.
	before := h.sink.stored.Load()
	body := "Subject: chunked\r\n\r\nbody\r\n"
	out := h.session(t, []byte(hello+"BDAT "+itoa(len(body))+" LAST\r\n"+body+"QUIT\r\n"))
	if h.sink.stored.Load()-before != 1 || queued(out) != 1 {
		t.Errorf("BDAT LAST: %q", out)
	}
}

func itoa(n int) string {
	s := ""
	for ; n > 0; n /= 10 {
		s = string(rune('0'+n%10)) + s
	}
	if s == "" {
		return "0"
	}
	return s
}

func TestBadInputAnswers(t *testing.T) {
	h := start(t)
	longBDAT := "Subject: x\r\n\r\n" + strings.Repeat(strings.Repeat("b", 78)+"\r\n", 100) + strings.Repeat("a", 1200) + "\r\n"
	cases := []struct{ name, input, want string }{
		{"relay", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n", "550 5.7.1"},
		{"percent hack", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x%elsewhere.example@sink.example>\r\n", "501 5.1.3"},
		{"source route", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<@sink.example:x@elsewhere.example>\r\n", "550 5.7.1"},
		{"bad address", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<not an address>\r\n", "501"},
		{"unknown user", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@nowhere.example>\r\n", "550"},
		{"out of order", "EHLO x\r\nRCPT TO:<bob@sink.example>\r\n", "503"},
		{"data without rcpt", "EHLO x\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n", "503"},
		{"too many recipients", hello + strings.Repeat("RCPT TO:<bob@sink.example>\r\n", 5), "452 4.5.3"},
		{"over SIZE", hello + "DATA\r\n" + strings.Repeat(strings.Repeat("a", 900)+"\r\n", 80) + ".\r\n", "552 5.3.4"},
		{"empty DATA", hello + "DATA\r\n.\r\n", "554 5.6.0"},
		{"BDAT 0 LAST alone", hello + "BDAT 0 LAST\r\n", "554 5.6.0"},
		{"long line in BDAT", hello + "BDAT " + itoa(len(longBDAT)) + " LAST\r\n" + longBDAT, "554 5.6.0"},
		{"NUL", hello + "DATA\r\nSubject: x\r\n\r\na\x00b\r\n.\r\n", "554 5.6.0"},
		{"bare LF", hello + "DATA\r\nSubject: x\n\r\nb\r\n.\r\n", "554 5.6.0"},
		{"SIZE declared too big", "EHLO x\r\nMAIL FROM:<a@b.example> SIZE=99999999\r\n", "552 5.3.4"},
	}
	for _, tc := range cases {
		before := h.sink.stored.Load()
		out := h.session(t, []byte(tc.input+"QUIT\r\n"))
		if !strings.Contains(out, "\r\n"+tc.want) {
			t.Errorf("%s: want %q in %q", tc.name, tc.want, out)
		}
		if h.sink.stored.Load() != before {
			t.Errorf("%s: a message was stored", tc.name)
		}
	}
}

// codes lists the code and enhanced code of each reply's last line.
func codes(replies string) []string {
	var out []string
	for _, line := range strings.Split(replies, "\r\n") {
		if len(line) >= 4 && line[3] == ' ' {
			f := strings.Fields(line)
			if len(f) > 1 && strings.Count(f[1], ".") == 2 && f[1][0] >= '2' && f[1][0] <= '5' {
				out = append(out, f[0]+" "+f[1])
			} else {
				out = append(out, f[0])
			}
		}
	}
	return out
}

const after = "MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@sink.example>\r\nDATA\r\nSubject: after\r\n\r\nok\r\n.\r\nQUIT\r\n"

// A message the edge refuses gets exactly one reply, after the end of its
// data (RFC 5321 §4.2.5), nothing is stored, and the session goes on: the
// next transaction is accepted. Each case broke this before: no reply at
// all (a CR before the final CRLF), a reply before the end of the data
// and the rest read as commands (a long line), a CR dropped and the
// message stored (".\r"), an empty message stored (BDAT 0 LAST).
func TestRefusedMessageGetsOneReplyAfterItsData(t *testing.T) {
	h := start(t)
	long := strings.Repeat("a", 1200)
	for _, tc := range []struct {
		name, input string
		want        []string
	}{
		{"CR before the final CRLF", "DATA\r\nSubject: x\r\n\r\nx\r\r\n.\r\n", []string{"354", "554 5.6.0"}},
		{"dot CR", "DATA\r\nSubject: x\r\n\r\na\r\n.\rb\r\n.\r\n", []string{"354", "554 5.6.0"}},
		{"dot CR CRLF", "DATA\r\nSubject: x\r\n\r\na\r\n.\r\r\n.\r\n", []string{"354", "554 5.6.0"}},
		{"long line in DATA", "DATA\r\nSubject: x\r\n\r\n" + long + "\r\nRSET\r\nMAIL FROM:<e@x.example>\r\n.\r\n", []string{"354", "554 5.6.0"}},
		{"long line in a BDAT chunk", "BDAT " + itoa(len(long)+16) + " LAST\r\nSubject: x\r\n\r\n" + long + "\r\n", []string{"554 5.6.0"}},
		{"long line in the first of two chunks", "BDAT " + itoa(len(long)+16) + "\r\nSubject: x\r\n\r\n" + long + "\r\nBDAT 4 LAST\r\nab\r\n", []string{"250 2.0.0", "554 5.6.0"}},
		{"empty DATA", "DATA\r\n.\r\n", []string{"354", "554 5.6.0"}},
		{"BDAT 0 LAST alone", "BDAT 0 LAST\r\n", []string{"554 5.6.0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.sink.stored.Load()
			out := h.session(t, []byte(hello+tc.input+after))
			got := codes(out)
			// Greeting, EHLO, MAIL, RCPT; the case; MAIL, RCPT, 354, 250, 221.
			want := append(append([]string{"220", "250", "250 2.0.0", "250 2.0.0"}, tc.want...), "250 2.0.0", "250 2.0.0", "354", "250 2.0.0", "221 2.0.0")
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("replies %q, want %q\n%s", got, want, out)
			}
			if n := h.sink.stored.Load() - before; n != 1 || !strings.HasSuffix(string(h.sink.last.Load().([]byte)), "Subject: after\r\n\r\nok\r\n") {
				t.Fatalf("stored %d messages, want only the next one", n)
			}
		})
	}
}

// A BDAT chunk cut short (the client closed the connection in it) is
// never stored: no 250 was sent for it (issue 13, 2.6).
func TestCutBDATChunkIsNotStored(t *testing.T) {
	h := start(t)
	for _, cmds := range []string{"BDAT 100 LAST\r\n", "BDAT 12\r\nSubject: a\r\nBDAT 100 LAST\r\n"} {
		before := h.sink.stored.Load()
		out := h.session(t, []byte(hello+cmds+"Subject: cut\r\n\r\nonly part"))
		if n := h.sink.stored.Load() - before; n != 0 || queued(out) != 0 {
			t.Errorf("%q: %d messages stored, replies %q", cmds, n, out)
		}
	}
}

// RFC 5321 §4.5.1: <postmaster> without a domain, and postmaster@ a hosted
// domain with no postmaster account, are accepted and go to the
// configured postmaster's mailbox; postmaster@ a domain we do not host is
// still relaying.
func TestPostmaster(t *testing.T) {
	h := start(t)
	for _, rcpt := range []string{"<postmaster>", "<PostMaster>", "<Postmaster@SINK.example>"} {
		before := h.sink.stored.Load()
		out := h.session(t, []byte("EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:"+rcpt+"\r\nDATA\r\nSubject: pm\r\n\r\nhi\r\n.\r\nQUIT\r\n"))
		if h.sink.stored.Load()-before != 1 || queued(out) != 1 {
			t.Fatalf("RCPT TO:%s: %q", rcpt, out)
		}
		if got := h.sink.lastRcpts.Load().([]string); len(got) != 1 || got[0] != "admin@sink.example" {
			t.Fatalf("RCPT TO:%s reached %q, want the postmaster admin@sink.example", rcpt, got)
		}
	}
	out := h.session(t, []byte("EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster@elsewhere.example>\r\nQUIT\r\n"))
	if !strings.Contains(out, "\r\n550 5.7.1") {
		t.Fatalf("postmaster of a domain not ours: %q", out)
	}
}

// FuzzEdgeSession sends arbitrary client input to the edge. The session
// must end (no hang, no panic), and the cell must have stored exactly as
// many messages as the client was told were accepted: nothing smuggled in,
// nothing acknowledged and dropped.
func FuzzEdgeSession(f *testing.F) {
	for _, s := range []string{
		hello + "DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		hello + "DATA\r\nSubject: one\r\n\r\nbody\n.\nMAIL FROM:<e@x>\r\nRCPT TO:<bob@sink.example>\r\nDATA\r\nx\r\n.\r\n",
		hello + "DATA\r\nSubject: one\r\n\r\nbody\r.\rMAIL FROM:<e@x>\r\n.\r\n",
		hello + "BDAT 5\r\nabcdeBDAT 0 LAST\r\nQUIT\r\n",
		hello + "BDAT x\r\nMAIL FROM:<e@x>\r\nRCPT TO:<bob@sink.example>\r\nDATA\r\nx\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@b> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<bøb@sink.example>\r\nDATA\r\n\x00\xff\r\n.\r\n",
		"HELO x\r\nRSET\r\nNOOP\r\nVRFY bob\r\nSTARTTLS\r\nAUTH PLAIN AGJvYgB4\r\n",
		hello + "RCPT TO:<x%y@sink.example>\r\nRCPT TO:<@a,@b:c@sink.example>\r\nDATA\r\n..dot\r\n.\r\n",
	} {
		f.Add([]byte(s))
	}
	h := start(f)
	f.Fuzz(func(t *testing.T, input []byte) {
		if len(input) > 1<<16 {
			return
		}
		before := h.sink.stored.Load()
		out := h.session(t, input)
		if got := h.sink.stored.Load() - before; got != queued(out) {
			t.Fatalf("stored %d, acknowledged %d\ninput %q\nreplies %q", got, queued(out), input, out)
		}
	})
}
