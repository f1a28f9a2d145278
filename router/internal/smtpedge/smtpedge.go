// Package smtpedge is the router's SMTP server, the MX of every hosted
// domain. Implementation notes:
//
//   - RCPT (RFC 5321 §4.1.1.3): the address is canonicalised and its owning
//     cell found; a domain we do not host is refused (550 5.7.1): the edge
//     is never an open relay (source routes, percent hack, bang paths and
//     address literals are refused by the address parser). The recipient is
//     checked at its cell over LMTP (RFC 2033), which answers 550 5.1.1 for
//     an unknown user. The routing contract (controlplane/routing) runs
//     each RCPT: the edge's map epoch goes with it (the XCELLMAIL-EPOCH
//     parameter, when the cell advertises it in LHLO), a cell's
//     [CELLMAIL-WRONG-CELL] reply makes the edge refresh the subject and
//     try the owner (two cells at most), a [CELLMAIL-MOVING] one holds the
//     RCPT for a few seconds; past that the sender gets 451 4.4.0.
//   - DATA: the message is sent to every involved cell; the sender gets 250
//     only when every cell accepted every recipient (each cell commits to
//     its spool before answering), else 451 4.3.0. Cells recognise the
//     sender's retry by envelope and body hash and do not store it twice.
//   - Postmaster (RFC 5321 §4.5.1): RCPT TO:<postmaster> (no domain) goes to
//     Config.Postmaster, the operator's mailbox; postmaster@ a hosted domain
//     goes to that domain's own postmaster account when it has one, else
//     to Config.Postmaster too, so every hosted domain has a postmaster
//     without an account of its own.
//   - Limits: SIZE (552 5.3.4), 100 recipients (452 4.5.3), 998-octet
//     lines (554 5.6.0, answered once after the end of the data; the
//     session goes on); a bare CR or LF, a NUL, or an empty message refuses
//     the message (554 5.6.0, package internal/wire).
//   - Trace (RFC 5321 §4.4): one Received field is prepended to the DATA the
//     cells get, naming the client's HELO and IP address and whether TLS was
//     used (RFC 3848 ESMTPS); the cell's pipeline reads it for SPF and leaves
//     it out of the delivery key (package internal/trace).
//   - STARTTLS (RFC 3207) when a certificate is configured; it is optional
//     for MX traffic, as senders expect.
//   - The session's context is made in NewSession and cancelled on Logout.
package smtpedge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
	"github.com/cellmail/cellmail/internal/trace"
	"github.com/cellmail/cellmail/internal/wire"
)

// Router runs a call at the owning cell of an address (routing.Routes).
type Router interface {
	Do(ctx context.Context, address string, call func(ctx context.Context, tgt routing.Target) error) error
}

// Config tunes the edge.
type Config struct {
	Domain string
	// Postmaster is the mailbox (an account of a hosted domain) that gets
	// mail for the reserved name postmaster (RFC 5321 §4.5.1): to
	// <postmaster> with no domain, and to postmaster@ a hosted domain that
	// has no such account. Default postmaster@Domain.
	Postmaster      string
	MaxMessageBytes int64
	MaxRecipients   int
	// TLS, when set, offers STARTTLS.
	TLS    *tls.Config
	Logger *slog.Logger
}

// Edge is the SMTP server.
type Edge struct {
	routes Router
	cfg    Config
	srv    *smtp.Server
	pool   lmtpPool
}

// New makes the edge.
func New(routes Router, cfg Config) *Edge {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 50 << 20
	}
	if cfg.MaxRecipients == 0 {
		cfg.MaxRecipients = 100
	}
	if cfg.Domain == "" {
		cfg.Domain = "mx.cellmail.local"
	}
	if cfg.Postmaster == "" {
		cfg.Postmaster = "postmaster@" + cfg.Domain
	}
	e := &Edge{routes: routes, cfg: cfg}
	srv := smtp.NewServer(e)
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = logAdapter{cfg.Logger}
	srv.TLSConfig = cfg.TLS
	e.srv = srv
	return e
}

