// Command controlplaned runs a control-plane instance: the admin API over
// the placement map in etcd. Run several for availability; one leads moves.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cellmail/cellmail/cmd/internal/cli"
	"github.com/cellmail/cellmail/controlplane"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "controlplaned:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("controlplaned", flag.ContinueOnError)
	listen := fs.String("listen", cli.Env("CELLMAIL_LISTEN", "127.0.0.1:7400"), "admin API address (env CELLMAIL_LISTEN)")
	etcd := fs.String("etcd", cli.Env("CELLMAIL_ETCD", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated (env CELLMAIL_ETCD)")
	admin := fs.String("admin-token", cli.Env("CELLMAIL_ADMIN_TOKEN", ""), "operator bearer token, or @file (env CELLMAIL_ADMIN_TOKEN)")
	agent := fs.String("agent-token", cli.Env("CELLMAIL_AGENT_TOKEN", ""), "token sent to cells, or @file (env CELLMAIL_AGENT_TOKEN)")
	logger := cli.LogFlags(fs, os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	cfg := controlplane.Config{Listen: *listen, Etcd: cli.List(*etcd), Logger: log}
	if cfg.AdminToken, err = cli.Secret(*admin); err != nil {
		return err
	}
	if cfg.AgentToken, err = cli.Secret(*agent); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return controlplane.Run(ctx, cfg)
}
