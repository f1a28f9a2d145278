// Command celld runs one cell instance.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
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
	operator := fs.String("operator-token", cli.Env("CELLMAIL_OPERATOR_TOKEN", ""), "token that may create accounts, or @file (env CELLMAIL_OPERATOR_TOKEN)")
	db := fs.String("database", cli.Env("CELLMAIL_DATABASE", ""), "PostgreSQL/YugabyteDB URL, or @file (env CELLMAIL_DATABASE)")
	redis := fs.String("redis", cli.Env("CELLMAIL_REDIS", "127.0.0.1:6379"), "Redis address (env CELLMAIL_REDIS)")
	lmtp := fs.String("lmtp", cli.Env("CELLMAIL_LMTP", ""), "LMTP address for inbound mail from the router (env CELLMAIL_LMTP)")
	imapAddr := fs.String("imap", cli.Env("CELLMAIL_IMAP", ""), "internal IMAP address the router's IMAP proxy connects to (env CELLMAIL_IMAP)")
	blobs := fs.String("blob-dir", cli.Env("CELLMAIL_BLOB_DIR", ""), "blob store directory (default <data-dir>/blobs; env CELLMAIL_BLOB_DIR)")
	s3Endpoint := fs.String("blob-s3-endpoint", cli.Env("CELLMAIL_BLOB_S3_ENDPOINT", ""),
		"S3 server host:port; set, with -blob-s3-bucket, to keep blobs in S3 instead of -blob-dir; credentials from env CELLMAIL_BLOB_S3_ACCESS_KEY and CELLMAIL_BLOB_S3_SECRET_KEY (or @file) (env CELLMAIL_BLOB_S3_ENDPOINT)")
	s3Bucket := fs.String("blob-s3-bucket", cli.Env("CELLMAIL_BLOB_S3_BUCKET", ""), "S3 bucket of the cell's blobs; it must exist (env CELLMAIL_BLOB_S3_BUCKET)")
	s3Prefix := fs.String("blob-s3-prefix", cli.Env("CELLMAIL_BLOB_S3_PREFIX", ""), "key prefix ending in /, for cells sharing a bucket (env CELLMAIL_BLOB_S3_PREFIX)")
	s3Region := fs.String("blob-s3-region", cli.Env("CELLMAIL_BLOB_S3_REGION", ""), "the bucket's region; empty: asked of the server at start, without retries (env CELLMAIL_BLOB_S3_REGION)")
	s3TLSDefault, err := strconv.ParseBool(cli.Env("CELLMAIL_BLOB_S3_TLS", "true"))
	if err != nil {
		return fmt.Errorf("CELLMAIL_BLOB_S3_TLS: %w", err)
	}
	s3TLS := fs.Bool("blob-s3-tls", s3TLSDefault, "reach the S3 server over https; false: http (env CELLMAIL_BLOB_S3_TLS)")
	kafka := fs.String("kafka", cli.Env("CELLMAIL_KAFKA", ""), "Kafka/Redpanda brokers, comma-separated; empty: the pipeline reads the spool table (env CELLMAIL_KAFKA)")
	role := fs.String("role", cli.Env("CELLMAIL_ROLE", cell.RoleAll), "all, front (API, LMTP, relay) or worker (inbound pipeline) (env CELLMAIL_ROLE)")
	dns := fs.String("dns", cli.Env("CELLMAIL_DNS", ""), "DNS resolver host:port for SPF/DKIM/DMARC; empty: the system's (env CELLMAIL_DNS)")
	clamd := fs.String("clamd", cli.Env("CELLMAIL_CLAMD", ""), "clamd address (host:port or socket path); empty: no virus scan (env CELLMAIL_CLAMD)")
	authserv := fs.String("authserv-id", cli.Env("CELLMAIL_AUTHSERV_ID", "cellmail"), "name in Authentication-Results (env CELLMAIL_AUTHSERV_ID)")
	hostname := fs.String("hostname", cli.Env("CELLMAIL_HOSTNAME", ""), "name in outbound SMTP and bounces (default <name>.cellmail.local; env CELLMAIL_HOSTNAME)")
	outPort := fs.Int("outbound-port", 25, "port of remote mail exchangers (tests use another)")
	proxies := fs.String("imap-trusted-proxies", cli.Env("CELLMAIL_IMAP_TRUSTED_PROXIES", ""),
		"CIDRs of the routers whose IMAP ID x-originating-ip names the client, comma-separated; empty: loopback and private (env CELLMAIL_IMAP_TRUSTED_PROXIES)")
	logger := cli.LogFlags(fs, os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	cfg := cell.Config{Name: *name, Listen: *listen, Etcd: cli.List(*etcd), DataDir: *dataDir, RedisAddr: *redis,
		BlobDir: *blobs, LMTPListen: *lmtp, IMAPListen: *imapAddr, Kafka: cli.List(*kafka), Role: *role, DNS: *dns, Clamd: *clamd,
		AuthServID: *authserv, Hostname: *hostname, OutboundPort: *outPort, Logger: log}
	for _, p := range cli.List(*proxies) {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return fmt.Errorf("-imap-trusted-proxies: %w", err)
		}
		cfg.IMAPTrustedProxies = append(cfg.IMAPTrustedProxies, pfx)
	}
	if *s3Endpoint != "" || *s3Bucket != "" {
		cfg.BlobS3 = &cell.BlobBucket{Endpoint: *s3Endpoint, TLS: *s3TLS, Region: *s3Region, Bucket: *s3Bucket, Prefix: *s3Prefix}
		// Secrets from the environment only, never flags (process listings).
		if cfg.BlobS3.AccessKey, err = cli.Secret(os.Getenv("CELLMAIL_BLOB_S3_ACCESS_KEY")); err != nil {
			return err
		}
		if cfg.BlobS3.SecretKey, err = cli.Secret(os.Getenv("CELLMAIL_BLOB_S3_SECRET_KEY")); err != nil {
			return err
		}
	}
	if cfg.AgentToken, err = cli.Secret(*agent); err != nil {
		return err
	}
	if cfg.OperatorToken, err = cli.Secret(*operator); err != nil {
		return err
	}
	if cfg.DatabaseURL, err = cli.Secret(*db); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cell.Run(ctx, cfg)
}
