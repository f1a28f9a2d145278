package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// Operator serves the cell's OperatorService (mailctl queue, mailctl
// domains dkim), with the operator token: the outbound queue and the
// cell's DKIM keys.
type Operator struct {
	m        *MailServer
	selector string
}

var _ cellv1connect.OperatorServiceHandler = Operator{}

// Operator returns the operators' API over the same store; selector names
// the DKIM keys the cell makes.
func (m *MailServer) Operator(selector string) Operator { return Operator{m: m, selector: selector} }

// OperatorInterceptor admits only the operator token.
func (m *MailServer) OperatorInterceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			tok, _ := strings.CutPrefix(req.Header().Get("Authorization"), "Bearer ")
			if m.operatorToken == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(m.operatorToken)) != 1 {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("operator token required"))
			}
			resp, err := next(ctx, req)
			return resp, m.srv.toConnect(req.Spec().Procedure, err)
		}
	}
}

// ListQueue implements OperatorService.
func (o Operator) ListQueue(ctx context.Context, req *connect.Request[cellv1.ListQueueRequest]) (*connect.Response[cellv1.ListQueueResponse], error) {
	items, err := o.m.store.ListOutbound(ctx, req.Msg.All, 1000)
	if err != nil {
		return nil, fmt.Errorf("%w: queue: %w", mail.ErrUnavailable, err)
	}
	out := &cellv1.ListQueueResponse{}
	for _, q := range items {
		out.Entries = append(out.Entries, queueEntry(q))
	}
	return connect.NewResponse(out), nil
}

// GetQueueEntry implements OperatorService.
func (o Operator) GetQueueEntry(ctx context.Context, req *connect.Request[cellv1.GetQueueEntryRequest]) (*connect.Response[cellv1.GetQueueEntryResponse], error) {
	e, err := o.entry(ctx, req.Msg.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&cellv1.GetQueueEntryResponse{Entry: e}), nil
}

// RetryQueueEntry implements OperatorService.
func (o Operator) RetryQueueEntry(ctx context.Context, req *connect.Request[cellv1.RetryQueueEntryRequest]) (*connect.Response[cellv1.RetryQueueEntryResponse], error) {
	e, err := o.change(ctx, req.Msg.Id, "pending", func() (bool, error) { return o.m.store.RetryOutboundNow(ctx, req.Msg.Id) }, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&cellv1.RetryQueueEntryResponse{Entry: e}), nil
}

// ReleaseQueueEntry implements OperatorService.
func (o Operator) ReleaseQueueEntry(ctx context.Context, req *connect.Request[cellv1.ReleaseQueueEntryRequest]) (*connect.Response[cellv1.ReleaseQueueEntryResponse], error) {
	e, err := o.change(ctx, req.Msg.Id, "held", func() (bool, error) {
		return o.m.store.ReleaseOutbound(ctx, req.Msg.Id, "released by an operator at "+time.Now().UTC().Format(time.RFC3339))
	}, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&cellv1.ReleaseQueueEntryResponse{Entry: e}), nil
}

// DropQueueEntry implements OperatorService.
func (o Operator) DropQueueEntry(ctx context.Context, req *connect.Request[cellv1.DropQueueEntryRequest]) (*connect.Response[cellv1.DropQueueEntryResponse], error) {
	e, err := o.change(ctx, req.Msg.Id, "pending or held", func() (bool, error) {
		return o.m.store.DropOutbound(ctx, req.Msg.Id, "dropped by an operator at "+time.Now().UTC().Format(time.RFC3339))
	}, false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&cellv1.DropQueueEntryResponse{Entry: e}), nil
}

// change applies f to one entry and answers the entry as it is then;
// not_found when no entry in the state f needs has that id.
func (o Operator) change(ctx context.Context, id, state string, f func() (bool, error), wake bool) (*cellv1.QueueEntry, error) {
	ok, err := f()
	if err != nil {
		return nil, fmt.Errorf("%w: queue: %w", mail.ErrUnavailable, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: no %s queue entry %q", mail.ErrNotFound, state, id)
	}
	if wake {
		o.m.wakeOutbound("")
	}
	return o.entry(ctx, id)
}

func (o Operator) entry(ctx context.Context, id string) (*cellv1.QueueEntry, error) {
	e, state, next, err := o.m.store.OutboundByID(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%w: queue entry %q", mail.ErrNotFound, id)
	}
	return queueEntry(mailstore.QueueItem{OutboundEntry: e, State: state, NextAttempt: next, Size: len(e.Body)}), nil
}

var queueStates = map[int16]string{mailstore.OutboundPending: "pending", mailstore.OutboundDelivered: "delivered",
	mailstore.OutboundBounced: "bounced", mailstore.OutboundDropped: "dropped", mailstore.OutboundHeld: "held"}

func queueEntry(q mailstore.QueueItem) *cellv1.QueueEntry {
	return &cellv1.QueueEntry{Id: q.ID, State: queueStates[q.State], From: q.MailFrom, Rcpt: q.Rcpt, Domain: q.Domain,
		Attempts: uint32(q.Attempts), NextAttempt: timestamppb.New(q.NextAttempt), Created: timestamppb.New(q.Created),
		Expires: timestamppb.New(q.Expires), LastError: q.LastError, Size: uint64(q.Size)}
}
