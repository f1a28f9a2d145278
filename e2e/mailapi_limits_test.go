package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/controlplane/cptest"
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

	idle := rawLogin(t, s.imaps, "bob@us.example")
	idle.ok("SELECT INBOX")

	proxy.Close()
	ctx := context.Background()

	// A selected session whose state cannot be brought up to date is told
	// so with a BYE, not closed without a word.
	if _, err := fmt.Fprintf(idle.w, "N1 NOOP\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = idle.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var got []string
	for {
		l, err := idle.r.ReadString('\n')
		if l != "" {
			got = append(got, strings.TrimRight(l, "\r\n"))
		}
		if err != nil {
			break
		}
	}
	if len(got) == 0 || !(strings.HasPrefix(got[len(got)-1], "* BYE [UNAVAILABLE]") || strings.HasPrefix(got[len(got)-1], "N1 NO [UNAVAILABLE]")) {
		t.Errorf("NOOP of a selected session with the database down: %q, want a BYE [UNAVAILABLE]", got)
	}
	if _, err := bob.c.ListMailboxes(ctx, withToken(bob.access, &mailv1.ListMailboxesRequest{})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("ListMailboxes with the database down: %v, want unavailable", err)
	} else if msg := err.Error(); strings.Contains(msg, "database") || strings.Contains(msg, "postgres") || strings.Contains(msg, "127.0.0.1") {
		t.Errorf("the caller is told the cell's internals: %q", msg)
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

// countingReader yields n bytes of 'a' (endless when n < 0), counting
// what was read of it.
type countingReader struct {
	n, read int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n >= 0 && c.read >= c.n {
		return 0, io.EOF
	}
	if c.n >= 0 && int64(len(p)) > c.n-c.read {
		p = p[:c.n-c.read]
	}
	for i := range p {
		p[i] = 'a'
	}
	c.read += int64(len(p))
	return len(p), nil
}

// post sends body (of unknown length) to a Connect procedure and returns
// the status, the Connect error code and how much of the body was read.
func post(t *testing.T, url, procedure, token string, body *countingReader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+procedure, io.NopCloser(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: h2cTransport()}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", procedure, err)
	}
	defer resp.Body.Close()
	var e struct{ Code string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Code
}

// Calls made before login are bounded to 64 KiB, enforced while the body
// is read, at the router and at the cell: an endless body is refused
// resource_exhausted after a little of it was read; so is a large body
// behind a token that is not a live session. Authenticated large sends
// still work.
func TestPreLoginBodyLimit(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	ctx := context.Background()
	const limit = 64 << 10

	// A Login whose password is 1 MB: resource_exhausted, not read whole.
	_, err := alice.c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "alice@eu.example", Password: strings.Repeat("p", 1<<20)}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("1 MB Login through the router: %v, want resource_exhausted", err)
	}
	login := "/" + mailv1connect.MailServiceName + "/Login"
	for _, target := range []struct{ name, url string }{{"router", url}, {"cell", s.cells[s.owner("alice@eu.example")]}} {
		body := &countingReader{n: -1}
		status, code := post(t, target.url, login, "", body)
		if code != "resource_exhausted" || body.read > 4<<20 { // what HTTP/2 flow control lets the client send ahead
			t.Errorf("endless Login body at the %s: %d %q after reading %d bytes; want resource_exhausted after about %d",
				target.name, status, code, body.read, limit)
		}
		// A token that looks like a session's but is none: the cell does
		// not read on past the pre-login bound, and says the token is bad
		// (a client with an expired one refreshes it).
		send := "/" + mailv1connect.MailServiceName + "/SendMessage"
		forged := "cm1." + base64.RawURLEncoding.EncodeToString([]byte("alice@eu.example")) + "." +
			base64.RawURLEncoding.EncodeToString(make([]byte, 32))
		body = &countingReader{n: 40 << 20}
		status, code = post(t, target.url, send, forged, body)
		if code != "unauthenticated" || body.read > 8<<20 {
			t.Errorf("40 MB SendMessage with a forged token at the %s: %d %q after reading %d bytes; want unauthenticated, not read whole",
				target.name, status, code, body.read)
		}
		body = &countingReader{n: 40 << 20}
		status, code = post(t, target.url, send, "not-a-session-token", body)
		if code != "resource_exhausted" || body.read > 8<<20 {
			t.Errorf("40 MB SendMessage with a malformed token at the %s: %d %q after reading %d bytes; want resource_exhausted, not read whole",
				target.name, status, code, body.read)
		}
	}

	// A revoked session's token with a 2 MB body (its length announced):
	// unauthenticated, so that the client logs in again.
	old := s.user(t, url, "old@eu.example")
	if _, err := old.c.Logout(ctx, withToken(old.access, &mailv1.LogoutRequest{})); err != nil {
		t.Fatal(err)
	}
	_, err = old.c.SendMessage(ctx, withToken(old.access, &mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: "alice@eu.example"}},
		Attachments: []*mailv1.OutgoingAttachment{{Filename: "big.bin", Content: make([]byte, 2<<20)}}}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("2 MB send with a revoked token: %v, want unauthenticated", err)
	}

	// A logged-in user's 2 MB send goes through (streamed by the router).
	big := make([]byte, 2<<20)
	if _, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "alice@eu.example"}}, Subject: "big", Text: "see attached",
		Attachments: []*mailv1.OutgoingAttachment{{Filename: "big.bin", Content: big}}})); err != nil {
		t.Fatalf("authenticated 2 MB send: %v", err)
	}
}

