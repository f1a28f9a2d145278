package api

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/outbound"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// GetDKIMRecord implements OperatorService: the DNS record to publish for
// this cell's DKIM key of the domain, making the key if the cell has none
// yet.
func (o Operator) GetDKIMRecord(ctx context.Context, req *connect.Request[cellv1.GetDKIMRecordRequest]) (*connect.Response[cellv1.GetDKIMRecordResponse], error) {
	domain, err := placement.CanonicalDomain(req.Msg.Domain)
	if err != nil {
		return nil, fmt.Errorf("%w: domain: %v", mail.ErrInvalid, err)
	}
	sel, key, err := o.m.store.DKIMKey(ctx, domain, outbound.NewDKIMKey(o.selector))
	if err != nil {
		return nil, fmt.Errorf("%w: dkim key of %s: %w", mail.ErrUnavailable, domain, err)
	}
	txt, err := outbound.DKIMRecord(key)
	if err != nil {
		return nil, fmt.Errorf("dkim key of %s: %w", domain, err)
	}
	return connect.NewResponse(&cellv1.GetDKIMRecordResponse{Domain: domain, Selector: sel, Name: sel + "._domainkey." + domain, Txt: txt}), nil
}
