package smtpedge

import (
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// countingListener counts the connections a sink accepted and can cut
// them all, as a cell restarting would.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *countingListener) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// The edge keeps LMTP connections to a cell for the next transaction, ends
// an unfinished one with RSET before reusing it, and opens a new one when
// a pooled connection turns out closed, without losing the message.
func TestLMTPConnectionsAreReused(t *testing.T) {
	k := &sink{}
	lsrv := smtp.NewServer(k)
	lsrv.LMTP = true
	lsrv.Domain = "sink"
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln := &countingListener{Listener: raw}
	go lsrv.Serve(lln)
	t.Cleanup(func() { lsrv.Close() })
	e := New(resolver{lmtp: raw.Addr().String()}, Config{Logger: slog.New(slog.DiscardHandler)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.Serve(ln)
	t.Cleanup(func() { e.Close() })
	h := &harness{sink: k, addr: ln.Addr().String()}
	message := hello + "DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"

	for i := range 3 {
		if out := h.session(t, []byte(message+"QUIT\r\n")); queued(out) != 1 {
			t.Fatalf("message %d: %q", i, out)
		}
	}
	// An unknown user (the cell's 550) and an abandoned transaction (RSET)
	// leave the connection usable.
	out := h.session(t, []byte("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@sink.example>\r\nRCPT TO:<nobody@elsewhere.example>\r\nRSET\r\n"+
		strings.TrimPrefix(message, "EHLO client.example\r\n")+"QUIT\r\n"))
	if queued(out) != 1 {
		t.Fatalf("after RSET: %q", out)
	}
	if n := lln.accepted(); n != 1 {
		t.Fatalf("%d LMTP connections for 4 sequential messages, want 1 (reused)", n)
	}
	if got := k.stored.Load(); got != 4 {
		t.Fatalf("%d messages stored, want 4", got)
	}
	// The cell drops its connections: the next message goes on a new one.
	lln.cutAll()
	if out := h.session(t, []byte(message+"QUIT\r\n")); queued(out) != 1 {
		t.Fatalf("after the cell closed the pooled connection: %q", out)
	}
	if n := lln.accepted(); n != 2 {
		t.Fatalf("%d LMTP connections, want 2", n)
	}
	if got := k.stored.Load(); got != 5 {
		t.Fatalf("%d messages stored, want 5", got)
	}
}
