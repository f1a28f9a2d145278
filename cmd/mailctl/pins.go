package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) pinsCmd() *cobra.Command {
	return group("pins", "Pin subjects to cells, overriding their ranges",
		c.pinsListCmd(), c.pinsSetCmd(), c.pinsClearCmd())
}

func (c *cli) pinsListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List pins",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			resp, err := cp.ListPins(ctx, connect.NewRequest(&pb.ListPinsRequest{}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { pinTable(w, resp.Msg.Pins...) })
		}),
	}
}

const subjectHelp = `SUBJECT is an address of a consumer domain or a tenant domain. When the
change moves the subject to another cell, its current cell must hold nothing
of it (moving a user with data is the mover's work).`

func (c *cli) pinsSetCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "set SUBJECT CELL",
		Short: "Place one subject in a given cell of its jurisdiction",
		Long:  "Place one subject in a given active cell of its jurisdiction.\n\n" + subjectHelp,
		Args:  cobra.ExactArgs(2),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			subject, cell := args[0], args[1]
			return c.confirmed(ctx, &f, change{
				what: "pins set",
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					r, err := lookupSubject(ctx, cp, subject)
					if err != nil {
						return nil, nil, "", err
					}
					plan := fmt.Sprintf("pin %s to cell %s (it routes to cell %s now, %s)", r.PlacementKey, cell, r.Cell, how(r))
					if r.Pinned && r.Cell == cell {
						plan = fmt.Sprintf("leave %s pinned to cell %s (no change)", r.PlacementKey, cell)
					}
					return r, func(w io.Writer) { routeDetail(w, r) }, plan, nil
				},
				apply: func(ctx context.Context) error {
					resp, err := cp.SetPin(ctx, connect.NewRequest(&pb.SetPinRequest{Subject: subject, Cell: cell}))
					if err != nil {
						return err
					}
					return c.show(resp.Msg, func(w io.Writer) { pinTable(w, resp.Msg.Pin) })
				},
			})
		}),
	}
	f.register(cmd)
	return cmd
}

func (c *cli) pinsClearCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "clear SUBJECT",
		Short: "Remove a pin: the subject falls back to its range's owner",
		Long:  "Remove a pin: the subject falls back to its range's owner.\n\n" + subjectHelp,
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			subject := args[0]
			return c.confirmed(ctx, &f, change{
				what: "pins clear",
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					r, err := lookupSubject(ctx, cp, subject)
					if err != nil {
						return nil, nil, "", err
					}
					if !r.Pinned {
						return nil, nil, "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no pin for %s", r.PlacementKey))
					}
					plan := fmt.Sprintf("clear the pin of %s to cell %s: it falls back to the owner of its range", r.PlacementKey, r.Cell)
					return r, func(w io.Writer) { routeDetail(w, r) }, plan, nil
				},
				apply: func(ctx context.Context) error {
					resp, err := cp.ClearPin(ctx, connect.NewRequest(&pb.ClearPinRequest{Subject: subject}))
					if err != nil {
						return err
					}
					return c.show(resp.Msg, func(w io.Writer) { fmt.Fprintf(w, "pin of %s cleared\n", subject) })
				},
			})
		}),
	}
	f.register(cmd)
	return cmd
}

// lookupSubject finds where a pin subject routes now. Lookup takes only
// addresses; a tenant domain's addresses all share its placement key, so
// the domain's postmaster stands for the domain.
func lookupSubject(ctx context.Context, cp api, subject string) (*pb.LookupResponse, error) {
	subject = strings.TrimSpace(subject)
	addr := subject
	if !strings.Contains(subject, "@") {
		addr = "postmaster@" + subject
	}
	resp, err := cp.Lookup(ctx, connect.NewRequest(&pb.LookupRequest{Address: addr}))
	if err != nil {
		return nil, err
	}
	r := resp.Msg
	if addr != subject && strings.Contains(r.PlacementKey, "@") {
		return nil, usagef("%s is a consumer domain: pin one of its addresses", subject)
	}
	return r, nil
}

// how says why a subject routes where it does.
func how(r *pb.LookupResponse) string {
	if r.Pinned {
		return "pinned"
	}
	return "by its range at " + hexKey(r.RangeStart)
}

func pinTable(w io.Writer, ps ...*pb.Pin) {
	fmt.Fprintln(w, "KEY\tCELL\tEPOCH\tFROZEN")
	for _, p := range ps {
		fmt.Fprintf(w, "%s\t%s\t%d\t%t\n", p.GetKey(), p.GetCell(), p.GetEpoch(), p.GetFrozen())
	}
}
