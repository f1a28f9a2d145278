// Command celld runs one cell instance.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cellmail/cellmail/cell"
	"github.com/cellmail/cellmail/cmd/internal/cli"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "celld:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("celld", flag.ContinueOnError)
	name := fs.String("name", cli.Env("CELLMAIL_CELL", ""), "cell name as registered (env CELLMAIL_CELL)")
	listen := fs.String("listen", cli.Env("CELLMAIL_LISTEN", "127.0.0.1:7410"), "API address (env CELLMAIL_LISTEN)")
	etcd := fs.String("etcd", cli.Env("CELLMAIL_ETCD", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated (env CELLMAIL_ETCD)")
	dataDir := fs.String("data-dir", cli.Env("CELLMAIL_DATA_DIR", ""), "local state directory (env CELLMAIL_DATA_DIR)")
	agent := fs.String("agent-token", cli.Env("CELLMAIL_AGENT_TOKEN", ""), "control plane's token, or @file (env CELLMAIL_AGENT_TOKEN)")
	logger := cli.LogFlags(fs, os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	cfg := cell.Config{Name: *name, Listen: *listen, Etcd: cli.List(*etcd), DataDir: *dataDir, Logger: log}
	if cfg.AgentToken, err = cli.Secret(*agent); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cell.Run(ctx, cfg)
}
