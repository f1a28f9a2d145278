// Command routerd runs a router instance: stateless, any number of them.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cellmail/cellmail/cmd/internal/cli"
	"github.com/cellmail/cellmail/router"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "routerd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("routerd", flag.ContinueOnError)
	listen := fs.String("http", cli.Env("CELLMAIL_HTTP", "127.0.0.1:7480"), "API address (env CELLMAIL_HTTP)")
	smtpAddr := fs.String("smtp", cli.Env("CELLMAIL_SMTP", ""), "MX SMTP address, empty for none (env CELLMAIL_SMTP)")
	subAddr := fs.String("submission", cli.Env("CELLMAIL_SUBMISSION", ""), "submission address with STARTTLS (587), empty for none; needs -tls-cert (env CELLMAIL_SUBMISSION)")
	subsAddr := fs.String("submissions", cli.Env("CELLMAIL_SUBMISSIONS", ""), "submission address with implicit TLS (465), empty for none (env CELLMAIL_SUBMISSIONS)")
	imapAddr := fs.String("imap", cli.Env("CELLMAIL_IMAP", ""), "IMAP address with STARTTLS (143), empty for none (env CELLMAIL_IMAP)")
	imapsAddr := fs.String("imaps", cli.Env("CELLMAIL_IMAPS", ""), "IMAP address with implicit TLS (993), empty for none (env CELLMAIL_IMAPS)")
	etcd := fs.String("etcd", cli.Env("CELLMAIL_ETCD", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated (env CELLMAIL_ETCD)")
	dataDir := fs.String("data-dir", cli.Env("CELLMAIL_DATA_DIR", ""), "map snapshot directory (env CELLMAIL_DATA_DIR)")
	cert := fs.String("tls-cert", cli.Env("CELLMAIL_TLS_CERT", ""), "PEM certificate chain for STARTTLS (env CELLMAIL_TLS_CERT)")
	key := fs.String("tls-key", cli.Env("CELLMAIL_TLS_KEY", ""), "PEM private key of -tls-cert (env CELLMAIL_TLS_KEY)")
	hostname := fs.String("hostname", cli.Env("CELLMAIL_HOSTNAME", "mx.cellmail.local"), "name in the SMTP greeting and trace fields (env CELLMAIL_HOSTNAME)")
	postmaster := fs.String("postmaster", cli.Env("CELLMAIL_POSTMASTER", ""), "mailbox for mail to postmaster (RFC 5321 §4.5.1): <postmaster> and postmaster@ hosted domains without such an account; default postmaster@<hostname> (env CELLMAIL_POSTMASTER)")
	logger := cli.LogFlags(fs, os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	cfg := router.Config{HTTPListen: *listen, SMTPListen: *smtpAddr, Etcd: cli.List(*etcd), DataDir: *dataDir,
		SubmissionListen: *subAddr, SubmissionsListen: *subsAddr, IMAPListen: *imapAddr, IMAPSListen: *imapsAddr, Hostname: *hostname, Postmaster: *postmaster, Logger: log}
	if *cert != "" || *key != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return router.Run(ctx, cfg)
}
