package outbound_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/cell/internal/outbound"
	"github.com/cellmail/cellmail/internal/dnstest"
	"github.com/cellmail/cellmail/internal/pgserver"
)

var pg *pgserver.Server

func TestMain(m *testing.M) { os.Exit(pgserver.TestMain(m, "outbound", &pg)) }

// remote is a real SMTP server (go-smtp) playing a remote domain's MX: it
// accepts, defers (451) or refuses (550) by the recipient's local part,
// with STARTTLS offered, and keeps what it received.
type remote struct {
	mu   sync.Mutex
	got  map[string][]byte
	tls  map[string]bool
	port int
}

func (r *remote) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &remoteSession{r: r, c: c}, nil
}

type remoteSession struct {
	r     *remote
	c     *smtp.Conn
	rcpts []string
}

func (s *remoteSession) Reset()                               { s.rcpts = nil }
func (s *remoteSession) Logout() error                        { return nil }
func (s *remoteSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *remoteSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch strings.SplitN(to, "@", 2)[0] {
	case "temp":
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try again later"}
	case "perm":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *remoteSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	_, isTLS := s.c.TLSConnectionState()
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	for _, rc := range s.rcpts {
		s.r.got[rc] = b
		s.r.tls[rc] = isTLS
	}
	return nil
}

func startRemote(t *testing.T) *remote {
	r := &remote{got: map[string][]byte{}, tls: map[string]bool{}}
	srv := smtp.NewServer(r)
	srv.Domain = "mx.remote.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.port = ln.Addr().(*net.TCPAddr).Port
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

func selfSigned(t *testing.T) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.remote.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"mx.remote.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type fixture struct {
	store   *mailstore.Store
	blobs   blobstore.Tiered
	s       *outbound.Sender
	dns     *dnstest.Server
	remote  *remote
	account mail.Account
}

func setup(t *testing.T) *fixture {
	store, blobs, a := mailstoretest.New(t, pg, "alice@demo.example")
	log := slog.New(slog.DiscardHandler)
	r := startRemote(t)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		`remote.test. 300 IN MX 10 mx.remote.test.`,
		`mx.remote.test. 300 IN A 127.0.0.1`,
		`implicit.test. 300 IN A 127.0.0.1`,
		`nullmx.test. 300 IN MX 0 .`,
		`deadmx.test. 300 IN MX 10 dead.deadmx.test.`,
		`dead.deadmx.test. 300 IN A 127.0.0.2`,
	)
	s := &outbound.Sender{Store: store, DSN: delivery.New(blobs, store, message.DefaultLimits()), Resolver: dns.Resolver(),
		Hostname: "cell.demo.example", Port: r.port, Log: log}
	return &fixture{store: store, blobs: blobs, s: s, dns: dns, remote: r, account: a}
}

const sentMessage = "From: Alice <alice@demo.example>\r\nTo: someone\r\nSubject: hello remote\r\n" +
	"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@demo.example>\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n\r\nHi.\r\n.leading dot\r\n"

