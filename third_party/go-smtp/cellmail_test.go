package smtp_test

// Tests of cellmail's additions (CELLMAIL.md): replies to a pipelined
// group sent together, and the client's MailRcpt and BdatLast.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// writeCounter counts the writes the server makes on its connections.
type writeCounter struct {
	net.Listener
	writes *atomic.Int64
}

func (l writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countedConn{c, l.writes}, nil
}

type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countedConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

func countingServer(t *testing.T, lmtp bool) (*backend, *atomic.Int64, net.Conn, *bufio.Reader) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	be := new(backend)
	s := smtp.NewServer(be)
	s.Domain, s.LMTP = "localhost", lmtp
	be.implementLMTPData = lmtp
	writes := new(atomic.Int64)
	go s.Serve(writeCounter{l, writes})
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return be, writes, c, bufio.NewReader(c)
}

// reply reads one (possibly multi-line) reply and returns its last line.
func reply(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a reply: %v", err)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func TestPipelinedGroupRepliesInOneWrite(t *testing.T) {
	_, writes, c, r := countingServer(t, false)
	reply(t, r) // greeting
	io.WriteString(c, "EHLO localhost\r\n")
	reply(t, r)

	before := writes.Load()
	io.WriteString(c, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n")
	for _, want := range []string{"250 2.0.0 Roger", "250 2.0.0 I'll", "250 2.0.0 I'll"} {
		if got := reply(t, r); !strings.HasPrefix(got, want) {
			t.Fatalf("reply %q, want %q…", got, want)
		}
	}
	if n := writes.Load() - before; n != 1 {
		t.Errorf("the group's three replies took %d writes, want 1", n)
	}

	// DATA is last in a group: its 354 goes out at once, with the replies
	// waiting before it.
	before = writes.Load()
	io.WriteString(c, "RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
	for _, want := range []string{"250 ", "250 ", "250 ", "354 "} {
		if got := reply(t, r); !strings.HasPrefix(got, want) {
			t.Fatalf("reply %q, want %q…", got, want)
		}
	}
	if n := writes.Load() - before; n != 1 {
		t.Errorf("RSET, MAIL, RCPT and DATA replies took %d writes, want 1", n)
	}
	io.WriteString(c, "hi\r\n.\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("end of data: %q", got)
	}
}

// A partial command in the buffer is not a command: the replies before it
// are sent, or a client waiting for them before finishing it would hang.
func TestRepliesSentWhenOnlyPartOfACommandIsBuffered(t *testing.T) {
	_, _, c, r := countingServer(t, false)
	reply(t, r)
	io.WriteString(c, "EHLO localhost\r\n")
	reply(t, r)
	io.WriteString(c, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@exa")
	for i := 0; i < 2; i++ {
		if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("reply %q, want 250", got)
		}
	}
	io.WriteString(c, "mple.org>\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("third reply %q, want 250", got)
	}
}

// An error reply is never held back.
func TestErrorRepliesAreSentAtOnce(t *testing.T) {
	_, writes, c, r := countingServer(t, false)
	reply(t, r)
	io.WriteString(c, "EHLO localhost\r\n")
	reply(t, r)
	before := writes.Load()
	io.WriteString(c, "RCPT TO:<b@example.org>\r\nMAIL FROM:<a@example.org>\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "503 ") {
		t.Fatalf("RCPT before MAIL: %q, want 503", got)
	}
	if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("MAIL: %q, want 250", got)
	}
	if n := writes.Load() - before; n != 2 {
		t.Errorf("an error and a success reply took %d writes, want 2", n)
	}
}

func TestClientMailRcptAndBdatLastOverLMTP(t *testing.T) {
	be, _, c, _ := countingServer(t, true)
	be.lmtpStatus = []struct {
		addr string
		err  error
	}{{"b@example.org", nil}, {"c@example.org", errors.New("no room")}}
	cl := smtp.NewClientLMTP(c)
	if err := cl.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := cl.Extension("CHUNKING"); !ok {
		t.Fatal("the LMTP server does not offer CHUNKING")
	}
	if mailErr, rcptErr := cl.MailRcpt("a@example.org", nil, "b@example.org", nil); mailErr != nil || rcptErr != nil {
		t.Fatalf("MailRcpt: %v, %v", mailErr, rcptErr)
	}
	if err := cl.Rcpt("c@example.org", nil); err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: x\r\n\r\n.a line that DATA would dot-stuff\r\n.\r\nand more\r\n")
	resp, err := cl.BdatLast(msg)
	var lerr smtp.LMTPDataError
	if !errors.As(err, &lerr) || len(lerr) != 1 || lerr["c@example.org"] == nil || resp["b@example.org"] == nil {
		t.Fatalf("BdatLast: %v %v, want b accepted and c refused", resp, err)
	}
	if len(be.anonmsgs) != 1 || string(be.anonmsgs[0].Data) != string(msg) {
		t.Fatalf("stored %+v, want the chunk's bytes as sent", be.anonmsgs)
	}

	// A refused MAIL: no transaction, the RCPT refused with it.
	be.userErr = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "not you"}
	mailErr, rcptErr := cl.MailRcpt("a@example.org", nil, "b@example.org", nil)
	var se *smtp.SMTPError
	if !errors.As(mailErr, &se) || se.Code != 550 || rcptErr != nil {
		t.Fatalf("MailRcpt with MAIL refused: %v, %v", mailErr, rcptErr)
	}
	if err := cl.Noop(); err != nil {
		t.Fatalf("the connection is out of step after a refused MAIL: %v", err)
	}
	if _, err := cl.BdatLast(msg); err == nil {
		t.Fatal("BdatLast sent a chunk with no transaction")
	}
	if err := cl.Noop(); err != nil {
		t.Fatalf("the connection is out of step after a refused BdatLast: %v", err)
	}
}