type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Printf(format string, v ...any) { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a logAdapter) Println(v ...any)               { a.l.Warn(fmt.Sprint(v...)) }

// Serve accepts connections until Close.
func (e *Edge) Serve(ln net.Listener) error { return e.srv.Serve(ln) }

// Close stops the server.
func (e *Edge) Close() error {
	err := e.srv.Close()
	e.pool.closeAll()
	return err
}

// NewSession implements smtp.Backend.
func (e *Edge) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{e: e, conn: c, ctx: ctx, cancel: cancel, cells: map[string]*cellConn{},
		log: e.cfg.Logger.With("remote", c.Conn().RemoteAddr().String())}, nil
}

type cellConn struct {
	name, addr string
	c          *smtp.Client
	rcpts      int
	// done: the LMTP transaction ended with the DATA's replies, so the
	// connection is ready for the next MAIL.
	done bool
	// broken: an I/O error or a reply we do not follow; not reused.
	broken bool
}

type session struct {
	e      *Edge
	conn   *smtp.Conn
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	from   string
	cells  map[string]*cellConn
	rcpts  int
}

func (s *session) Reset() {
	for _, cc := range s.cells {
		s.e.pool.put(cc)
	}
	s.cells, s.from, s.rcpts = map[string]*cellConn{}, "", 0
}

func (s *session) Logout() error {
	s.Reset()
	s.cancel()
	return nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if len(from) > placement.MaxPathOctets || strings.ContainsAny(from, " \t\r\n") || (from != "" && !strings.Contains(from, "@")) {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.EqualFold(to, "postmaster") { // RFC 5321 §4.1.1.3 "<Postmaster>"
		to = s.e.cfg.Postmaster
	}
	a, err := placement.ParseAddress(to)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	}
	err = s.rcpt(a)
	var se *smtp.SMTPError
	if a.Local == "postmaster" && errors.As(err, &se) && se.EnhancedCode == (smtp.EnhancedCode{5, 1, 1}) {
		// A hosted domain with no postmaster account of its own: the
		// operator's postmaster takes its mail (RFC 5321 §4.5.1).
		if pm, perr := placement.ParseAddress(s.e.cfg.Postmaster); perr == nil && pm != a {
			err = s.rcpt(pm)
		}
	}
	return err
}

// rcpt adds a recipient at its owning cell, through the routing contract.
func (s *session) rcpt(a placement.Address) error {
	err := s.e.routes.Do(s.ctx, a.String(), func(_ context.Context, tgt routing.Target) error {
		err := s.rcptAt(tgt, a.String())
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			if rerr := routing.ParseResponseCode(se.Message); rerr != nil {
				return rerr // WRONG_CELL or MOVING: for Do, not for the sender
			}
		}
		return err
	})
	var se *smtp.SMTPError
	switch {
	case err == nil:
		s.rcpts++
		return nil
	case errors.As(err, &se):
		return se // the cell's own reply
	case errors.Is(err, placement.ErrUnknownDomain):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
	case errors.Is(err, routing.ErrWrongCell), errors.Is(err, routing.ErrMoving):
		s.log.Info("recipient's cell not found serving it", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "Mailbox temporarily unavailable, try again"}
	}
	s.log.Warn("cannot route recipient", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "Cannot route now, try again"}
}

