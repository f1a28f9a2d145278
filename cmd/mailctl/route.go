package main

import (
	"context"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) routeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "route ADDRESS",
		Short: "Show which cell owns an address, and why",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			resp, err := cp.Lookup(ctx, connect.NewRequest(&pb.LookupRequest{Address: args[0]}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { routeDetail(w, resp.Msg) })
		}),
	}
}

func routeDetail(w io.Writer, r *pb.LookupResponse) {
	rangeStart, rangeEnd := hexKey(r.GetRangeStart()), hexKey(r.GetRangeEnd())
	if r.GetPinned() {
		rangeStart, rangeEnd = "- (pinned)", "-"
	}
	fmt.Fprintf(w, "ADDRESS\t%s\n", r.GetAddress())
	fmt.Fprintf(w, "CELL\t%s\n", r.GetCell())
	fmt.Fprintf(w, "JURISDICTION\t%s\n", r.GetJurisdiction())
	fmt.Fprintf(w, "PLACEMENT KEY\t%s\n", r.GetPlacementKey())
	fmt.Fprintf(w, "KEYSPACE ID\t0x%016x\n", r.GetKeyspaceId())
	fmt.Fprintf(w, "EPOCH\t%d\n", r.GetEpoch())
	fmt.Fprintf(w, "PINNED\t%t\n", r.GetPinned())
	fmt.Fprintf(w, "FROZEN\t%t\n", r.GetFrozen())
	fmt.Fprintf(w, "RANGE START\t%s\n", rangeStart)
	fmt.Fprintf(w, "RANGE END\t%s\n", rangeEnd)
	fmt.Fprintf(w, "CELL API URL\t%s\n", r.GetCellApiUrl())
}
