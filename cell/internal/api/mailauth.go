package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"

	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/controlplane/placement"
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
	epoch, _ := strconv.ParseUint(h.Get(HeaderMapEpoch), 10, 64)
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
	c, err := m.session(ctx, bearer(h), epoch, kind)
	if err != nil {
		return ctx, err
	}
	return context.WithValue(ctx, callerKey{}, c), nil
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
