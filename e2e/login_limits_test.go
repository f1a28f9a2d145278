package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
)

// The login limits (runbooks/login-limits.md) seen from outside, through
// the router, with clients on distinct loopback addresses (127.0.0.x are
// all this machine's): the cell counts per client address, whatever the
// protocol, and only failures.

const pass = "correct horse battery"

// dialerFrom dials from the loopback address ip.
func dialerFrom(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
}

// apiFrom is a mail API client whose calls come from ip.
func apiFrom(url, ip string) mailv1connect.MailServiceClient {
	tr := h2cTransport()
	tr.DialContext = dialerFrom(ip).DialContext
	return mailv1connect.NewMailServiceClient(&http.Client{Transport: tr}, url)
}

// imapFrom opens an implicit-TLS IMAP connection from ip, not logged in.
func imapFrom(t testing.TB, addr, ip string) *rawIMAP {
	t.Helper()
	c, err := tls.DialWithDialer(dialerFrom(ip), "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawIMAP{t: t, c: c, r: bufio.NewReader(c), w: c}
	if greet := r.line(); !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("greeting: %q", greet)
	}
	return r
}

// submitFrom opens a submission session (implicit TLS) from ip.
func submitFrom(t testing.TB, addr, ip string) *smtp.Client {
	t.Helper()
	conn, err := tls.DialWithDialer(dialerFrom(ip), "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func login(c mailv1connect.MailServiceClient, addr, password string, hdr ...string) error {
	req := connect.NewRequest(&mailv1.LoginRequest{Address: addr, Password: password})
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header().Set(hdr[i], hdr[i+1])
	}
	_, err := c.Login(context.Background(), req)
	return err
}

// Honest clients: hundreds of right passwords in a row — API, submission
// AUTH (a client that authenticates per message), IMAP — all succeed, and
// several accounts behind one address (a NAT) with one busy account are
// not slowed either.
func TestLoginLimitsHonestClients(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	users := []string{"alice@eu.example", "bob@us.example", "carol@eu.example"}
	for _, u := range users {
		s.user(t, url, u)
	}
	const nat = "127.0.0.20"
	api := apiFrom(url, nat)
	for i := range 200 {
		if err := login(api, users[0], pass); err != nil {
			t.Fatalf("API login %d: %v", i+1, err)
		}
	}
	for i := range 100 {
		c := submitFrom(t, s.submissions, nat)
		if err := c.Auth(sasl.NewPlainClient("", users[0], pass)); err != nil {
			t.Fatalf("submission AUTH %d: %v", i+1, err)
		}
		_ = c.Quit()
	}
	// One IMAP connection logging in and out again and again, as well as
	// a new connection per login.
	r := imapFrom(t, s.imaps, nat)
	for i := range 100 {
		r.ok(`LOGIN %q %q`, users[0], pass)
		r.ok("UNAUTHENTICATE")
		if i%10 == 0 {
			imapFrom(t, s.imaps, nat).ok(`LOGIN %q %q`, users[0], pass)
		}
	}
	// The NAT's other users, one of whom mistypes a few times.
	for range 3 {
		if err := login(api, users[1], "mistyped"); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("mistyped: %v", err)
		}
	}
	for _, u := range users {
		if err := login(api, u, pass); err != nil {
			t.Fatalf("%s from the NAT: %v", u, err)
		}
		imapFrom(t, s.imaps, nat).ok(`LOGIN %q %q`, u, pass)
	}
}

