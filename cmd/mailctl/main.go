// Command mailctl is the operator's CLI for the control plane's admin API:
// it registers cells and sets their state, hosts domains, splits and assigns
// hash ranges, pins subjects to cells, and shows where an address routes.
//
// Every call carries the operator token (--token or CELLMAIL_TOKEN) to the
// control plane (--controlplane or CELLMAIL_CONTROLPLANE). Commands that
// change where mail routes or what a cell takes ask for confirmation unless
// --yes is given, and preview the change with --dry-run. Output is a table,
// or with -o json one JSON document per command.
//
// Exit status: 0 on success, 1 when the API (or the operator at the prompt)
// refused, 2 on a usage error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