// RCPT parameters of extensions the backend names (Server.RcptParams):
// advertised, parsed into RcptOptions.Params, sent by the client only when
// advertised; any other parameter is still refused.
func TestRcptParams(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	be := &backend{implementLMTPData: true}
	s := smtp.NewServer(be)
	s.Domain, s.LMTP, s.RcptParams = "localhost", true, []string{"XTEST-EPOCH"}
	go s.Serve(l)
	defer s.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cl := smtp.NewClientLMTP(c)
	if err := cl.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := cl.Extension("XTEST-EPOCH"); !ok {
		t.Fatal("XTEST-EPOCH not advertised")
	}
	opts := &smtp.RcptOptions{Params: map[string]string{"xtest-epoch": "17", "XNOT-ADVERTISED": "1"}}
	if mailErr, rcptErr := cl.MailRcpt("a@example.org", nil, "b@example.org", opts); mailErr != nil || rcptErr != nil {
		t.Fatalf("MailRcpt: %v, %v", mailErr, rcptErr)
	}
	if err := cl.Rcpt("c@example.org", &smtp.RcptOptions{Params: map[string]string{"XTEST-EPOCH": "18"}}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Rcpt("d@example.org", &smtp.RcptOptions{Params: map[string]string{"XTEST-EPOCH": "a=b"}}); err == nil {
		t.Fatal("a malformed parameter value was sent")
	}
	if _, err := cl.BdatLast([]byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	if len(be.anonmsgs) != 1 || len(be.anonmsgs[0].RcptOpts) != 2 {
		t.Fatalf("stored %+v", be.anonmsgs)
	}
	for i, want := range []string{"17", "18"} {
		if got := be.anonmsgs[0].RcptOpts[i].Params; len(got) != 1 || got["XTEST-EPOCH"] != want {
			t.Errorf("recipient %d: params %v, want XTEST-EPOCH=%s only", i, got, want)
		}
	}
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(raw)
	reply(t, r) // greeting
	for _, cmd := range []string{"LHLO x", "MAIL FROM:<a@example.org>"} {
		io.WriteString(raw, cmd+"\r\n")
		if got := reply(t, r); !strings.HasPrefix(got, "250") {
			t.Fatalf("%s: %s", cmd, got)
		}
	}
	io.WriteString(raw, "RCPT TO:<b@example.org> XNOPE=1\r\n")
	if got := reply(t, r); !strings.HasPrefix(got, "500 5.5.4") {
		t.Fatalf("unknown parameter: %s, want 500 5.5.4", got)
	}
}
