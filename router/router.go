// Package router runs the stateless global router: it holds the whole
// placement map in memory (watch-fed, snapshotted to disk so it restarts
// while etcd is down) and sends every call to the owning cell
// (DESIGN.md §1, §3).
package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/routing"
	"github.com/cellmail/cellmail/internal/serve"
	"github.com/cellmail/cellmail/router/internal/httpproxy"
	"github.com/cellmail/cellmail/router/internal/imapproxy"
	"github.com/cellmail/cellmail/router/internal/smtpedge"
	"github.com/cellmail/cellmail/router/internal/submission"
)

// Config is what a router process needs.
type Config struct {
	// HTTPListen is the API address; ignored when HTTPListener is set.
	HTTPListen   string
	HTTPListener net.Listener
	// SMTPListen is the MX SMTP address; ignored when SMTPListener is set.
	// Empty: no SMTP.
	SMTPListen   string
	SMTPListener net.Listener
	// SubmissionListen is message submission with STARTTLS (port 587);
	// SubmissionsListen with implicit TLS (port 465). Both need TLS.
	// Ignored when the matching Listener is set; empty: none.
	SubmissionListen    string
	SubmissionListener  net.Listener
	SubmissionsListen   string
	SubmissionsListener net.Listener
	// IMAPListen is IMAP with STARTTLS (port 143); IMAPSListen with
	// implicit TLS (port 993). Both need TLS (LOGIN is refused in the
	// clear), except with IMAPAllowPlaintext (tests).
	IMAPListen         string
	IMAPListener       net.Listener
	IMAPSListen        string
	IMAPSListener      net.Listener
	IMAPAllowPlaintext bool
	// Etcd endpoints and key prefix of the placement map.
	Etcd   []string
	Prefix string
	// DataDir keeps the map snapshot.
	DataDir string
	// MaxStaleness is how old the map copy may be before /readyz fails.
	// Default 5 minutes: a router keeps serving from its copy while etcd is
	// down (cells fence any stale route), but says so.
	MaxStaleness time.Duration
	// TLS, when set, is offered with STARTTLS on the SMTP edge (and later
	// serves submission and IMAP).
	TLS *tls.Config
	// Hostname is the name the SMTP edge gives in its greeting and trace
	// fields (default mx.cellmail.local).
	Hostname string
	// Postmaster is the mailbox for the reserved name postmaster (RFC 5321
	// §4.5.1): RCPT TO:<postmaster> with no domain (SMTP edge and
	// submission), and on the edge postmaster@ any hosted domain without a
	// postmaster account of its own. An account of a hosted domain;
	// default postmaster@Hostname.
	Postmaster string
	Logger     *slog.Logger
	// Maps, when set, is used instead of a client the router makes and runs
	// itself (tests use it to hold a router's map still).
	Maps *client.Client
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.HTTPListen == "" && c.HTTPListener == nil {
		errs = append(errs, errors.New("HTTP listen address is required"))
	}
	if c.Maps == nil && len(c.Etcd) == 0 {
		errs = append(errs, errors.New("at least one etcd endpoint is required"))
	}
	if c.Maps == nil && c.DataDir == "" {
		errs = append(errs, errors.New("data directory is required"))
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("router config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxStaleness == 0 {
		cfg.MaxStaleness = 5 * time.Minute
	}
	maps := cfg.Maps
	if maps == nil {
		var err error
		maps, err = client.New(client.Config{
			Endpoints: cfg.Etcd, Prefix: cfg.Prefix, Logger: log.With("part", "mapclient"),
			Snapshot: client.FileSnapshot{Path: filepath.Join(cfg.DataDir, "map.snapshot")},
		})
		if err != nil {
			return err
		}
		defer maps.Close()
	}
	// The components run as one group: a listener that fails ends the
	// process; the map client is closed after every component returned.
	g := serve.NewGroup(ctx)
	defer g.Stop()
	if cfg.Maps == nil {
		g.Go("map watch", maps.Run)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	serve.MapGauges(reg, "cellmail_router", maps)
	// One routing contract for every edge (DESIGN.md §3, §4).
	wrongCell := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cellmail_router_wrong_cell_total", Help: "WRONG_CELL answers that made the router refresh a subject.",
	})
	reg.MustRegister(wrongCell)
	table := routing.New(maps, routing.Config{Logger: log.With("part", "routing"),
		OnWrongCell: func(routing.Target, *routing.WrongCell) { wrongCell.Inc() }})
	proxy := httpproxy.New(table, httpproxy.Config{Logger: log, Registerer: reg})
	if cfg.SMTPListener != nil || cfg.SMTPListen != "" {
		sln, err := serve.Listen(cfg.SMTPListener, cfg.SMTPListen)
		if err != nil {
			return fmt.Errorf("router: smtp: %w", err)
		}
		edge := smtpedge.New(table, smtpedge.Config{Domain: cfg.Hostname, Postmaster: cfg.Postmaster, TLS: cfg.TLS, Logger: log.With("part", "smtp")})
		g.Serve("smtp", func() error { return edge.Serve(serve.LimitListener(sln, 2000, 64)) }, edge.Close)
		log.Info("router SMTP serving", "smtp", sln.Addr().String())
	}

	if cfg.SubmissionListener != nil || cfg.SubmissionListen != "" || cfg.SubmissionsListener != nil || cfg.SubmissionsListen != "" {
		if cfg.TLS == nil {
			return errors.New("router: submission needs a TLS certificate")
		}
		sub := submission.New(table, submission.Config{Domain: cfg.Hostname, Postmaster: cfg.Postmaster, TLS: cfg.TLS, HTTP: &http.Client{Transport: proxy},
			Logger: log.With("part", "submission")})
		stop := sync.OnceValue(sub.Close) // one server behind both ports
		if cfg.SubmissionListener != nil || cfg.SubmissionListen != "" {
			ln, err := serve.Listen(cfg.SubmissionListener, cfg.SubmissionListen)
			if err != nil {
				return fmt.Errorf("router: submission: %w", err)
			}
			g.Serve("submission", func() error { return sub.Serve(serve.LimitListener(ln, 2000, 64)) }, stop)
			log.Info("router submission serving (STARTTLS)", "addr", ln.Addr().String())
		}
		if cfg.SubmissionsListener != nil || cfg.SubmissionsListen != "" {
			ln, err := serve.Listen(cfg.SubmissionsListener, cfg.SubmissionsListen)
			if err != nil {
				return fmt.Errorf("router: submissions: %w", err)
			}
			g.Serve("submissions", func() error { return sub.ServeTLS(serve.LimitListener(ln, 2000, 64)) }, stop)
			log.Info("router submission serving (implicit TLS)", "addr", ln.Addr().String())
		}
	}

	if cfg.IMAPListener != nil || cfg.IMAPListen != "" || cfg.IMAPSListener != nil || cfg.IMAPSListen != "" {
		ip := imapproxy.New(table, imapproxy.Config{TLS: cfg.TLS, AllowPlaintextLogin: cfg.IMAPAllowPlaintext,
			Logger: log.With("part", "imap")})
		stop := sync.OnceValue(ip.Close) // one proxy behind both ports
		if cfg.IMAPListener != nil || cfg.IMAPListen != "" {
			ln, err := serve.Listen(cfg.IMAPListener, cfg.IMAPListen)
			if err != nil {
				return fmt.Errorf("router: imap: %w", err)
			}
			g.Serve("imap", func() error { return ip.Serve(serve.LimitListener(ln, 20000, 256)) }, stop)
			log.Info("router IMAP serving (STARTTLS)", "addr", ln.Addr().String())
		}
		if cfg.IMAPSListener != nil || cfg.IMAPSListen != "" {
			if cfg.TLS == nil {
				return errors.New("router: IMAP with implicit TLS needs a certificate")
			}
			ln, err := serve.Listen(cfg.IMAPSListener, cfg.IMAPSListen)
			if err != nil {
				return fmt.Errorf("router: imaps: %w", err)
			}
			g.Serve("imaps", func() error { return ip.ServeTLS(serve.LimitListener(ln, 20000, 256)) }, stop)
			log.Info("router IMAP serving (implicit TLS)", "addr", ln.Addr().String())
		}
	}

	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	serve.Probes(mux, func() error {
		if maps.Map() == nil {
			return errors.New("no placement map yet")
		}
		// With etcd reachable, wait for the copy to be checked against it
		// (a snapshot may name old endpoints); with etcd down, serve the
		// snapshot after a few seconds.
		if !maps.Serving(5 * time.Second) {
			return errors.New("placement map from the snapshot not yet checked against etcd")
		}
		if s := maps.Staleness(); s > cfg.MaxStaleness {
			return fmt.Errorf("placement map %s stale", s.Round(time.Second))
		}
		return nil
	}, reg)
	ln, err := serve.Listen(cfg.HTTPListener, cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	log.Info("router serving", "http", ln.Addr().String())
	g.Go("http", func(ctx context.Context) error { return serve.Run(ctx, serve.LimitListener(ln, 10000, 256), mux) })
	return g.Wait()
}
