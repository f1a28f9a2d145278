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
	"github.com/cellmail/cellmail/router/internal/route"
)

// sink is an LMTP server standing in for a cell in these unit tests and the
// fuzz target (which need thousands of sessions a second; the real cell's
// LMTP endpoint is exercised through the router's and dev stack's tests).
// It accepts every recipient at sink.example and counts stored messages.
type sink struct {
	stored atomic.Int64
	last   atomic.Value // []byte of the last message
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{k: k}, nil }

type sinkSession struct {
	k     *sink
	rcpts int
}

func (s *sinkSession) Reset()                               { s.rcpts = 0 }
func (s *sinkSession) Logout() error                        { return nil }
func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !strings.HasSuffix(to, "@sink.example") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	s.rcpts++
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.last.Store(b)
	s.k.stored.Add(1)
	return nil
}

// resolver routes sink.example to the sink; every other domain is not ours.
type resolver struct{ lmtp string }

func (r resolver) Resolve(address string) (route.Target, error) {
	if !strings.HasSuffix(address, "@sink.example") {
		return route.Target{}, placement.ErrUnknownDomain
	}
	return route.Target{Cell: placement.Cell{Name: "sink", LMTPAddr: r.lmtp}}, nil
}

func (r resolver) Refresh(_ context.Context, address string) (route.Target, error) {
	return r.Resolve(address)
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
			Logger: slog.New(slog.DiscardHandler)})
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
		{"long line", hello + "DATA\r\nSubject: x\r\n\r\n" + strings.Repeat("a", 1200) + "\r\n.\r\n", "500 5.4.0"},
		// Past what go-smtp reads ahead with the command line limit on.
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
