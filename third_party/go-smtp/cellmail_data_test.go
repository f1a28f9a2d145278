package smtp_test

// Tests of cellmail's changes to reading a message (CELLMAIL.md): DATA's
// end, its dot and CR handling and line limit, BDAT chunks cut short or
// with long lines, and RCPT TO:<postmaster>.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// recorder is a backend that reports each Data call's outcome: the message
// it read whole, or the read error it got (and then stored nothing).
type recorder struct {
	lmtp    bool
	results chan result
	mu      sync.Mutex
	rcpts   []string
}

type result struct {
	body []byte
	err  error
}

func (b *recorder) NewSession(*smtp.Conn) (smtp.Session, error) {
	if b.lmtp {
		return lmtpRecSession{&recSession{b}}, nil
	}
	return &recSession{b}, nil
}

type recSession struct{ b *recorder }

func (s *recSession) Reset()                               {}
func (s *recSession) Logout() error                        { return nil }
func (s *recSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *recSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.rcpts = append(s.b.rcpts, to)
	return nil
}

func (s *recSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		s.b.results <- result{err: err}
		return err
	}
	s.b.results <- result{body: body}
	return nil
}

type lmtpRecSession struct{ *recSession }

func (s lmtpRecSession) LMTPData(r io.Reader, _ smtp.StatusCollector) error { return s.Data(r) }

// startRecorder serves b on a real socket with the limits cellmail uses
// (1000-octet lines, RFC 5321 §4.5.3.1.6) and returns a client connection
// past the greeting and EHLO/LHLO.
func startRecorder(t *testing.T, b *recorder) (net.Conn, *bufio.Reader) {
	t.Helper()
	b.results = make(chan result, 16)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtp.NewServer(b)
	s.Domain, s.LMTP = "localhost", b.lmtp
	s.MaxLineLength = 1000
	s.MaxMessageBytes = 1 << 20
	s.AllowInsecureAuth = true
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	reply(t, r)
	if b.lmtp {
		io.WriteString(c, "LHLO localhost\r\n")
	} else {
		io.WriteString(c, "EHLO localhost\r\n")
	}
	reply(t, r)
	return c, r
}

// transaction starts MAIL and RCPT and checks their replies.
func transaction(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	io.WriteString(c, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
	for i := 0; i < 2; i++ {
		if got := reply(t, r); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("MAIL/RCPT: %q", got)
		}
	}
}

// expect reads the next reply and checks its start.
func expect(t *testing.T, r *bufio.Reader, what, want string) {
	t.Helper()
	if got := reply(t, r); !strings.HasPrefix(got, want) {
		t.Fatalf("%s: reply %q, want %q…", what, got, want)
	}
}

// DATA's text goes through the reader as RFC 5321 §4.5.2 says (a leading
// dot removed, nothing else changed, the end only at <CRLF>.<CRLF>), and
// exactly one reply comes after the end, then the session goes on.
func TestDataTextAndItsEnd(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		// Upstream lost the line at a CR before the CRLF: the data never
		// ended and no reply came.
		{"CR before the final CRLF", "Subject: x\r\n\r\nx\r\r\n.\r\n", "Subject: x\r\n\r\nx\r\r\n"},
		{"CRs before a CRLF", "a\r\r\r\n..b\r\n.\r\n", "a\r\r\r\n.b\r\n"},
		// Upstream dropped the CR of ".\r" followed by more.
		{"dot CR then text", "a\r\n.\rb\r\n.\r\n", "a\r\n\rb\r\n"},
		{"dot CR CR LF", "a\r\n.\r\r\n.\r\n", "a\r\n\r\r\n"},
		{"dot-stuffed dot line", "a\r\n..\r\n.\r\n", "a\r\n.\r\n"},
		{"bare LF dot is text", "a\n.\nb\r\n.\r\n", "a\n.\nb\r\n"},
		{"998-octet line", strings.Repeat("x", 998) + "\r\n.\r\n", strings.Repeat("x", 998) + "\r\n"},
		{"998 octets after a stuffed dot", "." + strings.Repeat("x", 998) + "\r\n.\r\n", strings.Repeat("x", 998) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &recorder{}
			c, r := startRecorder(t, b)
			transaction(t, c, r)
			io.WriteString(c, "DATA\r\n")
			expect(t, r, "DATA", "354 ")
			io.WriteString(c, tc.data+"NOOP\r\n")
			expect(t, r, "end of data", "250 2.0.0 OK")
			expect(t, r, "NOOP after the data", "250 2.0.0 I have successfully done nothing")
			if res := <-b.results; res.err != nil || string(res.body) != tc.want {
				t.Fatalf("the backend read %q (%v), want %q", res.body, res.err, tc.want)
			}
		})
	}
}

