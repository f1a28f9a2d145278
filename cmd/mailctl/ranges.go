package main

import (
	"context"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) rangesCmd() *cobra.Command {
	return group("ranges", "Split and assign the hash ranges of a jurisdiction",
		c.rangesListCmd(), c.rangesSplitCmd(), c.rangesAssignCmd())
}

func (c *cli) rangesListCmd() *cobra.Command {
	var jur, cell string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List ranges in key order (ends are exclusive; the space is 2^56)",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			resp, err := cp.ListRanges(ctx, connect.NewRequest(&pb.ListRangesRequest{Jurisdiction: jur, Cell: cell}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { rangeTable(w, resp.Msg.Ranges...) })
		}),
	}
	cmd.Flags().StringVar(&jur, "jurisdiction", "", "only ranges of this jurisdiction")
	cmd.Flags().StringVar(&cell, "cell", "", "only ranges owned by this cell")
	return cmd
}

func (c *cli) rangesSplitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "split JURISDICTION AT",
		Short: "Cut the range holding AT in two at AT; both halves keep the owner",
		Long: `Cut the range holding AT in two at AT (decimal, or hex with 0x); both halves
keep the owner, so nothing moves. AT must lie strictly inside a range.`,
		Args: cobra.ExactArgs(2),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			at, err := parseKey(args[1])
			if err != nil {
				return err
			}
			resp, err := cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: args[0], At: at}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { rangeTable(w, resp.Msg.Lower, resp.Msg.Upper) })
		}),
	}
}

func (c *cli) rangesAssignCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "assign JURISDICTION START CELL",
		Short: "Give the range starting at START to another cell (only a range that holds no subject yet)",
		Long: `Give the range starting at START (decimal, or hex with 0x) to another active
cell of its jurisdiction. The range's owner must hold no subject in it; moving
users with data is the mover's work.`,
		Args: cobra.ExactArgs(3),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			jur, cell := args[0], args[2]
			start, err := parseKey(args[1])
			if err != nil {
				return err
			}
			return c.confirmed(ctx, &f, change{
				what: "ranges assign",
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					resp, err := cp.ListRanges(ctx, connect.NewRequest(&pb.ListRangesRequest{Jurisdiction: jur}))
					if err != nil {
						return nil, nil, "", err
					}
					for _, r := range resp.Msg.Ranges {
						if r.Start == start {
							plan := fmt.Sprintf("move range %s [%s, %s) from cell %s to cell %s: its subjects will route to %s",
								jur, hexKey(r.Start), hexKey(r.End), r.Cell, cell, cell)
							if r.Cell == cell {
								plan = fmt.Sprintf("leave range %s [%s, %s) with cell %s (no change)", jur, hexKey(r.Start), hexKey(r.End), cell)
							}
							return r, func(w io.Writer) { rangeTable(w, r) }, plan, nil
						}
					}
					return nil, nil, "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no range of %s starts at %s", jur, hexKey(start)))
				},
				apply: func(ctx context.Context) error {
					resp, err := cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: jur, Start: start, Cell: cell}))
					if err != nil {
						return err
					}
					return c.show(resp.Msg, func(w io.Writer) { rangeTable(w, resp.Msg.Range) })
				},
			})
		}),
	}
	f.register(cmd)
	return cmd
}

func rangeTable(w io.Writer, rs ...*pb.Range) {
	fmt.Fprintln(w, "JURISDICTION\tSTART\tEND\tCELL\tEPOCH\tFROZEN")
	for _, r := range rs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%t\n", r.GetJurisdiction(), hexKey(r.GetStart()), hexKey(r.GetEnd()),
			r.GetCell(), r.GetEpoch(), r.GetFrozen())
	}
}
