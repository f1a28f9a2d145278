// Package imapproxy is the router's IMAP front (RFC 9051, RFC 3501): on
// port 143 with STARTTLS (RFC 9051 §6.2.1) and on 993 with implicit TLS
// (RFC 8314), it speaks IMAP until LOGIN or AUTHENTICATE PLAIN (RFC 4616),
// learns the user, logs in at the cell that owns the user, then splices the
// client's connection to the cell's IMAP server byte for byte. The cell
// does the IMAP; the router only finds it, through the routing contract
// (controlplane/routing): its map epoch goes in the ID it sends first
// ("x-cellmail-epoch"), and a cell's "NO [CELLMAIL-WRONG-CELL owner
// epoch]" or "NO [CELLMAIL-MOVING ms]" to LOGIN makes it log in at the
// owner (two cells at most) or wait a few seconds, the client none the
// wiser.
//
// Before login the proxy keeps to small limits: a command line of
// maxLine, literals only for LOGIN and of at most maxLiteral, no "+" for a
// literal it will refuse (so a pre-login APPEND is never read), LOGIN only
// under TLS, a few bad commands and failed logins per connection. Failed
// logins are counted by the cell (its login limits, shared with the API
// and submission, runbooks/login-limits.md): the proxy tells the cell the
// client's address with ID "x-originating-ip" (RFC 2971 §3.3, as
// Dovecot's proxies do) as the first command of the cell connection, so
// the cell counts per client also for LOGINs sent after UNAUTHENTICATE
// through the splice. A client's own ID is answered here and never forwarded.
package imapproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// Router runs a call at the owning cell of an address (routing.Routes).
type Router interface {
	Do(ctx context.Context, address string, call func(ctx context.Context, tgt routing.Target) error) error
}

// Config is the proxy's settings.
type Config struct {
	TLS    *tls.Config
	Logger *slog.Logger
	// Greeting names the service in the greeting.
	Greeting string
	// AllowPlaintextLogin lets LOGIN run without TLS (tests only).
	AllowPlaintextLogin bool
	// Dial reaches a cell (default net.Dialer).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Limits of a connection before login, and of failures per address.
const (
	preLoginTimeout = 60 * time.Second
	preLoginTotal   = 3 * time.Minute
	maxBad          = 5
	maxFailedLogins = 3
	cellTimeout     = 20 * time.Second
)

// Proxy is the IMAP front.
type Proxy struct {
	routes Router
	cfg    Config
	log    *slog.Logger

	mu   sync.Mutex
	lns  []net.Listener
	done bool
}

// New makes a proxy.
func New(routes Router, cfg Config) *Proxy {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Greeting == "" {
		cfg.Greeting = "cellmail IMAP ready"
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return &Proxy{routes: routes, cfg: cfg, log: cfg.Logger}
}

// Serve accepts plain connections (STARTTLS offered when TLS is set).
func (p *Proxy) Serve(ln net.Listener) error { return p.serve(ln, false) }

// ServeTLS accepts implicit-TLS connections (port 993).
func (p *Proxy) ServeTLS(ln net.Listener) error {
	if p.cfg.TLS == nil {
		return errors.New("imapproxy: implicit TLS needs a certificate")
	}
	return p.serve(ln, true)
}

func (p *Proxy) serve(ln net.Listener, implicit bool) error {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return net.ErrClosed
	}
	p.lns = append(p.lns, ln)
	p.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		go p.handle(c, implicit)
	}
}

// Close stops accepting; spliced sessions run until either side ends.
func (p *Proxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	for _, ln := range p.lns {
		_ = ln.Close()
	}
	return nil
}

// conn is one client before login.
type conn struct {
	p        *Proxy
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	tls      bool
	addr     string
	bad      int
	failures int
}

func (p *Proxy) handle(c net.Conn, implicit bool) {
	defer func() {
		if v := recover(); v != nil {
			p.log.Error("imap proxy panic", "panic", v)
		}
	}()
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	cn := &conn{p: p, c: c, addr: host}
	if implicit {
		tc := tls.Server(c, p.cfg.TLS)
		_ = tc.SetDeadline(time.Now().Add(preLoginTimeout))
		if err := tc.Handshake(); err != nil {
			_ = c.Close()
			return
		}
		cn.c, cn.tls = tc, true
	}
	cn.reset()
	spliced := cn.run()
	if !spliced {
		_ = cn.c.Close()
	}
}