// A line over the limit inside DATA: one 554 5.6.0 after the end of the
// data (not before it, with the rest read as commands), and the session
// stays usable. The same for a message as big as the size limit.
func TestDataOverALimitAnswersOnceAtItsEnd(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"999-octet line", "Subject: x\r\n\r\n" + strings.Repeat("a", 999) + "\r\nRSET\r\n.\r\n", "554 5.6.0"},
		{"long line, long message", strings.Repeat("a", 5000) + "\r\n" + strings.Repeat(strings.Repeat("b", 900)+"\r\n", 100) + ".\r\n", "554 5.6.0"},
		{"over SIZE", strings.Repeat(strings.Repeat("b", 998)+"\r\n", 1100) + ".\r\n", "552 5.3.4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &recorder{}
			c, r := startRecorder(t, b)
			transaction(t, c, r)
			io.WriteString(c, "DATA\r\n")
			expect(t, r, "DATA", "354 ")
			go io.WriteString(c, tc.data+"NOOP\r\n")
			expect(t, r, "end of data", tc.want)
			expect(t, r, "NOOP after the data", "250 2.0.0 I have successfully done nothing")
			if res := <-b.results; res.err == nil {
				t.Fatalf("the backend read the message whole (%d octets)", len(res.body))
			}
		})
	}
	// Exactly the size limit is not over it.
	b := &recorder{}
	c, r := startRecorder(t, b)
	transaction(t, c, r)
	io.WriteString(c, "DATA\r\n")
	expect(t, r, "DATA", "354 ")
	body := strings.Repeat(strings.Repeat("b", 510)+"\r\n", 2048) // 1 MiB
	go io.WriteString(c, body+".\r\n")
	expect(t, r, "a message of exactly MaxMessageBytes", "250 ")
	if res := <-b.results; res.err != nil || len(res.body) != 1<<20 {
		t.Fatalf("the backend read %d octets (%v)", len(res.body), res.err)
	}
}

// A BDAT chunk is read by its length, whatever its lines: a long line in a
// chunk sent with its command (as every client does) does not end the
// session as an over-long command line did upstream.
func TestBDATChunkWithALongLineSentWithItsCommand(t *testing.T) {
	b := &recorder{}
	c, r := startRecorder(t, b)
	transaction(t, c, r)
	chunk := "Subject: x\r\n\r\n" + strings.Repeat("a", 1200) + "\r\n"
	io.WriteString(c, "BDAT "+itoa(len(chunk))+" LAST\r\n"+chunk+"NOOP\r\n")
	expect(t, r, "BDAT LAST", "250 2.0.0 OK")
	expect(t, r, "NOOP", "250 2.0.0 I have")
	if res := <-b.results; res.err != nil || string(res.body) != chunk {
		t.Fatalf("the backend read %q (%v)", res.body, res.err)
	}
}

// A chunk cut short by the client closing the connection is an error for
// the backend (io.ErrUnexpectedEOF), never a short message: upstream
// handed it over as the whole message, and it was stored although no 250
// was sent. SMTP and LMTP, last chunk or not.
func TestBDATChunkCutShortIsNotAMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		lmtp bool
		cmds string
	}{
		{"SMTP last chunk", false, "BDAT 100 LAST\r\n"},
		{"SMTP second chunk", false, "BDAT 5\r\nabcdeBDAT 100 LAST\r\n"},
		{"SMTP not last", false, "BDAT 100\r\n"},
		{"LMTP last chunk", true, "BDAT 100 LAST\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &recorder{lmtp: tc.lmtp}
			c, r := startRecorder(t, b)
			transaction(t, c, r)
			io.WriteString(c, tc.cmds+"Subject: cut\r\n\r\nonly part of the body\r\n")
			c.(*net.TCPConn).CloseWrite()
			if res := <-b.results; !errors.Is(res.err, io.ErrUnexpectedEOF) {
				t.Fatalf("the backend read %q (%v), want io.ErrUnexpectedEOF", res.body, res.err)
			}
			rest, _ := io.ReadAll(r)
			if strings.Contains(string(rest), "250 2.0.0 OK") {
				t.Fatalf("a cut chunk was acknowledged: %q", rest)
			}
		})
	}
}

// RFC 5321 §4.1.1.3 and §4.5.1: RCPT TO:<Postmaster>, with no domain, is
// accepted and passed to the backend; another local part alone is not.
func TestRcptPostmasterWithoutDomain(t *testing.T) {
	b := &recorder{}
	c, r := startRecorder(t, b)
	io.WriteString(c, "MAIL FROM:<a@example.org>\r\n")
	expect(t, r, "MAIL", "250 ")
	io.WriteString(c, "RCPT TO:<Postmaster>\r\n")
	expect(t, r, "RCPT TO:<Postmaster>", "250 ")
	io.WriteString(c, "RCPT TO:<postmaster> NOTIFY=NEVER\r\n")
	expect(t, r, "RCPT with a parameter the server does not offer", "504 ")
	io.WriteString(c, "RCPT TO:<webmaster>\r\n")
	expect(t, r, "RCPT TO:<webmaster>", "501 ")
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.rcpts) != 1 || b.rcpts[0] != "Postmaster" {
		t.Fatalf("the backend got %q", b.rcpts)
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}

