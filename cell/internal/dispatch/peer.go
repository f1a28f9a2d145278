package dispatch

import (
	"context"
	"net/http"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

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
	routing.SetEpoch(req.Header(), epoch)
	resp, err := c.Deliver(ctx, req)
	if err != nil {
		return nil, routing.FromConnect(err)
	}
	out := make([]Status, len(resp.Msg.Recipients))
	for i, st := range resp.Msg.Recipients {
		out[i] = Status{Address: st.Address, State: st.Status, Detail: st.Detail}
	}
	return out, nil
}
