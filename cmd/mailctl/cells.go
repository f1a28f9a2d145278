package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) cellsCmd() *cobra.Command {
	return group("cells", "Register cells and set their state",
		c.cellsListCmd(), c.cellsGetCmd(), c.cellsRegisterCmd(), c.cellsDrainCmd(), c.cellsSetStateCmd())
}

func (c *cli) cellsListCmd() *cobra.Command {
	var jur string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List cells with their state, ranges, pins and live instances",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			resp, err := cp.ListCells(ctx, connect.NewRequest(&pb.ListCellsRequest{Jurisdiction: jur}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { cellStatusTable(w, resp.Msg.Cells) })
		}),
	}
	cmd.Flags().StringVar(&jur, "jurisdiction", "", "only cells of this jurisdiction")
	return cmd
}

func (c *cli) cellsGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one cell",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			resp, err := cp.GetCell(ctx, connect.NewRequest(&pb.GetCellRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { cellDetail(w, resp.Msg.Cell) })
		}),
	}
}

func (c *cli) cellsRegisterCmd() *cobra.Command {
	var req pb.RegisterCellRequest
	cmd := &cobra.Command{
		Use:   "register NAME --jurisdiction J --api-url URL",
		Short: "Register a cell, or update its addresses",
		Long: `Register a cell, or update the addresses of a registered one (its state is kept).
The first cell of a jurisdiction receives the jurisdiction's whole key space.`,
		Args: cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			req.Name = args[0]
			resp, err := cp.RegisterCell(ctx, connect.NewRequest(&req))
			if err != nil {
				return err
			}
			if resp.Msg.Created {
				c.note("cell %s registered", resp.Msg.Cell.GetName())
			} else {
				c.note("cell %s updated", resp.Msg.Cell.GetName())
			}
			return c.show(resp.Msg, func(w io.Writer) { cellTable(w, resp.Msg.Cell) })
		}),
	}
	f := cmd.Flags()
	f.StringVar(&req.Jurisdiction, "jurisdiction", "", "jurisdiction of the cell, e.g. eu (required)")
	f.StringVar(&req.ApiUrl, "api-url", "", "base URL of the cell's Connect API (required)")
	f.StringVar(&req.LmtpAddr, "lmtp", "", "host:port of the cell's LMTP endpoint")
	f.StringVar(&req.ImapAddr, "imap", "", "host:port of the cell's IMAP endpoint")
	f.StringVar(&req.SubmissionAddr, "submission", "", "host:port of the cell's submission endpoint")
	_ = cmd.MarkFlagRequired("jurisdiction")
	_ = cmd.MarkFlagRequired("api-url")
	return cmd
}

func (c *cli) cellsDrainCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Set a cell to draining: it keeps serving but takes no new ranges or pins",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			return c.setState(ctx, cp, &f, "cells drain", args[0], pb.CellState_CELL_STATE_DRAINING)
		}),
	}
	f.register(cmd)
	return cmd
}

func (c *cli) cellsSetStateCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "set-state NAME active|draining|readonly",
		Short: "Set a cell's state",
		Long: `Set a cell's state: active (serving, takes new ranges and pins), draining
(serving, takes nothing new) or readonly (serving reads only).`,
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{"active", "draining", "readonly"},
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			st, ok := pb.CellState_value["CELL_STATE_"+strings.ToUpper(args[1])]
			if !ok || st == int32(pb.CellState_CELL_STATE_UNSPECIFIED) {
				return usagef("state %q: want active, draining or readonly", args[1])
			}
			return c.setState(ctx, cp, &f, "cells set-state", args[0], pb.CellState(st))
		}),
	}
	f.register(cmd)
	return cmd
}

func (c *cli) setState(ctx context.Context, cp api, f *changeFlags, what, name string, state pb.CellState) error {
	return c.confirmed(ctx, f, change{
		what: what,
		describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
			resp, err := cp.GetCell(ctx, connect.NewRequest(&pb.GetCellRequest{Name: name}))
			if err != nil {
				return nil, nil, "", err
			}
			st := resp.Msg.Cell
			plan := fmt.Sprintf("set cell %s (%s, %s, %d range(s), %d pin(s)) to %s",
				name, st.GetCell().GetJurisdiction(), stateName(st.GetCell().GetState()), st.GetRanges(), st.GetPins(), stateName(state))
			if st.GetCell().GetState() == state {
				plan = fmt.Sprintf("leave cell %s %s (no change)", name, stateName(state))
			}
			return resp.Msg, func(w io.Writer) { cellDetail(w, st) }, plan, nil
		},
		apply: func(ctx context.Context) error {
			resp, err := cp.SetCellState(ctx, connect.NewRequest(&pb.SetCellStateRequest{Name: name, State: state}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { cellTable(w, resp.Msg.Cell) })
		},
	})
}

func stateName(s pb.CellState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CELL_STATE_"))
}

func cellStatusTable(w io.Writer, cells []*pb.CellStatus) {
	fmt.Fprintln(w, "NAME\tJURISDICTION\tSTATE\tRANGES\tPINS\tALIVE\tAPI URL")
	for _, s := range cells {
		c := s.GetCell()
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", c.GetName(), c.GetJurisdiction(), stateName(c.GetState()),
			s.GetRanges(), s.GetPins(), len(s.GetAlive()), c.GetApiUrl())
	}
}

func cellTable(w io.Writer, c *pb.Cell) {
	fmt.Fprintln(w, "NAME\tJURISDICTION\tSTATE\tAPI URL\tEPOCH")
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", c.GetName(), c.GetJurisdiction(), stateName(c.GetState()), c.GetApiUrl(), c.GetEpoch())
}

// cellDetail shows one cell as field/value lines, then its live instances.
func cellDetail(w io.Writer, s *pb.CellStatus) {
	c := s.GetCell()
	orNone := func(v string) string {
		if v == "" {
			return "-"
		}
		return v
	}
	fmt.Fprintf(w, "NAME\t%s\n", c.GetName())
	fmt.Fprintf(w, "JURISDICTION\t%s\n", c.GetJurisdiction())
	fmt.Fprintf(w, "STATE\t%s\n", stateName(c.GetState()))
	fmt.Fprintf(w, "API URL\t%s\n", orNone(c.GetApiUrl()))
	fmt.Fprintf(w, "LMTP\t%s\n", orNone(c.GetLmtpAddr()))
	fmt.Fprintf(w, "IMAP\t%s\n", orNone(c.GetImapAddr()))
	fmt.Fprintf(w, "SUBMISSION\t%s\n", orNone(c.GetSubmissionAddr()))
	fmt.Fprintf(w, "EPOCH\t%d\n", c.GetEpoch())
	fmt.Fprintf(w, "RANGES\t%d\n", s.GetRanges())
	fmt.Fprintf(w, "PINS\t%d\n", s.GetPins())
	fmt.Fprintf(w, "ALIVE\t%d\n", len(s.GetAlive()))
	for _, a := range s.GetAlive() {
		fmt.Fprintf(w, "INSTANCE\t%s %s since %s\n", a.GetInstance(), a.GetApiUrl(),
			time.Unix(a.GetStartedUnix(), 0).UTC().Format(time.RFC3339))
	}
}
