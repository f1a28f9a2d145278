package cli

import (
	"context"
	"net/http"

	"connectrpc.com/connect"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
)

// FetchDKIM asks the cell at apiURL (its OperatorService) for its DKIM
// record of domain, with an operator token; the cell makes the key on
// first use.
func FetchDKIM(ctx context.Context, apiURL, domain, token string) (*cellv1.GetDKIMRecordResponse, error) {
	req := connect.NewRequest(&cellv1.GetDKIMRecordRequest{Domain: domain})
	req.Header().Set("Authorization", "Bearer "+token)
	resp, err := cellv1connect.NewOperatorServiceClient(http.DefaultClient, apiURL).GetDKIMRecord(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}
