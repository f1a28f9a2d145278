package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

type callerKey struct{}

// caller is who a mail call acts for.
type caller struct {
	account mail.Account
	route   placement.Route
	family  string
}

func callerOf(ctx context.Context) (caller, error) {
	c, ok := ctx.Value(callerKey{}).(caller)
	if !ok {
		return c, mail.ErrUnauthorized
	}
	return c, nil
}

func bearer(h http.Header) string {
	tok, _ := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return strings.TrimSpace(tok)
}

// authenticate runs the fence for the call's subject and, for calls made
// with a session token, checks the token: its kind, its expiry, and that it
// belongs to the account the subject names.
func (m *MailServer) authenticate(ctx context.Context, procedure string, h http.Header, msg any) (context.Context, error) {
	epoch := routing.EpochOf(h)
	switch procedure {
	case mailv1connect.MailServiceCreateAccountProcedure, mailv1connect.MailServiceLoginProcedure:
		sub, ok := msg.(subjectOf)
		if !ok {
			return ctx, fmt.Errorf("%w: no address", mail.ErrInvalid)
		}
		if procedure == mailv1connect.MailServiceCreateAccountProcedure {
			if subtle.ConstantTimeCompare([]byte(bearer(h)), []byte(m.operatorToken)) != 1 || m.operatorToken == "" {
				return ctx, fmt.Errorf("%w: creating accounts needs the operator token", mail.ErrUnauthorized)
			}
		}
		rt, err := m.fence.Check(ctx, sub.GetAddress(), epoch)
		if err != nil {
			return ctx, err
		}
		return context.WithValue(ctx, routeKey{}, rt), nil
	}
	kind := mailstore.SessionAccess
	if procedure == mailv1connect.MailServiceRefreshSessionProcedure {
		kind = mailstore.SessionRefresh
	}
	if a, _ := ctx.Value(admittedKey{}).(*admission); a != nil && a.ok && kind == mailstore.SessionAccess &&
		a.token == bearer(h) && a.epoch == epoch {
		// LimitBody checked this token to admit the body: not again.
		return context.WithValue(ctx, callerKey{}, a.caller), nil
	}
	c, err := m.session(ctx, bearer(h), epoch, kind)
	if err != nil {
		return ctx, err
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

// admittedKey carries an *admission from LimitBody to authenticate.
type admittedKey struct{}

// admission is the caller whose access token (with the map epoch) LimitBody
// checked to let a large body through, so that authenticate does not look
// the session up a second time for the same call.
type admission struct {
	token  string
	epoch  uint64
	caller caller
	ok     bool
}

// session checks a session token: fence first (a token of a user another
// cell owns is answered WRONG_CELL, never looked up here), then the stored
// hash, then that the account is the token's subject.
func (m *MailServer) session(ctx context.Context, token string, epoch uint64, kind int16) (caller, error) {
	subject, ok := auth.Subject(token)
	if !ok {
		return caller{}, fmt.Errorf("%w: missing or malformed token", mail.ErrUnauthorized)
	}
	rt, err := m.fence.Check(ctx, subject, epoch)
	if err != nil {
		if errors.Is(err, mail.ErrInvalid) || errors.Is(err, mail.ErrNotFound) {
			return caller{}, fmt.Errorf("%w: bad token", mail.ErrUnauthorized)
		}
		return caller{}, err
	}
	sess, err := m.store.SessionByHash(ctx, auth.Hash(token))
	if err != nil {
		if errors.Is(err, mail.ErrUnauthorized) {
			return caller{}, fmt.Errorf("%w: token expired or revoked", mail.ErrUnauthorized)
		}
		return caller{}, err
	}
	if sess.Kind != kind {
		return caller{}, fmt.Errorf("%w: wrong kind of token", mail.ErrUnauthorized)
	}
	acct, err := m.store.AccountByID(ctx, sess.AccountID)
	if err != nil {
		return caller{}, fmt.Errorf("%w: account gone", mail.ErrUnauthorized)
	}
	if acct.Address != rt.Address.String() {
		return caller{}, fmt.Errorf("%w: token subject mismatch", mail.ErrUnauthorized)
	}
	return caller{account: acct, route: rt, family: sess.Family}, nil
}

// MailInterceptor authenticates every MailService call and translates its
// errors.
func (m *MailServer) MailInterceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			ctx, err := m.authenticate(ctx, req.Spec().Procedure, req.Header(), req.Any())
			if err != nil {
				return nil, m.srv.toConnect(req.Spec().Procedure, err)
			}
			resp, err := next(ctx, req)
			return resp, m.srv.toConnect(req.Spec().Procedure, err)
		}
	}
}

