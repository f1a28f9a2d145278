package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// HeaderMapEpoch carries the epoch of the map a call was routed by
// (DESIGN.md §3).
const HeaderMapEpoch = "Cellmail-Map-Epoch"

// PeerClient calls other cells' DeliveryService with the agent token.
type PeerClient struct {
	HTTP  *http.Client
	Token string
}

// Deliver implements Peers.
func (p PeerClient) Deliver(ctx context.Context, cell placement.Cell, epoch uint64, from string, rcpts []string, raw []byte) ([]Status, error) {
	c := mailv1connect.NewDeliveryServiceClient(p.HTTP, cell.APIURL, connect.WithSendGzip())
	req := connect.NewRequest(&mailv1.DeliverRequest{MailFrom: from, Recipients: rcpts, Raw: raw})
	req.Header().Set("Authorization", "Bearer "+p.Token)
	req.Header().Set(HeaderMapEpoch, strconv.FormatUint(epoch, 10))
	resp, err := c.Deliver(ctx, req)
	if err != nil {
		return nil, fromConnect(err)
	}
	out := make([]Status, len(resp.Msg.Recipients))
	for i, st := range resp.Msg.Recipients {
		out[i] = Status{Address: st.Address, State: st.Status, Detail: st.Detail}
	}
	return out, nil
}

// fromConnect turns a cell's routing answers (WRONG_CELL, MOVING, as typed
// details) back into the domain's errors.
func fromConnect(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		switch v := v.(type) {
		case *cellv1.WrongCell:
			return fmt.Errorf("%w (%w)", &mail.WrongCellError{Owner: v.Owner, Epoch: v.Epoch, OwnerAPIURL: v.OwnerApiUrl}, err)
		case *cellv1.Moving:
			return fmt.Errorf("%w (%w)", &mail.MovingError{RetryAfter: time.Duration(v.RetryAfterMs) * time.Millisecond}, err)
		}
	}
	return err
}
