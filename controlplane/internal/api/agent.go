package api

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"connectrpc.com/connect"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
)

// AgentClient calls cells' CellAgentService with the internal token.
type AgentClient struct {
	http  *http.Client
	token string

	mu      sync.Mutex
	clients map[string]controlplanev1connect.CellAgentServiceClient
}

// NewAgentClient makes a client that authenticates with token.
func NewAgentClient(hc *http.Client, token string) *AgentClient {
	return &AgentClient{http: hc, token: token, clients: map[string]controlplanev1connect.CellAgentServiceClient{}}
}

// CountPlaced implements PlacedCounter.
func (a *AgentClient) CountPlaced(ctx context.Context, cell *pb.Cell, req *pb.CountPlacedRequest) (uint64, error) {
	a.mu.Lock()
	c, ok := a.clients[cell.ApiUrl]
	if !ok {
		c = controlplanev1connect.NewCellAgentServiceClient(a.http, cell.ApiUrl)
		a.clients[cell.ApiUrl] = c
	}
	a.mu.Unlock()
	r := connect.NewRequest(req)
	r.Header().Set("Authorization", "Bearer "+a.token)
	resp, err := c.CountPlaced(ctx, r)
	if err != nil {
		return 0, fmt.Errorf("count at %s: %w", cell.Name, err)
	}
	return resp.Msg.Count, nil
}