// PreLoginBodyBytes bounds the body of a call made without a valid session
// (Login, CreateAccount, RefreshSession, a call with a bad token) or agent
// token: such calls are small, and nobody may make the cell hold large
// bodies before logging in. The router applies the same bound.
const PreLoginBodyBytes = 64 << 10

// LimitBody bounds the request bodies of next (a MailService or
// DeliveryService handler) while they are read, before Connect buffers
// them: PreLoginBodyBytes, and MaxRequestBytes for a call whose bearer
// token is a live access token of an account this cell owns (checked once
// the body turns out larger, or at once when Content-Length says so) or,
// with agent set, the control plane's agent token. Past the bound: no
// token, resource_exhausted; a session token that is no longer live,
// unauthenticated (the client refreshes it); a token the fence turns away,
// its answer (WRONG_CELL, MOVING, unavailable), which the router acts on.
// A compressed body could expand to MaxRequestBytes: it needs the token
// checked first, whatever its size, and is refused invalid_argument
// without one.
func (m *MailServer) LimitBody(next http.Handler, agentToken string) http.Handler {
	errw := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r.Header)
		_, session := auth.Subject(tok)
		compressed := false
		for _, h := range []string{"Content-Encoding", "Connect-Content-Encoding", "Grpc-Encoding"} {
			if v := r.Header.Get(h); v != "" && v != "identity" {
				compressed = true
			}
		}
		// refusal is the answer to a body past the bound, from why the
		// token did not admit more.
		refusal := func(err error) error {
			switch {
			case errors.Is(err, mail.ErrUnauthorized) && session:
				return m.srv.toConnect(r.URL.Path, err)
			case errors.Is(err, mail.ErrUnauthorized) && compressed:
				return connect.NewError(connect.CodeInvalidArgument, errors.New(
					"compressed requests need a session: send calls made before login uncompressed"))
			case errors.Is(err, mail.ErrUnauthorized):
				return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
					"request body over %d bytes: calls made before login are limited to that", PreLoginBodyBytes))
			}
			return m.srv.toConnect(r.URL.Path, err)
		}
		epoch := routing.EpochOf(r.Header) // as authenticate reads it
		adm := &admission{token: tok, epoch: epoch}
		r = r.WithContext(context.WithValue(r.Context(), admittedKey{}, adm))
		g := &gatedBody{r: r.Body, left: PreLoginBodyBytes, more: MaxRequestBytes - PreLoginBodyBytes, refusal: refusal,
			admit: func() error {
				if agentToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(agentToken)) == 1 {
					return nil
				}
				c, err := m.session(r.Context(), tok, epoch, mailstore.SessionAccess)
				if err == nil {
					adm.caller, adm.ok = c, true
				}
				return err
			}}
		if r.ContentLength > PreLoginBodyBytes || compressed {
			if err := g.open(); err != nil {
				_ = errw.Write(w, r, refusal(err))
				return
			}
		}
		r.Body = g
		next.ServeHTTP(w, r)
	})
}

// gatedBody reads left bytes, then asks admit once whether more may
// follow; past what it allows it fails with refusal's error (a Connect
// error, which Connect answers as it is).
type gatedBody struct {
	r       io.ReadCloser
	left    int64
	more    int64
	admit   func() error
	refusal func(error) error
	asked   bool
	admErr  error
}

// open asks admit (once) and, when it allows, raises the bound.
func (g *gatedBody) open() error {
	if !g.asked {
		g.asked = true
		if g.admErr = g.admit(); g.admErr == nil {
			g.left += g.more
		}
	}
	return g.admErr
}

func (g *gatedBody) Read(p []byte) (int, error) {
	if g.left <= 0 && !g.asked {
		_ = g.open()
	}
	if g.left <= 0 {
		// One byte more tells a body at the bound from one over it.
		var one [1]byte
		if n, err := g.r.Read(one[:]); n == 0 {
			return 0, err
		}
		if g.admErr != nil {
			return 0, g.refusal(g.admErr)
		}
		return 0, &http.MaxBytesError{Limit: MaxRequestBytes}
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= int64(n)
	return n, err
}

func (g *gatedBody) Close() error { return g.r.Close() }