// rcptAt adds the recipient at its cell's LMTP session, starting it first
// on a pooled connection to the cell or a new one. The map epoch goes with
// it for the cell's fence.
func (s *session) rcptAt(tgt routing.Target, addr string) error {
	opts := &smtp.RcptOptions{Params: map[string]string{routing.EpochParam: strconv.FormatUint(tgt.Epoch, 10)}}
	cc, ok := s.cells[tgt.Cell.Name]
	var err error
	switch {
	case !ok:
		if tgt.Cell.LMTPAddr == "" {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "Mailbox cell not reachable, try again"}
		}
		if cc, err = s.startAt(tgt.Cell.Name, tgt.Cell.LMTPAddr, addr, opts); cc == nil {
			return err
		}
		s.cells[tgt.Cell.Name] = cc
	case cc.broken:
		// Its replies may be out of step with its commands (a timed-out
		// command's reply still unread): send nothing more on it.
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Mailbox cell failed, try again"}
	default:
		err = cc.c.Rcpt(addr, opts)
	}
	if err != nil {
		var se *smtp.SMTPError
		cc.broken = !errors.As(err, &se)
		return cellErr(err)
	}
	cc.rcpts++
	return nil
}

// startAt starts the transaction at the cell with its first recipient,
// MAIL and RCPT in one round trip, on a pooled connection to the cell or
// on a new one when there is none or the pooled one turns out closed (the
// cell restarted, or timed it out): nothing has been accepted on it yet,
// so trying again is safe. With the transaction started it returns the
// connection and RCPT's error; else no connection.
func (s *session) startAt(name, addr, rcpt string, ropts *smtp.RcptOptions) (*cellConn, error) {
	for {
		c := s.e.pool.get(addr)
		pooled := c != nil
		if !pooled {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				s.log.Warn("cell LMTP unreachable", "cell", name, "err", err)
				return nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Mailbox cell not reachable, try again"}
			}
			c = smtp.NewClientLMTP(conn)
			c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 2*time.Minute
			if err := c.Hello(s.e.cfg.Domain); err != nil {
				c.Close()
				return nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Mailbox cell failed, try again"}
			}
		}
		mailErr, rcptErr := c.MailRcpt(s.from, nil, rcpt, ropts)
		if mailErr == nil {
			return &cellConn{name: name, addr: addr, c: c}, rcptErr
		}
		c.Close()
		if pooled && closedConn(mailErr) {
			continue
		}
		return nil, cellErr(mailErr)
	}
}

// closedConn tells whether err is the network's: a pooled connection the
// cell closed (or reset) while it sat idle.
func closedConn(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}

// lmtpPool keeps idle LMTP connections to cells for the next transaction:
// a message then costs its MAIL, RCPT and DATA round trips, not a connect,
// an LHLO and a QUIT as well.
type lmtpPool struct {
	mu     sync.Mutex
	idle   map[string][]idleConn // by LMTP address
	closed bool                  // the edge is closed: keep nothing
}

type idleConn struct {
	c     *smtp.Client
	since time.Time
}

// Bounds of the pool: connections kept per cell, and how long one may sit
// idle (well under the cells' 5-minute read timeout).
const (
	maxIdlePerCell = 64
	maxIdleTime    = 30 * time.Second
)

// get takes the most recently used idle connection to addr, closing those
// idle too long; nil when there is none.
func (p *lmtpPool) get(addr string) *smtp.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[addr]
	if len(list) == 0 {
		return nil
	}
	for len(list) > 0 {
		ic := list[len(list)-1]
		list = list[:len(list)-1]
		if time.Since(ic.since) < maxIdleTime {
			p.idle[addr] = list
			return ic.c
		}
		ic.c.Close()
	}
	p.idle[addr] = list
	return nil
}

