package api

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// Domain errors of the admin API; wrap them with the detail:
// fmt.Errorf("%w: range %d is a boundary", errPrecondition).
var (
	errNotFound     = errors.New("not found")
	errInvalid      = errors.New("invalid argument")
	errPrecondition = errors.New("failed precondition")
	errUnavailable  = errors.New("unavailable")
	errUnauthorized = errors.New("missing or wrong operator token")
)

// codes is the one table from domain errors to Connect codes.
var codes = []struct {
	err    error
	code   connect.Code
	reason string
}{
	{errNotFound, connect.CodeNotFound, "NOT_FOUND"},
	{placement.ErrUnknownDomain, connect.CodeNotFound, "UNKNOWN_DOMAIN"},
	{placement.ErrInvalidAddress, connect.CodeInvalidArgument, "INVALID_ADDRESS"},
	{placement.ErrUnknownJurisdiction, connect.CodeInvalidArgument, "UNKNOWN_JURISDICTION"},
	{errInvalid, connect.CodeInvalidArgument, "INVALID_ARGUMENT"},
	{errPrecondition, connect.CodeFailedPrecondition, "FAILED_PRECONDITION"},
	{placement.ErrNoRange, connect.CodeFailedPrecondition, "NO_RANGE"},
	{store.ErrConflict, connect.CodeAborted, "CONFLICT"},
	{client.ErrNotReady, connect.CodeUnavailable, "MAP_NOT_READY"},
	{errUnavailable, connect.CodeUnavailable, "UNAVAILABLE"},
	{errUnauthorized, connect.CodeUnauthenticated, "UNAUTHENTICATED"},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded, "DEADLINE_EXCEEDED"},
	{context.Canceled, connect.CodeCanceled, "CANCELED"},
}

// toConnect translates an error once, at the edge. Operators see the domain
// error's text (it names what is wrong); anything unexpected is logged with
// its chain and answered as a generic internal error.
func toConnect(log *slog.Logger, procedure string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			// The code says what the sentinel says: keep only the detail.
			msg := strings.TrimPrefix(err.Error(), c.err.Error()+": ")
			e := connect.NewError(c.code, errors.New(msg))
			if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: c.reason, Domain: "controlplane.cellmail"}); derr == nil {
				e.AddDetail(d)
			}
			return e
		}
	}
	log.Error("admin call failed", "procedure", procedure, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}
