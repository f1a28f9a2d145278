// Package smtpd is the cell's LMTP endpoint (RFC 2033), where the router's
// SMTP edge hands over inbound mail. Implementation notes:
//
//   - RCPT (RFC 5321 §4.1.1.3) runs the fence and checks the account: a
//     subject another cell owns answers 451 (the router will re-route the
//     retry), an unknown user 550 5.1.1.
//   - DATA (RFC 2033 §4.2): the message is accepted by the cell's one
//     acceptance path (delivery.Acceptor: one spool row per recipient,
//     group committed, the message in the rows or in an fsync'd blob)
//     before any per-recipient 250: nothing acknowledged is lost. The
//     spool's delivery key (envelope and body hash, leaving out the edge's
//     trace field, which differs on every retry) makes a retried delivery
//     a no-op.
//   - Line endings: go-smtp reads DATA as dot-stuffed CRLF lines ending at
//     <CRLF>.<CRLF>; a message with a bare CR or LF, a NUL, or nothing
//     after the edge's trace field is refused (554 5.6.0), the same rule
//     as at the edge (package internal/wire). A BDAT chunk cut short
//     reaches LMTPData as a read error (io.ErrUnexpectedEOF), so nothing
//     is spooled that was not acknowledged.
//   - The session's context is made in NewSession and cancelled on Logout;
//     errors become SMTP replies in one place (reply).
package smtpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/internal/oneline"
	"github.com/cellmail/cellmail/internal/trace"
	"github.com/cellmail/cellmail/internal/wire"
)

// Acceptor is the cell's one acceptance path (delivery.Acceptor): the
// fence and account lookup of a recipient, and the durable, group
// committed spooling of a message.
type Acceptor interface {
	Recipient(ctx context.Context, address string, epoch uint64) (delivery.Recipient, error)
	Accept(ctx context.Context, from string, rcpts []delivery.Recipient, raw []byte) error
}

// Config wires the LMTP server.
type Config struct {
	Accept          Acceptor
	Domain          string
	MaxMessageBytes int64
	MaxRecipients   int
	// Limits are the MIME limits accepted mail must keep (zero:
	// message.DefaultLimits, the store's).
	Limits message.Limits
	Logger *slog.Logger
}

// Server is the LMTP server of a cell.
type Server struct {
	cfg Config
	srv *smtp.Server
}

// New makes the server.
func New(cfg Config) *Server {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 50<<20 + 64<<10 // the edge's limit and its trace field
	}
	if cfg.MaxRecipients == 0 {
		cfg.MaxRecipients = 1000
	}
	s := &Server{cfg: cfg}
	srv := smtp.NewServer(s)
	srv.LMTP = true
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = 1000 // RFC 5321 §4.5.3.1.6: 998 octets + CRLF
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.RcptParams = rcptParams // the caller's map epoch, for the fence
	srv.ErrorLog = slogAdapter{cfg.Logger}
	s.srv = srv
	return s
}

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.l.Warn(fmt.Sprint(v...)) }

// NewSession implements smtp.Backend.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{s: s, ctx: ctx, cancel: cancel, log: s.cfg.Logger.With("remote", c.Conn().RemoteAddr().String())}, nil
}

type session struct {
	s      *Server
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	from   string
	rcpts  []delivery.Recipient
	to     []string // each recipient as the client named it (per-recipient status)
}

var _ smtp.LMTPSession = (*session)(nil)

func (se *session) Reset()        { se.from, se.rcpts, se.to = "", nil, nil }
func (se *session) Logout() error { se.cancel(); return nil }

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	se.from = from
	return nil
}

// Rcpt runs the fence at the caller's map epoch (rcptEpoch) and checks the
// account. The fence's routing answers are replies with the routing
// contract's code (reply), which the router's edge reads to re-route or
// wait.
func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	epoch, err := rcptEpoch(opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(se.ctx, 10*time.Second)
	defer cancel()
	rc, err := se.s.cfg.Accept.Recipient(ctx, to, epoch)
	if err != nil {
		return reply(err)
	}
	se.rcpts = append(se.rcpts, rc)
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	return errors.New("LMTP needs LMTPData")
}

// LMTPData stores the message once, spools every recipient in one
// transaction, then answers 250 for each.
func (se *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	raw, err := wire.ReadAll(r)
	if err != nil {
		return reply(err)
	}
	if rerr := wire.Check(raw); rerr != nil {
		return rerr // the edge's rule, applied again: nothing reaches the spool that breaks it
	}
	// The edge's trace field differs on each of the sender's retries; the
	// key is over the message as the sender sent it.
	_, sent, _ := trace.Split(raw)
	if len(sent) == 0 {
		return wire.Check(sent) // the edge's trace field alone: an empty message
	}
	if rerr := wire.CheckLines(raw); rerr != nil { // the edge sends BDAT: lines are not limited as read
		return rerr
	}
	// The MIME limits the store reads messages with, before the 250: a
	// message they refuse would be stored and then unreadable. A walk of
	// the structure only, no body decoded (RFC 3463 §3.7: 5.6.0 other
	// media error).
	if err := message.CheckLimits(bytes.NewReader(raw), se.s.cfg.Limits); err != nil {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: oneline.ASCII(err.Error(), 200)}
	}
	ctx, cancel := context.WithTimeout(se.ctx, time.Minute)
	defer cancel()
	// A recipient whose quota the message would overrun gets its own 452
	// (RFC 2033 §4.2: one reply per recipient); the others are accepted.
	var fit []delivery.Recipient
	for i, rc := range se.rcpts {
		if rc.Fits(len(raw)) {
			fit = append(fit, rc)
		} else {
			status.SetStatus(se.to[i], reply(fmt.Errorf("%w: %s", mail.ErrOverQuota, rc.Address)))
		}
	}
	if len(fit) == 0 {
		return nil // every recipient has its status
	}
	if err := se.s.cfg.Accept.Accept(ctx, se.from, fit, raw); err != nil {
		se.log.Warn("message not accepted", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary storage failure, try again"}
	}
	return nil // 250 for every recipient: all committed together
}

// reply turns a domain error into an SMTP reply (RFC 3463 enhanced codes);
// the fence's routing answers carry the routing contract's response code.
func reply(err error) error {
	var wrong *mail.WrongCellError
	var moving *mail.MovingError
	var smtpErr *smtp.SMTPError
	switch {
	case errors.As(err, &smtpErr):
		return smtpErr
	case errors.As(err, &wrong):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "[" + wrong.ResponseCode() + "] Mailbox is served by another cell, try again"}
	case errors.As(err, &moving): // X.2.1: the mailbox is not accepting messages for now
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "[" + moving.ResponseCode() + "] Mailbox is moving, try again shortly"}
	case errors.Is(err, mail.ErrStaleMap), errors.Is(err, mail.ErrUnavailable):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "Mailbox temporarily unavailable, try again"}
	case errors.Is(err, mail.ErrNotFound) && strings.Contains(err.Error(), "domain"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 2}, Message: "Domain not hosted here"}
	case errors.Is(err, mail.ErrNotFound):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	case errors.Is(err, mail.ErrInvalid):
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	case errors.Is(err, mail.ErrOverQuota): // RFC 5321 452, RFC 3463 X.2.2 mailbox full: the sender retries
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full, try again later"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, try again"}
}
