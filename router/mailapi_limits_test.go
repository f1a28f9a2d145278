package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"github.com/emersion/go-imap/v2"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// getRaw downloads path with a Range header and returns the status, the
// Content-Range and the body.
func getRaw(t *testing.T, url, path, token, rng string) (int, string, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Range", rng)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Range"), b
}

// Range requests on a download follow RFC 9110 §14: a suffix range of
// length 0 is unsatisfiable (416, "bytes */size"), and many small or
// overlapping ranges are served as the whole content rather than as a
// multipart answer many times the file's size.
func TestDownloadRanges(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	ctx := context.Background()
	if _, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "alice@eu.example"}}, Subject: "ranges", Text: strings.Repeat("x", 500)})); err != nil {
		t.Fatal(err)
	}
	in := waitInbox(t, alice, 1)
	path := "/v1/messages/" + in[0].Id + "/raw"
	code, _, whole := getRaw(t, url, path, alice.access, "")
	if code != http.StatusOK {
		t.Fatalf("whole: %d", code)
	}
	size := len(whole)

	if code, cr, _ := getRaw(t, url, path, alice.access, "bytes=-0"); code != http.StatusRequestedRangeNotSatisfiable || cr != fmt.Sprintf("bytes */%d", size) {
		t.Fatalf("bytes=-0: %d Content-Range %q, want 416 bytes */%d", code, cr, size)
	}
	if code, cr, b := getRaw(t, url, path, alice.access, "bytes=-0,0-9"); code != http.StatusPartialContent || cr != fmt.Sprintf("bytes 0-9/%d", size) || string(b) != string(whole[:10]) {
		t.Fatalf("bytes=-0,0-9: %d %q %q", code, cr, b)
	}
	if code, cr, b := getRaw(t, url, path, alice.access, "bytes=-10"); code != http.StatusPartialContent || cr != fmt.Sprintf("bytes %d-%d/%d", size-10, size-1, size) || string(b) != string(whole[size-10:]) {
		t.Fatalf("bytes=-10: %d %q %q", code, cr, b)
	}
	many := make([]string, 800)
	for i := range many {
		many[i] = fmt.Sprintf("%d-%d", i%size, i%size)
	}
	if code, _, b := getRaw(t, url, path, alice.access, "bytes="+strings.Join(many, ",")); code != http.StatusOK || len(b) != size {
		t.Fatalf("800 ranges: %d, %d bytes; want 200 with the %d-byte message", code, len(b), size)
	}
	if code, _, b := getRaw(t, url, path, alice.access, "bytes=0-99,50-149"); code != http.StatusOK || len(b) != size {
		t.Fatalf("overlapping ranges: %d, %d bytes; want 200 whole", code, len(b))
	}
	if code, _, b := getRaw(t, url, path, alice.access, "bytes=0-1,10-11"); code != http.StatusPartialContent || !strings.Contains(string(b), "multipart") && !strings.Contains(string(b), "Content-Range") {
		t.Fatalf("two ranges: %d %q", code, b)
	}
}

// tcpProxy forwards connections to a target until it is closed; closing
// it drops every connection and refuses new ones (the port is closed), as
// a database that went down does.
type tcpProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(p.Close)
	return p
}

func (p *tcpProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// While a cell's database is down, its API answers unavailable and its
// IMAP NO [UNAVAILABLE] (clients retry both), never internal / SERVERBUG.
func TestDatabaseDownIsUnavailable(t *testing.T) {
	s := newStack(t)
	var proxy *tcpProxy
	s.dsnFor = func(_, dsn string) string {
		u, err := neturl.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		proxy = startTCPProxy(t, u.Host)
		u.Host = proxy.ln.Addr().String()
		return u.String()
	}
	s.stops["us-1"]()
	s.startCell("us-1", "us")
	url := s.startRouter(nil)
	bob := s.user(t, url, "bob@us.example")
	c := imapLogin(t, s.imaps, "bob@us.example", nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	proxy.Close()
	ctx := context.Background()
	if _, err := bob.c.ListMailboxes(ctx, withToken(bob.access, &mailv1.ListMailboxesRequest{})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("ListMailboxes with the database down: %v, want unavailable", err)
	}
	if _, err := bob.c.CreateMailbox(ctx, withToken(bob.access, &mailv1.CreateMailboxRequest{Name: "x"})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("CreateMailbox with the database down: %v, want unavailable", err)
	}
	for _, cmd := range []struct {
		name string
		run  func() error
	}{
		{"STATUS", func() error {
			_, err := c.Status("Sent", &imap.StatusOptions{NumMessages: true}).Wait()
			return err
		}},
		{"CREATE", func() error { return c.Create("y", nil).Wait() }},
		{"SELECT", func() error {
			_, err := c.Select("Sent", nil).Wait()
			return err
		}},
	} {
		err := cmd.run()
		var ie *imap.Error
		if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeUnavailable {
			t.Errorf("IMAP %s with the database down: %v, want NO [UNAVAILABLE]", cmd.name, err)
		}
	}
}