// put gives a session's connection back when its transaction is over (or
// can be ended with RSET), else closes it.
func (p *lmtpPool) put(cc *cellConn) {
	if !cc.broken && !cc.done && cc.c.Reset() != nil {
		cc.broken = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc.broken || p.closed || len(p.idle[cc.addr]) >= maxIdlePerCell {
		cc.c.Close()
		return
	}
	if p.idle == nil {
		p.idle = map[string][]idleConn{}
	}
	p.idle[cc.addr] = append(p.idle[cc.addr], idleConn{c: cc.c, since: time.Now()})
}

func (p *lmtpPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.idle {
		for _, ic := range list {
			ic.c.Close()
		}
	}
	p.idle, p.closed = nil, true
}

// cellErr passes a cell's SMTP reply through; anything else is temporary.
func cellErr(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Mailbox cell failed, try again"}
}

// Data streams the message to every involved cell and answers 250 only when
// all of them accepted every recipient.
func (s *session) Data(r io.Reader) error {
	body, err := wire.ReadAll(r)
	if err != nil {
		return err // go-smtp's own limit errors (552 5.3.4) pass through
	}
	if rerr := wire.Check(body); rerr != nil {
		return rerr
	}
	if rerr := wire.CheckLines(body); rerr != nil { // a BDAT chunk's lines (DATA's are limited as read)
		return rerr
	}
	raw := append([]byte(s.traceField()), body...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var refusals []*smtp.SMTPError // permanent refusals of the message itself
	accepted := false
	for _, cc := range s.cells {
		if cc.rcpts == 0 {
			continue
		}
		if cc.broken {
			failures = append(failures, cc.name+": connection out of step")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sendData(cc.c, raw); err != nil {
				cc.broken = true
				mu.Lock()
				failures = append(failures, cc.name+": "+err.Error())
				if se := permanentRefusal(err); se != nil {
					refusals = append(refusals, se)
				}
				mu.Unlock()
				return
			}
			mu.Lock()
			accepted = true
			mu.Unlock()
			cc.done = true
		}()
	}
	wg.Wait()
	if len(failures) > 0 && !accepted && len(refusals) == len(failures) {
		// Every cell refused the message itself for good (a 5xx for each
		// of its recipients, e.g. 554 5.6.0 over the MIME limits): the
		// sender gets that, not a retry that would fail the same way.
		s.log.Info("the cells refused the message", "failures", failures)
		return refusals[0]
	}
	if len(failures) > 0 {
		s.log.Warn("a cell did not accept the message; the sender will retry", "failures", failures)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Not all recipients could be stored, try again"}
	}
	if s.rcpts == 0 {
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	return nil
}

// permanentRefusal is the 5xx reply a cell gave the whole message (every
// recipient's, for LMTP), or nil when any part of err is not one.
func permanentRefusal(err error) *smtp.SMTPError {
	var lmtpErr smtp.LMTPDataError
	if errors.As(err, &lmtpErr) {
		var first *smtp.SMTPError
		for _, rcpt := range slices.Sorted(maps.Keys(lmtpErr)) {
			se := lmtpErr[rcpt]
			if se == nil || se.Code < 500 {
				return nil
			}
			if first == nil {
				first = se
			}
		}
		return first
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 {
		return se
	}
	return nil
}

// traceField is the Received field for this transaction.
func (s *session) traceField() string {
	in := trace.Info{Helo: s.conn.Hostname(), By: s.e.cfg.Domain, Protocol: "ESMTP", Time: time.Now()}
	if ap, err := netip.ParseAddrPort(s.conn.Conn().RemoteAddr().String()); err == nil {
		in.IP = ap.Addr()
	} else {
		in.IP = netip.IPv4Unspecified()
	}
	if _, ok := s.conn.TLSConnectionState(); ok {
		in.Protocol = "ESMTPS"
	}
	in.ID = rand.Text()[:16]
	return trace.Field(in)
}

// sendData sends the message to a cell: as one BDAT LAST chunk when the
// cell offers CHUNKING (one write, no 354 round trip, no dot-stuffing),
// else with DATA.
func sendData(c *smtp.Client, raw []byte) error {
	if ok, _ := c.Extension("CHUNKING"); ok {
		_, err := c.BdatLast(raw)
		return err
	}
	dc, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.Copy(dc, bytes.NewReader(raw)); err != nil {
		return err
	}
	_, err = dc.CloseWithLMTPResponse()
	return err
}
