// Package api serves the cell's Connect services: the cell API behind the
// fence and the agent API the control plane calls, with one table that
// turns domain errors into Connect codes and typed details.
package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/ownership"
	cpv1 "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// Headers of the routing contract (controlplane/routing, DESIGN.md §3):
// the caller sends the epoch of the map it routed with; a cell that does
// not serve the subject says why in the answer's headers, so that the
// router need not parse the body.
const (
	HeaderMapEpoch    = routing.HeaderMapEpoch
	HeaderWrongCell   = routing.HeaderWrongCell
	HeaderOwnerEpoch  = routing.HeaderOwnerEpoch
	HeaderRetryAfterM = routing.HeaderRetryAfterMs
)

// Fence is the ownership check the API runs before serving a subject.
type Fence interface {
	Check(ctx context.Context, address string, callerEpoch uint64) (placement.Route, error)
	Cell() string
}

// Counter counts the subjects a cell holds in a scope.
type Counter interface {
	CountPlaced(ctx context.Context, req *cpv1.CountPlacedRequest) (uint64, error)
}

// Server implements the cell's services.
type Server struct {
	fence   Fence
	maps    ownership.Maps
	counter Counter
	log     *slog.Logger
}

var (
	_ cellv1connect.CellServiceHandler              = (*Server)(nil)
	_ controlplanev1connect.CellAgentServiceHandler = (*Server)(nil)
)

// NewServer makes the API server.
func NewServer(fence Fence, maps ownership.Maps, counter Counter, log *slog.Logger) *Server {
	return &Server{fence: fence, maps: maps, counter: counter, log: log}
}

type routeKey struct{}

// subjectOf is implemented by requests that name their subject by address.
type subjectOf interface{ GetAddress() string }

// FenceInterceptor runs the fence on every call whose request names a
// subject, stores the route in the context, and translates errors.
func (s *Server) FenceInterceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if sub, ok := req.Any().(subjectOf); ok {
				rt, err := s.fence.Check(ctx, sub.GetAddress(), routing.EpochOf(req.Header()))
				if err != nil {
					return nil, s.toConnect(req.Spec().Procedure, err)
				}
				ctx = context.WithValue(ctx, routeKey{}, rt)
			}
			resp, err := next(ctx, req)
			return resp, s.toConnect(req.Spec().Procedure, err)
		}
	}
}

// AgentAuthInterceptor admits only the control plane's token.
func AgentAuthInterceptor(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			got, ok := strings.CutPrefix(req.Header().Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("agent token required"))
			}
			return next(ctx, req)
		}
	}
}

// toConnect is the one place domain errors become Connect errors.
func (s *Server) toConnect(procedure string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	var wrong *mail.WrongCellError
	var moving *mail.MovingError
	var limited *auth.LimitError
	var reasoned *reasonError
	switch {
	case errors.As(err, &reasoned):
		e := connect.NewError(connect.CodeOf(s.toConnect(procedure, reasoned.err)), errors.New(reasoned.public))
		if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: reasoned.reason, Domain: ErrorDomain}); derr == nil {
			e.AddDetail(d)
		}
		return e
	case errors.As(err, &limited):
		e := connect.NewError(connect.CodeResourceExhausted, err)
		e.Meta().Set("Retry-After", strconv.FormatInt(limited.RetrySeconds(), 10))
		return e
	case errors.As(err, &wrong):
		e := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("WRONG_CELL: owner %s at epoch %d", wrong.Owner, wrong.Epoch))
		if d, derr := connect.NewErrorDetail(&cellv1.WrongCell{Owner: wrong.Owner, Epoch: wrong.Epoch, OwnerApiUrl: wrong.OwnerAPIURL}); derr == nil {
			e.AddDetail(d)
		}
		wrong.SetHeader(e.Meta())
		return e
	case errors.As(err, &moving):
		e := connect.NewError(connect.CodeUnavailable, fmt.Errorf("MOVING: retry after %s", moving.RetryAfter))
		if d, derr := connect.NewErrorDetail(&cellv1.Moving{RetryAfterMs: uint32(moving.RetryAfter.Milliseconds())}); derr == nil {
			e.AddDetail(d)
		}
		moving.SetHeader(e.Meta())
		return e
	case errors.Is(err, mail.ErrUnauthorized):
		return connect.NewError(connect.CodeUnauthenticated, errors.New(strings.TrimPrefix(err.Error(), mail.ErrUnauthorized.Error()+": ")))
	case errors.Is(err, mail.ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, mail.ErrOverQuota), errors.Is(err, mail.ErrLimit), errors.Is(err, mail.ErrRateLimited):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, mail.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, mail.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, mail.ErrDenied):
		return connect.NewError(connect.CodePermissionDenied, errors.New("permission denied"))
	case errors.Is(err, mail.ErrStaleMap), errors.Is(err, mail.ErrUnavailable):
		// The chain names databases and addresses: logs see it, callers
		// (before login too) see generic text.
		s.log.Warn("call unavailable", "procedure", procedure, "err", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("temporarily unavailable, retry"))
	case errors.Is(err, context.DeadlineExceeded):
		s.log.Warn("call timed out", "procedure", procedure, "err", err)
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("timed out, retry"))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	s.log.Error("call failed", "procedure", procedure, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// ErrorDomain is the ErrorInfo domain of the cell's typed error details.
const ErrorDomain = "mail.cellmail"

// reasonError is a domain error (err, which picks the code) with a
// machine-readable reason for an ErrorInfo detail and a message the caller
// may see (the user's own data, nobody else's).
type reasonError struct {
	err    error
	reason string
	public string
}

func (e *reasonError) Error() string { return e.err.Error() }
func (e *reasonError) Unwrap() error { return e.err }

// WhoAmI answers for an address this cell owns (the fence ran already).
func (s *Server) WhoAmI(ctx context.Context, req *connect.Request[cellv1.WhoAmIRequest]) (*connect.Response[cellv1.WhoAmIResponse], error) {
	rt, ok := ctx.Value(routeKey{}).(placement.Route)
	if !ok {
		return nil, errors.New("whoami: no route in context")
	}
	return connect.NewResponse(&cellv1.WhoAmIResponse{
		Cell: s.fence.Cell(), Jurisdiction: rt.Domain.Jurisdiction.String(), Address: rt.Address.String(),
		PlacementKey: rt.Key, KeyspaceId: rt.KeyspaceID, Epoch: rt.Epoch,
	}), nil
}

// CountPlaced counts subjects once the cell's map has reached min_epoch, so
// a freeze made at that epoch already refuses new subjects.
func (s *Server) CountPlaced(ctx context.Context, req *connect.Request[cpv1.CountPlacedRequest]) (*connect.Response[cpv1.CountPlacedResponse], error) {
	if err := s.maps.WaitEpoch(ctx, req.Msg.MinEpoch); err != nil {
		return nil, fmt.Errorf("%w: %v", mail.ErrStaleMap, err)
	}
	n, err := s.counter.CountPlaced(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&cpv1.CountPlacedResponse{Count: n}), nil
}

// NoSubjects is the counter of a cell without a mail store: it holds no
// subject. The mail store replaces it with a count over its accounts.
type NoSubjects struct{}

// CountPlaced always answers zero.
func (NoSubjects) CountPlaced(context.Context, *cpv1.CountPlacedRequest) (uint64, error) {
	return 0, nil
}