func (f *fixture) enqueue(t *testing.T, expires time.Duration, rcpts ...string) map[string]string {
	t.Helper()
	if err := f.store.EnqueueOutbound(t.Context(), f.account.ID, f.account.Address, rcpts, []byte(sentMessage), expires, ""); err != nil {
		t.Fatal(err)
	}
	ids, err := f.store.OutboundIDs(t.Context(), f.account.ID)
	if err != nil {
		t.Fatal(err)
	}
	byRcpt := map[string]string{}
	for _, id := range ids {
		e, _, _, err := f.store.OutboundByID(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		byRcpt[e.Rcpt] = id
	}
	return byRcpt
}

func (f *fixture) state(t *testing.T, id string) (mailstore.OutboundEntry, int16, time.Time) {
	t.Helper()
	e, st, next, err := f.store.OutboundByID(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e, st, next
}

func (f *fixture) inbox(t *testing.T) []string {
	t.Helper()
	box, err := f.store.MailboxByUse(t.Context(), f.account.ID, mail.UseInbox)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := f.store.ListMessages(t.Context(), f.account.ID, box.ID, mail.ListFilter{}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		b, err := f.blobs.Open(t.Context(), m.BlobRef)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(b)
		b.Close()
		out = append(out, string(raw))
	}
	return out
}

func TestDeliveryDeferralAndBounce(t *testing.T) {
	f := setup(t)
	ids := f.enqueue(t, 5*24*time.Hour, "ok@remote.test", "ok2@remote.test", "temp@remote.test", "perm@remote.test", "x@nullmx.test", "ok@implicit.test")
	start := time.Now()
	if _, err := f.s.Once(t.Context()); err != nil {
		t.Fatal(err)
	}

	// Delivered, over STARTTLS, DKIM-signed with a key that verifies
	// against the record the cell says to publish; dot-stuffing undone.
	for _, rc := range []string{"ok@remote.test", "ok2@remote.test", "ok@implicit.test"} {
		if _, st, _ := f.state(t, ids[rc]); st != mailstore.OutboundDelivered {
			t.Errorf("%s: state %d, want delivered", rc, st)
		}
	}
	f.remote.mu.Lock()
	got, viaTLS := f.remote.got["ok@remote.test"], f.remote.tls["ok@remote.test"]
	f.remote.mu.Unlock()
	if !viaTLS {
		t.Error("not sent over STARTTLS though the server offered it")
	}
	if !bytes.HasSuffix(got, []byte("\r\nHi.\r\n.leading dot\r\n")) {
		t.Errorf("body on arrival: %q", got)
	}
	sel, key, err := f.store.DKIMKey(t.Context(), "demo.example", func() (string, []byte, error) { return "", nil, errors.New("no key made") })
	if err != nil {
		t.Fatal(err)
	}
	rec, err := outbound.DKIMRecord(key)
	if err != nil {
		t.Fatal(err)
	}
	f.dns.MustAdd(t, sel+`._domainkey.demo.example. 300 IN TXT "`+rec+`"`)
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(got), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		return f.dns.Resolver().LookupTXT(context.Background(), name)
	}})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "demo.example" {
		t.Fatalf("DKIM: %+v %v", verifs, err)
	}

	// Deferred: pending, one attempt, due again after about a minute.
	e, st, next := f.state(t, ids["temp@remote.test"])
	if st != mailstore.OutboundPending || e.Attempts != 1 || !strings.Contains(e.LastError, "451") {
		t.Errorf("temp: state %d attempts %d error %q", st, e.Attempts, e.LastError)
	}
	if wait := next.Sub(start); wait < 45*time.Second || wait > 80*time.Second {
		t.Errorf("temp: due again in %s, want about a minute (±20%%)", wait)
	}

	// Refused for good, and a null MX: bounced, with a DSN in the sender's
	// INBOX for each.
	for _, rc := range []string{"perm@remote.test", "x@nullmx.test"} {
		if _, st, _ := f.state(t, ids[rc]); st != mailstore.OutboundBounced {
			t.Errorf("%s: state %d, want bounced", rc, st)
		}
	}
	dsns := f.inbox(t)
	if len(dsns) != 2 {
		t.Fatalf("%d messages in INBOX, want 2 DSNs", len(dsns))
	}
	all := strings.Join(dsns, "\n")
	for _, want := range []string{"Content-Type: multipart/report; report-type=delivery-status",
		"Final-Recipient: rfc822; perm@remote.test", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 No such user here",
		"Remote-MTA: dns; mx.remote.test", "Final-Recipient: rfc822; x@nullmx.test", "null MX",
		"Content-Type: text/rfc822-headers", "Subject: hello remote", "Auto-Submitted: auto-replied"} {
		if !strings.Contains(all, want) {
			t.Errorf("DSNs lack %q:\n%s", want, all)
		}
	}
	// A second pass does nothing more (nothing is due).
	if n, err := f.s.Once(t.Context()); err != nil || n != 0 {
		t.Fatalf("second pass took %d entries (%v)", n, err)
	}
	if len(f.inbox(t)) != 2 {
		t.Fatal("a DSN was filed twice")
	}
}

func TestExpiredAndUnreachable(t *testing.T) {
	f := setup(t)
	ids := f.enqueue(t, 0, "temp@remote.test")
	if _, err := f.s.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, st, _ := f.state(t, ids["temp@remote.test"]); st != mailstore.OutboundBounced {
		t.Fatalf("expired entry: state %d, want bounced", st)
	}
	if dsn := f.inbox(t); len(dsn) != 1 || !strings.Contains(dsn[0], "Status: 4.4.7") {
		t.Fatalf("expiry DSN: %v", dsn)
	}
	// An MX that accepts the connection and drops it: deferred.
	drop, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer drop.Close()
	go func() {
		for {
			c, err := drop.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	f.s.Port = drop.Addr().(*net.TCPAddr).Port
	f.dns.MustAdd(t, `dropper.test. 300 IN MX 10 mx.dropper.test.`, `mx.dropper.test. 300 IN A 127.0.0.3`)
	ids = f.enqueue(t, time.Hour, "x@dropper.test")
	if _, err := f.s.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if e, st, _ := f.state(t, ids["x@dropper.test"]); st != mailstore.OutboundPending || e.Attempts != 1 {
		t.Fatalf("dropped connection: state %d attempts %d (%s)", st, e.Attempts, e.LastError)
	}
	f.s.Port = f.remote.port

	// An MX nobody listens on: deferred, not bounced.
	ids = f.enqueue(t, time.Hour, "x@deadmx.test")
	if _, err := f.s.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if e, st, _ := f.state(t, ids["x@deadmx.test"]); st != mailstore.OutboundPending || e.Attempts != 1 {
		t.Fatalf("unreachable MX: state %d attempts %d (%s)", st, e.Attempts, e.LastError)
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	prev := time.Duration(0)
	for n := 0; n < 12; n++ {
		b := outbound.Backoff(n)
		base := min(time.Minute<<n, 4*time.Hour)
		if b < base*4/5 || b > base*6/5 {
			t.Fatalf("Backoff(%d) = %s, want %s ±20%%", n, b, base)
		}
		if n < 7 && b <= prev*4/5 {
			t.Fatalf("Backoff(%d) = %s did not grow from %s", n, b, prev)
		}
		prev = b
	}
}