// An outsider's guesses: slowed per (account, source) whatever the
// protocol, a forged X-Forwarded-For does not help, UNAUTHENTICATE then
// LOGIN on one connection is counted, and the owner, from elsewhere, gets
// in at once.
func TestLoginLimitsAttacker(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	const attacker, owner = "127.0.0.30", "127.0.0.31"
	s.user(t, url, "eve@eu.example") // the attacker's own account
	// Four victims in eve's cell (one IMAP connection is one cell's).
	var victims []string
	for i := 0; len(victims) < 4; i++ {
		if v := fmt.Sprintf("victim%d@eu.example", i); s.owner(v) == s.owner("eve@eu.example") {
			victims = append(victims, v)
			s.user(t, url, v)
		}
	}

	// IMAP: one good login, UNAUTHENTICATE, then 40 guesses against four
	// accounts on the same connection: five per account reach the
	// password check (pairFree), the rest are refused by the limit.
	r := imapFrom(t, s.imaps, attacker)
	r.ok(`LOGIN "eve@eu.example" %q`, pass)
	r.ok("UNAUTHENTICATE")
	checked, refused := map[string]int{}, 0
	for i := range 40 {
		v := victims[i%len(victims)]
		_, st := r.do(`LOGIN %q "guess %d"`, v, i)
		switch {
		case strings.HasPrefix(st, "NO [AUTHENTICATIONFAILED]"):
			checked[v]++
		case strings.HasPrefix(st, "NO [UNAVAILABLE] Too many failed logins"):
			refused++
		default:
			t.Fatalf("guess %d (%s in %s, eve in %s): %s", i, v, s.owner(v), s.owner("eve@eu.example"), st)
		}
	}
	for _, v := range victims {
		if checked[v] != 5 {
			t.Errorf("%s: %d guesses reached the password check, want 5 (all: %v)", v, checked[v], checked)
		}
	}
	if refused != 20 {
		t.Errorf("%d guesses refused by the limit, want 20", refused)
	}
	// Naming another source through the splice changes nothing: the cell
	// took the router's ID, before any login, and no later one.
	r.ok(`ID ("x-originating-ip" "10.9.9.9")`)
	if _, st := r.do(`LOGIN %q "guess"`, victims[0]); !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Errorf("after a forged ID: %s", st)
	}
	// AUTHENTICATE PLAIN on the same connection is the same attempt.
	_, st := r.do("AUTHENTICATE PLAIN %s", plain(victims[0], "guess"))
	if !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Errorf("AUTHENTICATE PLAIN after the limit: %s", st)
	}
	// From the attacker's address even the right password waits (no
	// oracle), in IMAP and in the API alike: one count per client,
	// whatever the protocol.
	if _, st := imapFrom(t, s.imaps, attacker).do(`LOGIN %q %q`, victims[0], pass); !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Errorf("right password from the attacker's address: %s", st)
	}
	if err := login(apiFrom(url, attacker), victims[1], pass); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("API login from the attacker's address: %v, want resource_exhausted", err)
	}
	// The owners, from their own address, get in at once everywhere.
	imapFrom(t, s.imaps, owner).ok(`LOGIN %q %q`, victims[0], pass)
	if err := login(apiFrom(url, owner), victims[1], pass); err != nil {
		t.Errorf("owner's API login: %v", err)
	}
	if err := submitFrom(t, s.submissions, owner).Auth(sasl.NewPlainClient("", victims[2], pass)); err != nil {
		t.Errorf("owner's submission AUTH: %v", err)
	}
	// The delay ends: a second later the attacker may guess again (once).
	s.advance(1100 * time.Millisecond)
	if _, st := r.do(`LOGIN %q "again"`, victims[3]); !strings.HasPrefix(st, "NO [AUTHENTICATIONFAILED]") {
		t.Errorf("after the delay: %s", st)
	}
	if _, st := r.do(`LOGIN %q "again"`, victims[3]); !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Errorf("right after that: %s", st)
	}

	// The API: a forged X-Forwarded-For changes nothing (the router
	// replaces it with what it sees).
	api := apiFrom(url, "127.0.0.32")
	for i := range 8 {
		err := login(api, victims[3], "guess", "X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i+1))
		want := connect.CodeUnauthenticated
		if i >= 5 {
			want = connect.CodeResourceExhausted
		}
		if connect.CodeOf(err) != want {
			t.Fatalf("forged X-Forwarded-For, guess %d: %v, want %v", i+1, err, want)
		}
	}
	// Submission: 535 for the first five guesses, then 454 4.7.0.
	for i := range 7 {
		err := submitFrom(t, s.submissions, "127.0.0.33").Auth(sasl.NewPlainClient("", victims[2], "guess"))
		want := 535
		if i >= 5 {
			want = 454
		}
		if smtpCode(err) != want {
			t.Fatalf("submission guess %d: %v, want %d", i+1, err, want)
		}
	}
	if err := submitFrom(t, s.submissions, owner).Auth(sasl.NewPlainClient("", victims[2], pass)); err != nil {
		t.Errorf("%s from the owner's address: %v", victims[2], err)
	}
}

// plain is an AUTHENTICATE PLAIN initial response (RFC 4616).
func plain(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
}