// refText is the reference reading of DATA's text, written from RFC 5321
// §4.1.1.4 and §4.5.2 alone: lines end at CRLF only; the first line that
// is a single dot ends the text; a leading dot is removed from any other
// line. It returns the text, the octets of in that the data took, whether
// a line (with its CRLF, without a removed dot) is over lineLimit, and
// whether the data ended at all.
func refText(in []byte, lineLimit int) (text []byte, used int, long, ended bool) {
	for used < len(in) {
		i := strings.Index(string(in[used:]), "\r\n")
		if i < 0 {
			break
		}
		line := in[used : used+i]
		used += i + 2
		if string(line) == "." {
			return text, used, long, true
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		if len(line)+2 > lineLimit {
			long = true
		}
		text = append(append(text, line...), '\r', '\n')
	}
	return text, len(in), long, false
}

// replyCodes reads replies until the server closes the connection and
// returns the code (and enhanced code) of each.
func replyCodes(r io.Reader) ([]string, error) {
	out, err := io.ReadAll(r)
	var codes []string
	for _, line := range strings.Split(string(out), "\r\n") {
		if len(line) >= 4 && line[3] == ' ' {
			f := strings.Fields(line)
			code := f[0]
			if len(f) > 1 && strings.Count(f[1], ".") == 2 && code[0] >= '2' && code[0] <= '5' && f[1][0] == code[0] {
				code += " " + f[1]
			}
			codes = append(codes, code)
		}
	}
	return codes, err
}

// FuzzDataReader sends arbitrary DATA text to a server and checks it
// against refText: the text ends where the reference says, exactly one
// reply comes after the terminating line (and then the session goes on),
// or, when the data never ends, the session ends with one reply; the
// backend gets the reference's text exactly when the reply is 250, and a
// line or size over the limits is refused (554 5.6.0, 552 5.3.4). Small
// limits make the fuzzer reach them. The seeds, in
// testdata/fuzz/FuzzDataReader, are the cases of cellmail issue 13.
func FuzzDataReader(f *testing.F) {
	const lineLimit, maxBytes = 64, 1024
	b := &recorder{results: make(chan result, 4)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	s := smtp.NewServer(b)
	s.Domain, s.MaxLineLength, s.MaxMessageBytes = "localhost", lineLimit, maxBytes
	s.ReadTimeout = 5 * time.Second
	go s.Serve(l)
	defer s.Close()
	const prelude = "EHLO localhost\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
	start := []string{"220", "250", "250 2.0.0", "250 2.0.0", "354"}
	// session sends input after the prelude, half-closes, and returns the
	// replies after the 354 and what the backend read.
	session := func(t *testing.T, input []byte) ([]string, result) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(append([]byte(prelude), input...))
			c.(*net.TCPConn).CloseWrite()
		}()
		codes, err := replyCodes(c)
		if err != nil {
			t.Fatalf("session did not end: %v (replies %q, input %q)", err, codes, input)
		}
		if len(codes) < len(start) || strings.Join(codes[:len(start)], ",") != strings.Join(start, ",") {
			t.Fatalf("replies %q before the data, input %q", codes, input)
		}
		select {
		case res := <-b.results:
			return codes[len(start):], res
		case <-time.After(5 * time.Second):
			t.Fatalf("the backend got no data, input %q", input)
		}
		return nil, result{}
	}
	// check holds a data reply and the backend's reading to the reference.
	check := func(t *testing.T, input []byte, reply string, res result, text []byte, long, ended bool) {
		t.Helper()
		switch {
		case !ended:
			if strings.HasPrefix(reply, "2") || res.err == nil {
				t.Fatalf("data that never ended: reply %q, backend read %q (%v); input %q", reply, res.body, res.err, input)
			}
		case long || len(text) > maxBytes:
			if reply != "554 5.6.0" && reply != "552 5.3.4" || res.err == nil {
				t.Fatalf("over a limit: reply %q, backend read %q (%v); input %q", reply, res.body, res.err, input)
			}
		default:
			if reply != "250 2.0.0" || res.err != nil || string(res.body) != string(text) {
				t.Fatalf("reply %q, backend read %q (%v), want %q; input %q", reply, res.body, res.err, text, input)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		// The data ended by the terminator (the reference's end, or an
		// earlier one in data), then a command: one reply to the data,
		// then NOOP's and QUIT's.
		stream := append(append([]byte{}, data...), "\r\n.\r\n"...)
		text, used, long, ended := refText(stream, lineLimit)
		if !ended {
			t.Fatalf("reference: %q does not end", stream)
		}
		codes, res := session(t, append(stream[:used:used], "NOOP\r\nQUIT\r\n"...))
		if len(codes) != 3 || codes[1] != "250 2.0.0" || codes[2] != "221 2.0.0" {
			t.Fatalf("replies after the data %q, want the data's, NOOP's and QUIT's; input %q", codes, stream[:used])
		}
		check(t, stream[:used], codes[0], res, text, long, ended)

		// The data alone, then the client closes: one reply, the last.
		text, used, long, ended = refText(data, lineLimit)
		codes, res = session(t, data[:used])
		if len(codes) != 1 {
			t.Fatalf("replies after the data %q, want one; input %q", codes, data[:used])
		}
		check(t, data[:used], codes[0], res, text, long, ended)
	})
}