// Through the API: too many labels answer invalid_argument naming the
// limit; labels past the quota answer resource_exhausted; filters too.
func TestLabelLimitsAtTheAPI(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	ctx := context.Background()
	c := mailv1connect.NewMailServiceClient(&http.Client{Transport: h2cTransport()}, url)
	if _, err := c.CreateAccount(ctx, withToken(cptest.AdminToken, &mailv1.CreateAccountRequest{Address: "small@eu.example",
		Password: "correct horse battery", QuotaBytes: 4000})); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: "small@eu.example", Password: "correct horse battery"}))
	if err != nil {
		t.Fatal(err)
	}
	u := &user{addr: "small@eu.example", access: resp.Msg.AccessToken, c: c}
	if _, err := u.c.SendMessage(ctx, withToken(u.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "small@eu.example"}}, Subject: "labels", Text: "hi"})); err != nil {
		t.Fatal(err)
	}
	in := waitInbox(t, u, 1)
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("%0200d", i)
	}
	_, err = u.c.UpdateFlags(ctx, withToken(u.access, &mailv1.UpdateFlagsRequest{MessageIds: []string{in[0].Id}, AddLabels: many}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "100") {
		t.Fatalf("5000 labels: %v, want invalid_argument naming the limit of 100", err)
	}
	_, err = u.c.UpdateFlags(ctx, withToken(u.access, &mailv1.UpdateFlagsRequest{MessageIds: []string{in[0].Id}, AddLabels: many[:30]}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("6000 bytes of labels on a 4000-byte quota: %v, want resource_exhausted", err)
	}
	_, err = u.c.SetFilters(ctx, withToken(u.access, &mailv1.SetFiltersRequest{Filters: []*mailv1.Filter{{Field: "subject", Contains: "x", Labels: many[:21]}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("filter with 21 labels: %v, want invalid_argument", err)
	}
}

// overLimitMessage has 501 MIME parts (the store reads 500).
func overLimitMessage(to string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: sender@elsewhere.test\r\nTo: %s\r\nSubject: too many parts\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=p\r\n\r\n", to)
	for i := range 501 {
		fmt.Fprintf(&b, "--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n", i)
	}
	b.WriteString("--p--\r\n")
	return b.String()
}

// A message over the MIME limits is refused when offered — 554 5.6.0 by
// SMTP (inbound and submission, before any 250), NO [LIMIT] by APPEND —
// and one stored before is shown degraded by GetMessage, not answered
// internal for ever.
func TestMIMELimitsAtAcceptance(t *testing.T) {
	s := newStack(t)
	var bobDB string
	s.dsnFor = func(_, dsn string) string {
		u, err := neturl.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		bobDB = strings.TrimPrefix(u.Path, "/")
		return dsn
	}
	s.stops["us-1"]()
	s.startCell("us-1", "us")
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	bob := s.user(t, url, "bob@us.example")
	is5_6_0 := func(err error) bool {
		var se *smtp.SMTPError
		return errors.As(err, &se) && se.Code == 554 && se.EnhancedCode == smtp.EnhancedCode{5, 6, 0}
	}

	// Inbound, through the router's MX and the cell's LMTP.
	c := s.mx(t)
	if err := c.SendMail("sender@elsewhere.test", []string{"bob@us.example"}, strings.NewReader(overLimitMessage("bob@us.example"))); !is5_6_0(err) {
		t.Fatalf("inbound message with 501 parts: %v, want 554 5.6.0", err)
	}

	// Submission.
	sc, err := smtp.DialTLS(s.submissions, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", "alice@eu.example", "correct horse battery")); err != nil {
		t.Fatal(err)
	}
	sub := strings.Replace(overLimitMessage("bob@us.example"), "sender@elsewhere.test", "alice@eu.example", 1)
	if err := sc.SendMail("alice@eu.example", []string{"bob@us.example"}, strings.NewReader(sub)); !is5_6_0(err) {
		t.Fatalf("submitted message with 501 parts: %v, want 554 5.6.0", err)
	}

	// APPEND.
	ic := imapLogin(t, s.imaps, "bob@us.example", nil)
	raw := overLimitMessage("bob@us.example")
	ap := ic.Append("INBOX", int64(len(raw)), nil)
	if _, err := ap.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	var ie *imap.Error
	if _, err := ap.Wait(); !errors.As(err, &ie) || ie.Code != imap.ResponseCodeLimit {
		t.Fatalf("APPEND of a message with 501 parts: %v, want NO [LIMIT]", err)
	}
	if n := len(bob.list(t, bob.box(t, mailv1.SpecialUse_SPECIAL_USE_INBOX).Id)); n != 0 {
		t.Fatalf("bob's INBOX has %d messages, want none", n)
	}
	if n := len(alice.list(t, alice.box(t, mailv1.SpecialUse_SPECIAL_USE_SENT).Id)); n != 0 {
		t.Fatalf("alice's Sent has %d messages, want none", n)
	}

	// One stored before the limits were applied at acceptance: its blob
	// is made such a message behind the store's back.
	s.deliver(t, "bob@us.example", "stored before", "fine at first")
	in := waitInbox(t, bob, 1)
	hexRaw := fmt.Sprintf("%x", raw)
	out, err := pg.Psql(bobDB, fmt.Sprintf(`UPDATE inline_blobs SET data = decode('%s', 'hex')
		WHERE ref = (SELECT blob_ref FROM messages WHERE id = '%s')`, hexRaw, in[0].Id))
	if err != nil || out != "UPDATE 1" {
		t.Fatalf("replacing the stored message: %q %v", out, err)
	}
	got, err := bob.c.GetMessage(context.Background(), withToken(bob.access, &mailv1.GetMessageRequest{MessageId: in[0].Id}))
	if err != nil {
		t.Fatalf("GetMessage of a stored message over the limits: %v, want a degraded view", err)
	}
	if !strings.Contains(got.Msg.Text, "cannot be shown") || got.Msg.RawPath == "" || len(got.Msg.Headers) == 0 {
		t.Fatalf("degraded view: text %q raw %q headers %d", got.Msg.Text, got.Msg.RawPath, len(got.Msg.Headers))
	}
}
