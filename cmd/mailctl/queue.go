package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

func (c *cli) queueCmd() *cobra.Command {
	return group("queue", "Inspect and act on a cell's outbound queue",
		c.queueListCmd(), c.queueShowCmd(), c.queueRetryCmd(), c.queueReleaseCmd(), c.queueDropCmd())
}

type queueEntry struct {
	ID          string    `json:"id"`
	State       string    `json:"state"`
	From        string    `json:"from"`
	Rcpt        string    `json:"rcpt"`
	Domain      string    `json:"domain"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	LastError   string    `json:"last_error"`
	Size        int       `json:"size"`
}

// cellCall calls a cell's operator endpoint (found through the control
// plane) with the operator token and decodes the JSON answer into out.
func (c *cli) cellCall(ctx context.Context, cp api, cell, method, path string, out any) error {
	cells, err := cp.ListCells(ctx, connect.NewRequest(&pb.ListCellsRequest{}))
	if err != nil {
		return err
	}
	base := ""
	for _, cs := range cells.Msg.Cells {
		if cs.GetCell().GetName() == cell {
			base = cs.GetCell().GetApiUrl()
		}
	}
	if base == "" {
		return usagef("no cell named %q", cell)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.operatorToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cell %s: %w", cell, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("cell %s: %s: %s", cell, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(out)
}

func (c *cli) queueListCmd() *cobra.Command {
	var cell string
	var all bool
	cmd := &cobra.Command{
		Use:   "list --cell CELL",
		Short: "List the pending and held outbound entries of a cell (--all: delivered, bounced and dropped too)",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			path := "/v1/queue"
			if all {
				path += "?all=1"
			}
			var out struct {
				Entries []queueEntry `json:"entries"`
			}
			if err := c.cellCall(ctx, cp, cell, http.MethodGet, path, &out); err != nil {
				return err
			}
			if c.output == "json" {
				return json.NewEncoder(c.stdout).Encode(out)
			}
			w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTATE\tFROM\tTO\tATTEMPTS\tNEXT\tLAST ERROR")
			for _, e := range out.Entries {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.State, e.From, e.Rcpt, e.Attempts,
					e.NextAttempt.Local().Format(time.DateTime), truncate(e.LastError, 60))
			}
			return w.Flush()
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

func (c *cli) queueShowCmd() *cobra.Command {
	var cell string
	cmd := &cobra.Command{
		Use:   "show ID --cell CELL",
		Short: "Show one outbound entry",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			var e queueEntry
			if err := c.cellCall(ctx, cp, cell, http.MethodGet, "/v1/queue/"+url.PathEscape(args[0]), &e); err != nil {
				return err
			}
			if c.output == "json" {
				return json.NewEncoder(c.stdout).Encode(e)
			}
			w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			for _, kv := range [][2]string{{"id", e.ID}, {"state", e.State}, {"from", e.From}, {"to", e.Rcpt},
				{"domain", e.Domain}, {"attempts", fmt.Sprint(e.Attempts)}, {"next attempt", e.NextAttempt.Local().Format(time.DateTime)},
				{"queued", e.Created.Local().Format(time.DateTime)}, {"expires", e.Expires.Local().Format(time.DateTime)},
				{"size", fmt.Sprint(e.Size)}, {"last error", e.LastError}} {
				fmt.Fprintf(w, "%s:\t%s\n", kv[0], kv[1])
			}
			return w.Flush()
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
			var ok map[string]bool
			if err := c.cellCall(ctx, cp, cell, http.MethodPost, "/v1/queue/"+url.PathEscape(args[0])+"/retry", &ok); err != nil {
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
		"drop the message from %s to %s without delivering it", "entry %s dropped")
}

func (c *cli) queueReleaseCmd() *cobra.Command {
	return c.queueChangeCmd("release", "Send a held outbound entry (held as likely spam) after all",
		"send the message from %s to %s, held as likely spam", "entry %s released: it is due now")
}

// queueChangeCmd is a confirmed change of one entry: the cell's
// POST /v1/queue/{id}/{verb}.
func (c *cli) queueChangeCmd(verb, short, confirm, done string) *cobra.Command {
	var cell string
	var f changeFlags
	cmd := &cobra.Command{
		Use:   verb + " ID --cell CELL",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			path := "/v1/queue/" + url.PathEscape(args[0])
			var e queueEntry
			return c.confirmed(ctx, &f, change{
				what: "queue " + verb,
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					if err := c.cellCall(ctx, cp, cell, http.MethodGet, path, &e); err != nil {
						return nil, nil, "", err
					}
					return nil, func(w io.Writer) {
							fmt.Fprintf(w, "%s %s → %s (%s) %s\n", e.ID, e.From, e.Rcpt, e.State, e.LastError)
						},
						fmt.Sprintf(confirm, e.From, e.Rcpt), nil
				},
				apply: func(ctx context.Context) error {
					var ok map[string]bool
					if err := c.cellCall(ctx, cp, cell, http.MethodPost, path+"/"+verb, &ok); err != nil {
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
