package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	clilib "github.com/cellmail/cellmail/cmd/internal/cli"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/placement"
)

func (c *cli) domainsCmd() *cobra.Command {
	return group("domains", "Host domains in a jurisdiction",
		c.domainsAddCmd(), c.domainsListCmd(), c.domainsRemoveCmd(), c.domainsDKIMCmd())
}

func (c *cli) domainsAddCmd() *cobra.Command {
	var jur, mode string
	cmd := &cobra.Command{
		Use:   "add NAME --jurisdiction J --mode tenant|consumer",
		Short: "Host a domain",
		Long: `Host a domain (Unicode or ASCII; stored in A-label form) in a jurisdiction.
A tenant domain keeps all its addresses in one cell; a consumer domain places
each address on its own.`,
		Args: cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			m, ok := pb.PlacementMode_value["PLACEMENT_MODE_"+strings.ToUpper(mode)]
			if !ok || m == int32(pb.PlacementMode_PLACEMENT_MODE_UNSPECIFIED) {
				return usagef("--mode %q: want tenant or consumer", mode)
			}
			resp, err := cp.AddDomain(ctx, connect.NewRequest(&pb.AddDomainRequest{
				Name: args[0], Jurisdiction: jur, Mode: pb.PlacementMode(m)}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { domainTable(w, resp.Msg.Domain) })
		}),
	}
	cmd.Flags().StringVar(&jur, "jurisdiction", "", "jurisdiction whose cells hold the domain's users (required)")
	cmd.Flags().StringVar(&mode, "mode", "", "placement mode: tenant or consumer (required)")
	_ = cmd.MarkFlagRequired("jurisdiction")
	_ = cmd.MarkFlagRequired("mode")
	return cmd
}

func (c *cli) domainsListCmd() *cobra.Command {
	var jur string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List hosted domains",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cp api, _ []string) error {
			resp, err := cp.ListDomains(ctx, connect.NewRequest(&pb.ListDomainsRequest{Jurisdiction: jur}))
			if err != nil {
				return err
			}
			return c.show(resp.Msg, func(w io.Writer) { domainTable(w, resp.Msg.Domains...) })
		}),
	}
	cmd.Flags().StringVar(&jur, "jurisdiction", "", "only domains of this jurisdiction")
	return cmd
}

func (c *cli) domainsRemoveCmd() *cobra.Command {
	var f changeFlags
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Stop hosting a domain (only when no cell holds any of its subjects)",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			name := args[0]
			return c.confirmed(ctx, &f, change{
				what: "domains remove",
				describe: func(ctx context.Context) (proto.Message, func(io.Writer), string, error) {
					d, err := findDomain(ctx, cp, name)
					if err != nil {
						return nil, nil, "", err
					}
					plan := fmt.Sprintf("remove domain %s (%s, %s): its addresses stop routing; refused if a cell of %s still holds any of its subjects",
						d.Name, d.Jurisdiction, modeName(d.Mode), d.Jurisdiction)
					return d, func(w io.Writer) { domainTable(w, d) }, plan, nil
				},
				apply: func(ctx context.Context) error {
					resp, err := cp.RemoveDomain(ctx, connect.NewRequest(&pb.RemoveDomainRequest{Name: name}))
					if err != nil {
						return err
					}
					return c.show(resp.Msg, func(w io.Writer) { fmt.Fprintf(w, "domain %s removed\n", name) })
				},
			})
		}),
	}
	f.register(cmd)
	return cmd
}

// findDomain returns the record of a hosted domain, found in the list by its
// A-label form.
func findDomain(ctx context.Context, cp api, name string) (*pb.Domain, error) {
	canon, err := placement.CanonicalDomain(strings.TrimSpace(name))
	if err != nil {
		return nil, usagef("domain %q: %v", name, err)
	}
	resp, err := cp.ListDomains(ctx, connect.NewRequest(&pb.ListDomainsRequest{}))
	if err != nil {
		return nil, err
	}
	for _, d := range resp.Msg.Domains {
		if d.Name == canon {
			return d, nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("domain "+canon+" is not hosted"))
}

func modeName(m pb.PlacementMode) string {
	return strings.ToLower(strings.TrimPrefix(m.String(), "PLACEMENT_MODE_"))
}

func domainTable(w io.Writer, ds ...*pb.Domain) {
	fmt.Fprintln(w, "NAME\tJURISDICTION\tMODE\tEPOCH\tFROZEN")
	for _, d := range ds {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%t\n", d.GetName(), d.GetJurisdiction(), modeName(d.GetMode()), d.GetEpoch(), d.GetFrozen())
	}
}

func (c *cli) domainsDKIMCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dkim DOMAIN",
		Short: "Print the DNS records of the domain's DKIM keys",
		Long: `Print the TXT records to publish for DOMAIN's DKIM keys: every cell of the
domain's jurisdiction signs its users' outbound mail with its own key
(selector cm-<cell>), made on first use, so there is one record per cell.
The cells are asked directly, with the same operator token.`,
		Args: cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cp api, args []string) error {
			domain, err := placement.CanonicalDomain(args[0])
			if err != nil {
				return usagef("domain %q: %v", args[0], err)
			}
			doms, err := cp.ListDomains(ctx, connect.NewRequest(&pb.ListDomainsRequest{}))
			if err != nil {
				return err
			}
			jur := ""
			for _, d := range doms.Msg.Domains {
				if d.Name == domain {
					jur = d.Jurisdiction
				}
			}
			if jur == "" {
				return fmt.Errorf("domain %s is not hosted", domain)
			}
			cells, err := cp.ListCells(ctx, connect.NewRequest(&pb.ListCellsRequest{Jurisdiction: jur}))
			if err != nil {
				return err
			}
			var out struct {
				Records []*cellv1.GetDKIMRecordResponse `json:"records"`
			}
			for _, cs := range cells.Msg.Cells {
				rec, err := clilib.FetchDKIM(ctx, cs.GetCell().GetApiUrl(), domain, c.operatorToken())
				if err != nil {
					return fmt.Errorf("cell %s: %w", cs.GetCell().GetName(), err)
				}
				out.Records = append(out.Records, rec)
			}
			if c.output == "json" {
				return json.NewEncoder(c.stdout).Encode(out)
			}
			for _, r := range out.Records {
				fmt.Fprintf(c.stdout, "%s. IN TXT \"%s\"\n", r.Name, r.Txt)
			}
			return nil
		}),
	}
}
