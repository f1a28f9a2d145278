// Package submission is the router's message submission service (RFC
// 6409) for mail clients: port 587 with STARTTLS (RFC 3207) required before
// AUTH, and port 465 with implicit TLS (RFC 8314 §3.3). Implementation
// notes:
//
//   - AUTH PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login): the
//     username is the user's address; the router logs in at its owning
//     cell through the routing contract (controlplane/routing: the map
//     epoch on every call, WRONG_CELL re-routed, MOVING waited out),
//     naming the client in X-Forwarded-For (set, never forwarded); the
//     cell checks the password under its login limits
//     (runbooks/login-limits.md). The session then holds that cell's
//     access token and the epoch it was routed by. A failure answers 535 5.7.8, the same for an unknown user and a
//     wrong password; a login the limits refuse 454 4.7.0.
//   - MAIL FROM must be the authenticated user's own address (553 5.7.1);
//     the cell checks it again.
//   - The header's From and Sender must name that address too (553 5.7.1,
//     checked by the cell: it DKIM-signs what it sends); a message without
//     From, Date or Message-ID gets them from the cell (RFC 6409 §8).
//   - RCPT accepts any syntactically valid address (relaying is what an
//     authenticated submission is for); at most 100. <postmaster> with no
//     domain (RFC 5321 §4.1.1.3, §4.5.1) is Config.Postmaster, as at the
//     MX edge.
//   - DATA: bare CR or LF are made CRLF (RFC 6409 §8 fix-ups), a NUL is
//     refused (package internal/wire); then the message goes to the cell's SubmitMessage: a copy in Sent, our
//     own recipients delivered to their cells, remote ones queued; 250 only
//     after that is durable. The cell's sending limits answer 451 4.7.1.
package submission

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
	"github.com/cellmail/cellmail/internal/oneline"
	"github.com/cellmail/cellmail/internal/wire"
)

// Router runs a call at the owning cell of an address (routing.Routes).
type Router interface {
	Do(ctx context.Context, address string, call func(ctx context.Context, tgt routing.Target) error) error
}

// Config tunes the service.
type Config struct {
	Domain string
	// Postmaster is where RCPT TO:<postmaster> goes (default
	// postmaster@Domain), as on the MX edge.
	Postmaster      string
	TLS             *tls.Config // required: AUTH only over TLS
	MaxMessageBytes int64
	HTTP            *http.Client // to the cells' APIs (HTTP/2)
	Logger          *slog.Logger
}

// Server is the submission service.
type Server struct {
	routes Router
	cfg    Config
	srv    *smtp.Server
}

// New makes the service.
func New(routes Router, cfg Config) *Server {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 35 << 20
	}
	if cfg.Domain == "" {
		cfg.Domain = "submit.cellmail.local"
	}
	if cfg.Postmaster == "" {
		cfg.Postmaster = "postmaster@" + cfg.Domain
	}
	s := &Server{routes: routes, cfg: cfg}
	srv := smtp.NewServer(s)
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = 100
	srv.MaxLineLength = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = cfg.TLS
	srv.AllowInsecureAuth = false
	srv.ErrorLog = logAdapter{cfg.Logger}
	s.srv = srv
	return s
}

type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Printf(format string, v ...any) { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a logAdapter) Println(v ...any)               { a.l.Warn(fmt.Sprint(v...)) }

// Serve serves port 587 style (STARTTLS) on ln.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// ServeTLS serves port 465 style (implicit TLS) on ln.
func (s *Server) ServeTLS(ln net.Listener) error { return s.srv.Serve(tls.NewListener(ln, s.cfg.TLS)) }

// Close stops the service.
func (s *Server) Close() error { return s.srv.Close() }

// NewSession implements smtp.Backend.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{s: s, ctx: ctx, cancel: cancel, remote: c.Conn().RemoteAddr().String()}, nil
}

type session struct {
	s      *Server
	ctx    context.Context
	cancel context.CancelFunc
	remote string
	user   string // canonical address, once authenticated
	token  string
	client mailv1connect.MailServiceClient
	epoch  uint64 // of the map the login was routed by, sent on later calls
	from   string
	rcpts  []string
}

var _ smtp.AuthSession = (*session)(nil)

func (se *session) Reset() { se.from, se.rcpts = "", nil }

// Logout ends the SMTP session and the cell session its login opened.
func (se *session) Logout() error {
	se.cancel()
	if se.token != "" && se.client != nil {
		c, token, epoch := se.client, se.token, se.epoch
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req := connect.NewRequest(&mailv1.LogoutRequest{})
			req.Header().Set("Authorization", "Bearer "+token)
			routing.SetEpoch(req.Header(), epoch)
			_, _ = c.Logout(ctx, req)
		}()
	}
	return nil
}

