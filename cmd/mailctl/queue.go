package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) queueCmd() *cobra.Command {
	return group("queue", "Inspect and act on a cell's outbound queue",
		c.queueListCmd(), c.queueShowCmd(), c.queueRetryCmd(), c.queueReleaseCmd(), c.queueDropCmd())
}

// operator returns a client of the cell's OperatorService (its address
// found through the control plane), and the operator token to call it with.
func (c *cli) operator(ctx context.Context, cp api, cell string) (cellv1connect.OperatorServiceClient, error) {
	cells, err := cp.ListCells(ctx, connect.NewRequest(&pb.ListCellsRequest{}))
	if err != nil {
		return nil, err
	}
	for _, cs := range cells.Msg.Cells {
		if cs.GetCell().GetName() == cell {
			return cellv1connect.NewOperatorServiceClient(http.DefaultClient, cs.GetCell().GetApiUrl()), nil
		}
	}
	return nil, usagef("no cell named %q", cell)
}

// withOperator is a request carrying the operator token.
func withOperator[T any](c *cli, m *T) *connect.Request[T] {
	req := connect.NewRequest(m)
	req.Header().Set("Authorization", "Bearer "+c.operatorToken())
	return req
}

func when(ts *timestamppb.Timestamp) string { return ts.AsTime().Local().Format(time.DateTime) }

func (c *cli) queueListCmd() *cobra.Command {
	var cell string
	var all bool
	cmd := &cobra.Command{
		Use:   "list --cell CELL",
		Short: "List the pending and held outbound entries of a cell (--all: delivered, bounced and dropped too)",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			op, err := c.operator(ctx, cp, cell)
			if err != nil {
				return err
			}
			resp, err := op.ListQueue(ctx, withOperator(c, &cellv1.ListQueueRequest{All: all}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tSTATE\tFROM\tTO\tATTEMPTS\tNEXT\tLAST ERROR")
				for _, e := range resp.Msg.Entries {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Id, e.State, e.From, e.Rcpt, e.Attempts,
						when(e.NextAttempt), truncate(e.LastError, 60))
				}
			})
		}),
	}
	cmd.Flags().StringVar(&cell, "cell", "", "the cell whose queue to read (required)")
	cmd.Flags().BoolVar(&all, "all", false, "include finished entries")
	_ = cmd.MarkFlagRequired("cell")
	return cmd
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// entryTable writes one entry as name: value lines.
func entryTable(e *cellv1.QueueEntry) func(io.Writer) {
	return func(w io.Writer) {
		for _, kv := range [][2]string{{"id", e.Id}, {"state", e.State}, {"from", e.From}, {"to", e.Rcpt},
			{"domain", e.Domain}, {"attempts", fmt.Sprint(e.Attempts)}, {"next attempt", when(e.NextAttempt)},
			{"queued", when(e.Created)}, {"expires", when(e.Expires)},
			{"size", fmt.Sprint(e.Size)}, {"last error", e.LastError}} {
			fmt.Fprintf(w, "%s:\t%s\n", kv[0], kv[1])
		}
	}
}

func (c *cli) queueShowCmd() *cobra.Command {
	var cell string
	cmd := &cobra.Command{
		Use:   "show ID --cell CELL",
		Short: "Show one outbound entry",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			op, err := c.operator(ctx, cp, cell)
			if err != nil {
				return err
			}
			resp, err := op.GetQueueEntry(ctx, withOperator(c, &cellv1.GetQueueEntryRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg.Entry, entryTable(resp.Msg.Entry))
		}),
	}
	cmd.Flags().StringVar(&cell, "cell", "", "the cell holding the entry (required)")
	_ = cmd.MarkFlagRequired("cell")
	return cmd
}

func (c *cli) queueRetryCmd() *cobra.Command {
	var cell string
	cmd := &cobra.Command{
		Use:   "retry ID --cell CELL",
		Short: "Try a pending outbound entry again now",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			op, err := c.operator(ctx, cp, cell)
			if err != nil {
				return err
			}
			if _, err := op.RetryQueueEntry(ctx, withOperator(c, &cellv1.RetryQueueEntryRequest{Id: args[0]})); err != nil {
				return err
			}
			c.note("entry %s is due now", args[0])
			return nil
		}),
	}
	cmd.Flags().StringVar(&cell, "cell", "", "the cell holding the entry (required)")
	_ = cmd.MarkFlagRequired("cell")
	return cmd
}

func (c *cli) queueDropCmd() *cobra.Command {
	return c.queueChangeCmd("drop", "Take a pending or held outbound entry out of the queue: it is never delivered and no bounce is sent",
		"drop the message from %s to %s without delivering it", "entry %s dropped",
		func(ctx context.Context, op cellv1connect.OperatorServiceClient, id string) error {
			_, err := op.DropQueueEntry(ctx, withOperator(c, &cellv1.DropQueueEntryRequest{Id: id}))
			return err
		})
}

func (c *cli) queueReleaseCmd() *cobra.Command {
	return c.queueChangeCmd("release", "Send a held outbound entry (held as likely spam) after all",
		"send the message from %s to %s, held as likely spam", "entry %s released: it is due now",
		func(ctx context.Context, op cellv1connect.OperatorServiceClient, id string) error {
			_, err := op.ReleaseQueueEntry(ctx, withOperator(c, &cellv1.ReleaseQueueEntryRequest{Id: id}))
			return err
		})
}

// queueChangeCmd is a confirmed change of one entry.
func (c *cli) queueChangeCmd(verb, short, confirm, done string,
	call func(ctx context.Context, op cellv1connect.OperatorServiceClient, id string) error) *cobra.Command {
	var cell string
	var f changeFlags
	cmd := &cobra.Command{
		Use:   verb + " ID --cell CELL",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			op, err := c.operator(ctx, cp, cell)
			if err != nil {
				return err
			}
			return c.confirmed(ctx, &f, change{
				what: "queue " + verb,
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					e, err := op.GetQueueEntry(ctx, withOperator(c, &cellv1.GetQueueEntryRequest{Id: args[0]}))
					if err != nil {
						return nil, nil, "", err
					}
					return e.Msg.Entry, entryTable(e.Msg.Entry), fmt.Sprintf(confirm, e.Msg.Entry.From, e.Msg.Entry.Rcpt), nil
				},
				apply: func(ctx context.Context) error {
					if err := call(ctx, op, args[0]); err != nil {
						return err
					}
					c.note(done, args[0])
					return nil
				},
			})
		}),
	}
	cmd.Flags().StringVar(&cell, "cell", "", "the cell holding the entry (required)")
	f.register(cmd)
	_ = cmd.MarkFlagRequired("cell")
	return cmd
}