func (cn *conn) reset() {
	cn.br = bufio.NewReaderSize(cn.c, maxLine+2)
	cn.bw = bufio.NewWriter(cn.c)
}

func (cn *conn) write(format string, args ...any) error {
	_ = cn.c.SetWriteDeadline(time.Now().Add(preLoginTimeout))
	fmt.Fprintf(cn.bw, format+"\r\n", args...)
	return cn.bw.Flush()
}

func (cn *conn) caps() string {
	c := "IMAP4rev1 IMAP4rev2 SASL-IR ID"
	switch {
	case !cn.tls && cn.p.cfg.TLS != nil:
		c += " STARTTLS"
		if !cn.p.cfg.AllowPlaintextLogin {
			return c + " LOGINDISABLED"
		}
	case !cn.tls && !cn.p.cfg.AllowPlaintextLogin:
		return c + " LOGINDISABLED"
	}
	return c + " AUTH=PLAIN"
}

// run serves the pre-login phase; it returns true when the connection was
// handed to a cell (and is closed by the splice).
func (cn *conn) run() bool {
	deadline := time.Now().Add(preLoginTotal)
	if cn.write("* OK [CAPABILITY %s] %s", cn.caps(), cn.p.cfg.Greeting) != nil {
		return false
	}
	ps := &parser{cont: func() error { return cn.write("+ Ready for literal data") }}
	for {
		ps.br = cn.br
		_ = cn.c.SetReadDeadline(minTime(time.Now().Add(preLoginTimeout), deadline))
		cmd, err := ps.next()
		var be *badError
		switch {
		case errors.As(err, &be):
			cn.bad++
			tag := be.tag
			if tag == "" {
				tag = "*"
			}
			if cn.write("%s BAD %s", tag, be.text) != nil {
				return false
			}
			if cn.bad >= maxBad {
				_ = cn.write("* BYE Too many bad commands")
				return false
			}
			continue
		case errors.Is(err, errFatal):
			_ = cn.write("* BYE Command line or literal too long")
			return false
		case err != nil:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				_ = cn.write("* BYE Autologout; idle for too long")
			}
			return false
		}
		done, spliced := cn.command(cmd)
		if done {
			return spliced
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// command answers one pre-login command; done ends the pre-login phase.
func (cn *conn) command(cmd *command) (done, spliced bool) {
	switch cmd.name {
	case "CAPABILITY":
		return cn.write("* CAPABILITY %s\r\n%s OK CAPABILITY completed", cn.caps(), cmd.tag) != nil, false
	case "NOOP":
		return cn.write("%s OK NOOP completed", cmd.tag) != nil, false
	case "LOGOUT":
		_ = cn.write("* BYE Logging out\r\n%s OK LOGOUT completed", cmd.tag)
		return true, false
	case "ID":
		// RFC 2971: the client's identification is only logged.
		return cn.write(`* ID ("name" "cellmail")`+"\r\n%s OK ID completed", cmd.tag) != nil, false
	case "STARTTLS":
		if cn.tls || cn.p.cfg.TLS == nil || len(cmd.args) > 0 {
			return cn.write("%s BAD STARTTLS not available here", cmd.tag) != nil, false
		}
		if cn.br.Buffered() > 0 {
			// Plaintext sent after STARTTLS would be read as if under
			// TLS (command injection, RFC 9051 §11.1): refuse it.
			_ = cn.write("* BYE Data after STARTTLS")
			return true, false
		}
		if cn.write("%s OK Begin TLS negotiation now", cmd.tag) != nil {
			return true, false
		}
		tc := tls.Server(cn.c, cn.p.cfg.TLS)
		_ = tc.SetDeadline(time.Now().Add(preLoginTimeout))
		if err := tc.Handshake(); err != nil {
			return true, false
		}
		cn.c, cn.tls = tc, true
		cn.reset()
		return false, false
	case "LOGIN":
		if len(cmd.args) != 2 {
			return cn.bump(cmd.tag, "LOGIN takes a user name and a password"), false
		}
		return cn.login(cmd.tag, cmd.args[0], cmd.args[1])
	case "AUTHENTICATE":
		return cn.authenticate(cmd)
	}
	if cn.bump(cmd.tag, "Log in first") {
		return true, false
	}
	return false, false
}

// bump answers BAD and counts it; true when the session must end.
func (cn *conn) bump(tag, text string) bool {
	cn.bad++
	if cn.write("%s BAD %s", tag, text) != nil {
		return true
	}
	if cn.bad >= maxBad {
		_ = cn.write("* BYE Too many bad commands")
		return true
	}
	return false
}

// authenticate handles AUTHENTICATE PLAIN, with the initial response on
// the command line (SASL-IR, RFC 4959) or after a "+".
func (cn *conn) authenticate(cmd *command) (done, spliced bool) {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || !strings.EqualFold(cmd.args[0], "PLAIN") {
		return cn.write("%s NO [CANNOT] Only AUTHENTICATE PLAIN is offered", cmd.tag) != nil, false
	}
	if !cn.tls && !cn.p.cfg.AllowPlaintextLogin {
		return cn.write("%s NO [PRIVACYREQUIRED] Use STARTTLS first", cmd.tag) != nil, false
	}
	var resp string
	if len(cmd.args) == 2 {
		resp = cmd.args[1]
	} else {
		if cn.write("+ ") != nil {
			return true, false
		}
		_ = cn.c.SetReadDeadline(time.Now().Add(preLoginTimeout))
		ps := &parser{br: cn.br}
		line, err := ps.readLine()
		if err != nil {
			return true, false
		}
		resp = line
	}
	if resp == "*" {
		return cn.write("%s BAD Authentication cancelled", cmd.tag) != nil, false
	}
	if resp == "=" {
		resp = ""
	}
	raw, err := base64.StdEncoding.DecodeString(resp)
	if err != nil {
		return cn.bump(cmd.tag, "Bad base64"), false
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) {
		return cn.write("%s NO [AUTHENTICATIONFAILED] Authentication failed", cmd.tag) != nil, false
	}
	return cn.login(cmd.tag, parts[1], parts[2])
}

// login authenticates at the owning cell and, on success, splices.
func (cn *conn) login(tag, user, pass string) (done, spliced bool) {
	if !cn.tls && !cn.p.cfg.AllowPlaintextLogin {
		return cn.write("%s NO [PRIVACYREQUIRED] Use STARTTLS first", tag) != nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), cellTimeout)
	defer cancel()
	cell, okLine, err := cn.p.cellLogin(ctx, cn.addr, user, pass)
	var fail *loginFailure
	switch {
	case errors.As(err, &fail):
		cn.failures++
		if cn.write("%s %s", tag, fail.line) != nil {
			return true, false
		}
		if cn.failures >= maxFailedLogins {
			_ = cn.write("* BYE Too many failed logins")
			return true, false
		}
		return false, false
	case err != nil:
		cn.p.log.Warn("imap login: cell unreachable", "err", err)
		return cn.write("%s NO [UNAVAILABLE] Mailbox temporarily unavailable, try again", tag) != nil, false
	}
	if cn.write("%s %s", tag, okLine) != nil {
		_ = cell.c.Close()
		return true, false
	}
	cn.splice(cell)
	return true, true
}

// cellConn is a logged-in connection to a cell's IMAP server.
type cellConn struct {
	c  net.Conn
	br *bufio.Reader
}

// loginFailure is the cell's refusal, relayed to the client.
type loginFailure struct{ line string }

func (f *loginFailure) Error() string { return "login refused: " + f.line }

var authFailed = &loginFailure{line: "NO [AUTHENTICATIONFAILED] Authentication failed"}

// cellLogin logs in at the user's cell, through the routing contract; the
// returned line is the cell's tagged OK without its tag.
func (p *Proxy) cellLogin(ctx context.Context, client, user, pass string) (*cellConn, string, error) {
	var cc *cellConn
	var line string
	err := p.routes.Do(ctx, user, func(ctx context.Context, tgt routing.Target) error {
		if tgt.Cell.IMAPAddr == "" {
			return fmt.Errorf("%w: %s", routing.ErrNoEndpoint, tgt.Cell.Name)
		}
		var err error
		cc, line, err = p.loginAt(ctx, tgt, client, user, pass)
		var fail *loginFailure
		if errors.As(err, &fail) {
			if rerr := routing.ParseResponseCode(strings.TrimPrefix(fail.line, "NO ")); rerr != nil {
				return rerr // WRONG_CELL or MOVING: for Do, not for the client
			}
		}
		return err
	})
	if errors.Is(err, placement.ErrInvalidAddress) || errors.Is(err, placement.ErrUnknownDomain) {
		return nil, "", authFailed
	}
	return cc, line, err
}

// loginAt names the client and the map epoch (ID x-originating-ip and
// x-cellmail-epoch, first), sends LOGIN with synchronizing literals (any
// byte of a user name or password passes) and reads the answer.
func (p *Proxy) loginAt(ctx context.Context, tgt routing.Target, client, user, pass string) (*cellConn, string, error) {
	addr := tgt.Cell.IMAPAddr
	c, err := p.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, "", fmt.Errorf("dial cell IMAP %s: %w", addr, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = c.Close()
		}
	}()
	if d, has := ctx.Deadline(); has {
		_ = c.SetDeadline(d)
	}
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil {
		return nil, "", fmt.Errorf("cell greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "* OK") {
		return nil, "", fmt.Errorf("cell greeting: %q", strings.TrimSpace(greeting))
	}
	// client is an IP address (the proxy's own view of the peer) and the
	// epoch a number, so they need no quoting beyond the quotes.
	if _, err := fmt.Fprintf(c, "I ID (\"x-originating-ip\" \"%s\" \"%s\" \"%d\")\r\n", client, routing.EpochIDField, tgt.Epoch); err != nil {
		return nil, "", err
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, "", fmt.Errorf("cell ID answer: %w", err)
		}
		if strings.HasPrefix(line, "I OK") {
			break
		}
		if strings.HasPrefix(line, "I ") || strings.HasPrefix(line, "* BYE") {
			return nil, "", fmt.Errorf("cell ID answer: %q", strings.TrimSpace(line))
		}
	}
	expectCont := func() error {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+") {
			if strings.HasPrefix(line, "L ") {
				return &loginFailure{line: strings.TrimSpace(line[2:])}
			}
			return fmt.Errorf("cell: expected a continuation, got %q", strings.TrimSpace(line))
		}
		return nil
	}
	if _, err := fmt.Fprintf(c, "L LOGIN {%d}\r\n", len(user)); err != nil {
		return nil, "", err
	}
	if err := expectCont(); err != nil {
		return nil, "", err
	}
	if _, err := fmt.Fprintf(c, "%s {%d}\r\n", user, len(pass)); err != nil {
		return nil, "", err
	}
	if err := expectCont(); err != nil {
		return nil, "", err
	}
	if _, err := io.WriteString(c, pass+"\r\n"); err != nil {
		return nil, "", err
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, "", fmt.Errorf("cell login answer: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "L OK"):
			_ = c.SetDeadline(time.Time{})
			ok = true
			return &cellConn{c: c, br: br}, line[2:], nil
		case strings.HasPrefix(line, "L NO"), strings.HasPrefix(line, "L BAD"):
			return nil, "", &loginFailure{line: line[2:]}
		case strings.HasPrefix(line, "* BYE"):
			return nil, "", fmt.Errorf("cell: %s", line)
		}
	}
}

// splice copies both ways until either side closes; bytes the client sent
// after LOGIN (pipelined) go first.
func (cn *conn) splice(cell *cellConn) {
	_ = cn.c.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(cell.c, cn.br)
		closeWrite(cell.c)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(cn.c, cell.br)
		closeWrite(cn.c)
		done <- struct{}{}
	}()
	<-done
	// One side ended: give the other a moment to drain, then close both.
	t := time.NewTimer(5 * time.Second)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	_ = cell.c.Close()
	_ = cn.c.Close()
}

func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case *net.TCPConn:
		_ = c.CloseWrite()
	case *tls.Conn:
		_ = c.CloseWrite()
	default:
		_ = c.Close()
	}
}