func (se *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (se *session) Auth(mech string) (sasl.Server, error) {
	if se.user != "" {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Already authenticated"}
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return authFailed
			}
			return se.login(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{check: se.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

var authFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}

// login authenticates at the user's owning cell.
func (se *session) login(username, password string) error {
	a, err := placement.ParseAddress(username)
	if err != nil {
		return authFailed
	}
	ctx, cancel := context.WithTimeout(se.ctx, 30*time.Second)
	defer cancel()
	var resp *connect.Response[mailv1.LoginResponse]
	err = se.s.routes.Do(ctx, a.String(), func(ctx context.Context, tgt routing.Target) error {
		if tgt.Cell.APIURL == "" {
			return fmt.Errorf("%w: %s", routing.ErrNoEndpoint, tgt.Cell.Name)
		}
		c := mailv1connect.NewMailServiceClient(se.s.cfg.HTTP, tgt.Cell.APIURL)
		req := connect.NewRequest(&mailv1.LoginRequest{Address: a.String(), Password: password})
		req.Header().Set("X-Forwarded-For", hostOf(se.remote)) // the cell rate-limits per source
		routing.SetEpoch(req.Header(), tgt.Epoch)
		var err error
		if resp, err = c.Login(ctx, req); err != nil {
			return routing.FromConnect(err)
		}
		se.client, se.epoch = c, tgt.Epoch
		return nil
	})
	switch {
	case err == nil:
		se.user, se.token = a.String(), resp.Msg.AccessToken
		return nil
	case connect.CodeOf(err) == connect.CodeUnauthenticated, connect.CodeOf(err) == connect.CodeNotFound,
		errors.Is(err, placement.ErrUnknownDomain):
		return authFailed
	case connect.CodeOf(err) == connect.CodeResourceExhausted:
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many login attempts, try later"}
	}
	se.s.cfg.Logger.Warn("submission login failed at the cell", "err", err)
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	if se.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	a, err := placement.ParseAddress(from)
	if err != nil || a.String() != se.user {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: fmt.Sprintf("Not allowed to send as <%s>", from)}
	}
	se.from = a.String()
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if se.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if strings.EqualFold(to, "postmaster") {
		to = se.s.cfg.Postmaster
	}
	a, err := placement.ParseAddress(to)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	}
	se.rcpts = append(se.rcpts, a.String())
	return nil
}

func (se *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	// A client's bare CR or LF is repaired (RFC 6409 §8); a NUL refused.
	raw = wire.Normalize(raw)
	if werr := wire.CheckLines(raw); werr != nil { // a BDAT chunk's lines (DATA's are limited as read)
		return werr
	}
	if werr := wire.Check(raw); werr != nil {
		return werr
	}
	ctx, cancel := context.WithTimeout(se.ctx, 2*time.Minute)
	defer cancel()
	req := connect.NewRequest(&mailv1.SubmitMessageRequest{MailFrom: se.from, Recipients: se.rcpts, Raw: raw})
	req.Header().Set("Authorization", "Bearer "+se.token)
	routing.SetEpoch(req.Header(), se.epoch)
	resp, err := se.client.SubmitMessage(ctx, req)
	if err != nil {
		var ce *connect.Error
		msg := err.Error()
		if errors.As(err, &ce) {
			msg = ce.Message()
		}
		switch connect.CodeOf(err) {
		case connect.CodePermissionDenied:
			if reasonOf(ce) == reasonMalware {
				// RFC 3463 §3.8: X.7.1 delivery not authorized, message refused.
				return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: oneline.ASCII(msg, 200)}
			}
			// MAIL FROM, or a From/Sender field the user does not own.
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: oneline.ASCII(msg, 200)}
		case connect.CodeResourceExhausted:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: oneline.ASCII(msg, 200)}
		case connect.CodeInvalidArgument:
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: oneline.ASCII(msg, 200)}
		}
		se.s.cfg.Logger.Warn("submission failed at the cell", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, try again"}
	}
	for _, st := range resp.Msg.Recipients {
		if st.Status == "failed" {
			se.s.cfg.Logger.Info("submitted message not delivered to a recipient", "detail", st.Detail)
		}
	}
	return nil
}

// reasonMalware is the cell's ErrorInfo reason for a message refused
// because it carries a virus.
const reasonMalware = "MALWARE"

// reasonOf is the ErrorInfo reason of a cell's error, if it has one.
func reasonOf(ce *connect.Error) string {
	if ce == nil {
		return ""
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok {
				return info.Reason
			}
		}
	}
	return ""
}

// loginServer is the LOGIN SASL mechanism (draft-murchison-sasl-login):
// the server asks "Username:" then "Password:".
type loginServer struct {
	check    func(user, pass string) error
	step     int
	username string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step = 1
		if len(response) > 0 { // initial response: the username
			l.username, l.step = string(response), 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.username, string(response))
	}
	return nil, true, errors.New("unexpected response")
}
