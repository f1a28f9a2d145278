package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
)

// Defaults of the global flags.
const (
	defaultControlPlane = "http://127.0.0.1:7400"
	defaultTimeout      = 30 * time.Second
)

// cli is one invocation of mailctl: its streams, its environment and the
// values of its global flags.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// interactive says whether a person can answer a prompt on stdin.
	interactive bool

	controlplane string
	token        string
	output       string
	timeout      time.Duration
}

// run executes mailctl with args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, interactive: isTerminal(stdin)}
	return c.execute(ctx, args)
}

// isTerminal reports whether r is a character device (a terminal; also
// /dev/null, whose EOF answers a prompt with no).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (c *cli) execute(ctx context.Context, args []string) int {
	if args == nil {
		args = []string{} // cobra reads os.Args when given nil
	}
	root := c.rootCmd()
	root.SetArgs(args)
	root.SetIn(c.stdin)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	return c.report(cmd, err)
}

func (c *cli) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "mailctl",
		Short: "Operate cellmail's control plane: cells, domains, ranges, pins, routes",
		Long: `mailctl talks to the control plane's admin API.

The operator token comes from --token or, better (it stays out of the process
list), from CELLMAIL_TOKEN; the API's address from --controlplane or
CELLMAIL_CONTROLPLANE.

Commands that change routing or what a cell takes ask "Proceed? [y/N]" unless
--yes is given; without a terminal on stdin they refuse instead. --dry-run
shows the current state and what would be done, and changes nothing.

Exit status: 0 on success, 1 when the API refused or the change was declined,
2 on a usage error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if c.output != "table" && c.output != "json" {
				return fmt.Errorf("--output %q: want table or json", c.output)
			}
			if c.timeout <= 0 {
				return fmt.Errorf("--timeout %v: must be positive", c.timeout)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&c.controlplane, "controlplane", defaultControlPlane, "base URL of the control-plane admin API (env CELLMAIL_CONTROLPLANE)")
	pf.StringVar(&c.token, "token", "", "operator bearer token (env CELLMAIL_TOKEN; required)")
	pf.StringVarP(&c.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&c.timeout, "timeout", defaultTimeout, "time limit of each API call")
	root.AddCommand(c.cellsCmd(), c.domainsCmd(), c.rangesCmd(), c.pinsCmd(), c.routeCmd(), c.queueCmd())
	return root
}

// group makes a command that only holds subcommands: run bare it shows its
// help, and an unknown subcommand is a usage error (cobra would show help).
func group(use, short string, sub ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(sub...)
	return cmd
}

// api is the admin API as the commands use it.
type api = controlplanev1connect.ControlPlaneServiceClient

// action adapts a command body to cobra: it resolves the connection
// settings (flags, then environment, then defaults), makes the API client,
// and marks the body's errors as runtime errors (exit 1) unless they are
// usage errors.
func (c *cli) action(fn func(ctx context.Context, cp api, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cp, err := c.client(cmd)
		if err != nil {
			return err
		}
		err = fn(cmd.Context(), cp, args)
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return runtimeError{err}
	}
}

func (c *cli) client(cmd *cobra.Command) (api, error) {
	base := c.controlplane
	if !cmd.Flags().Changed("controlplane") {
		if v := c.getenv("CELLMAIL_CONTROLPLANE"); v != "" {
			base = v
		}
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("control plane %q is not an http(s) URL", base)
	}
	token := c.operatorToken()
	if token == "" {
		return nil, usagef("no operator token: set CELLMAIL_TOKEN or pass --token")
	}
	return controlplanev1connect.NewControlPlaneServiceClient(http.DefaultClient, base,
		connect.WithInterceptors(callOptions(token, c.timeout))), nil
}

// operatorToken is --token, or CELLMAIL_TOKEN.
func (c *cli) operatorToken() string {
	token := c.token
	if token == "" {
		token = c.getenv("CELLMAIL_TOKEN")
	}
	return strings.TrimSpace(token)
}

// callOptions sends the bearer token and bounds each call by timeout.
func callOptions(token string, timeout time.Duration) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return next(ctx, req)
		}
	}
}

// usageError is a mistake in the command line (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// runtimeError is a failure of a well-formed command (exit 1).
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

// errDeclined is the answer no at a confirmation prompt.
var errDeclined = errors.New("not confirmed: nothing changed")

// report prints err and returns the exit status. Errors cobra returns by
// itself (flags, arguments, unknown commands) are usage errors.
func (c *cli) report(cmd *cobra.Command, err error) int {
	if err == nil {
		return 0
	}
	var ce *connect.Error
	var re runtimeError
	switch {
	case errors.As(err, &ce):
		fmt.Fprintf(c.stderr, "error: %s: %s%s\n", ce.Code(), ce.Message(), reason(ce))
		return 1
	case errors.As(err, &re):
		fmt.Fprintf(c.stderr, "error: %v\n", re.err)
		return 1
	}
	fmt.Fprintf(c.stderr, "error: %v\n", err)
	if cmd != nil {
		fmt.Fprintf(c.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 2
}

// reason formats the ErrorInfo reason of ce, if it has one.
func reason(ce *connect.Error) string {
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			continue
		}
		if info, ok := v.(*errdetails.ErrorInfo); ok && info.Reason != "" {
			return " (reason: " + info.Reason + ")"
		}
	}
	return ""
}

// show prints msg as JSON, or as the table that table writes.
func (c *cli) show(msg proto.Message, table func(w io.Writer)) error {
	if c.output == "json" {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// note tells the operator something that is not the command's output.
func (c *cli) note(format string, args ...any) {
	fmt.Fprintf(c.stderr, format+"\n", args...)
}

// changeFlags are the flags of a command that needs confirmation.
type changeFlags struct {
	yes, dryRun bool
}

func (f *changeFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&f.yes, "yes", "y", false, "do it without asking for confirmation")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "show the current state and what would be done; change nothing")
}

// change is a command that needs confirmation.
type change struct {
	// what names the change for a refusal, e.g. "cells drain".
	what string
	// describe fetches the current state of what the change touches and
	// says what the change would do.
	describe func(ctx context.Context) (current proto.Message, table func(io.Writer), plan string, err error)
	apply    func(ctx context.Context) error
}

// confirmed runs ch under f: with --dry-run it prints the current state (on
// stdout, in the output format) and the plan (on stderr); with --yes it
// applies ch at once; else it shows the plan and asks on a terminal, and
// refuses without one.
func (c *cli) confirmed(ctx context.Context, f *changeFlags, ch change) error {
	switch {
	case f.dryRun:
		cur, table, plan, err := ch.describe(ctx)
		if err != nil {
			return err
		}
		if cur == nil { // not a control plane object: the table is all there is
			table(c.stdout)
		} else if err := c.show(cur, table); err != nil {
			return err
		}
		c.note("dry run: %s; nothing changed", plan)
		return nil
	case f.yes:
		return ch.apply(ctx)
	case !c.interactive:
		return usagef("%s needs confirmation and stdin is not a terminal: pass --yes to confirm, or --dry-run to preview", ch.what)
	}
	_, _, plan, err := ch.describe(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "This will %s.\nProceed? [y/N] ", plan)
	ok, err := c.ask(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errDeclined
	}
	return ch.apply(ctx)
}

// ask reads one answer from stdin: y or yes is a yes, anything else
// (EOF included) a no. An interrupt ends the wait.
func (c *cli) ask(ctx context.Context) (bool, error) {
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(c.stderr)
		return false, ctx.Err()
	case line := <-answer:
		if !strings.HasSuffix(line, "\n") {
			fmt.Fprintln(c.stderr) // EOF: end the prompt's line
		}
		a := strings.ToLower(strings.TrimSpace(line))
		return a == "y" || a == "yes", nil
	}
}

// parseKey parses a position in a jurisdiction's key space: decimal, or
// hexadecimal with a 0x prefix.
func parseKey(s string) (uint64, error) {
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 64)
	} else {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return 0, usagef("key %q: want a decimal number or 0x-prefixed hex", s)
	}
	return v, nil
}

// hexKey formats a position in a jurisdiction's 56-bit key space.
func hexKey(v uint64) string { return fmt.Sprintf("0x%014x", v) }
