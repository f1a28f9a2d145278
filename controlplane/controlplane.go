// Package controlplane runs the control plane: the admin API over the
// placement map in etcd, and the leader election under which user moves
// will run. See DESIGN.md §1–2.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/internal/api"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/internal/serve"
)

// Config is what a control-plane process needs.
type Config struct {
	// Listen is the admin API's address (host:port); ignored when Listener
	// is set.
	Listen   string
	Listener net.Listener
	// Etcd endpoints and key prefix (store.DefaultPrefix when empty).
	Etcd   []string
	Prefix string
	// AdminToken is the bearer token operators (mailctl, Terraform) send.
	AdminToken string
	// AgentToken is the bearer token the control plane sends to cells.
	AgentToken string
	// Instance names this process in elections (hostname when empty).
	Instance string
	Logger   *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" && c.Listener == nil {
		errs = append(errs, errors.New("listen address is required"))
	}
	if len(c.Etcd) == 0 {
		errs = append(errs, errors.New("at least one etcd endpoint is required"))
	}
	if len(c.AdminToken) < 16 {
		errs = append(errs, errors.New("admin token of at least 16 characters is required"))
	}
	if len(c.AgentToken) < 16 {
		errs = append(errs, errors.New("agent token of at least 16 characters is required"))
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("controlplane config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Instance == "" {
		cfg.Instance, _ = os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", cfg.Instance, os.Getpid())
	}
	st, err := store.Open(store.Config{Endpoints: cfg.Etcd, Prefix: cfg.Prefix}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	maps, err := client.New(client.Config{Endpoints: cfg.Etcd, Prefix: cfg.Prefix, Logger: log.With("part", "mapclient")})
	if err != nil {
		return err
	}
	defer maps.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = maps.Run(ctx) }()
	defer func() { <-done }()
	hc := &http.Client{Timeout: 15 * time.Second}
	svc := api.NewService(st, maps, api.NewAgentClient(hc, cfg.AgentToken), log)
	go runLeader(ctx, st, svc, cfg.Instance, log)

	reg := prometheus.NewRegistry()
	serve.MapGauges(reg, "cellmail_controlplane", maps)

	mux := http.NewServeMux()
	mux.Handle(controlplanev1connect.NewControlPlaneServiceHandler(svc,
		connect.WithInterceptors(api.NewAuthInterceptor(cfg.AdminToken, log)),
		connect.WithReadMaxBytes(1<<20)))
	serve.Probes(mux, func() error {
		if maps.Map() == nil || maps.Staleness() > 30*time.Second {
			return errors.New("map not current")
		}
		return nil
	}, reg)
	ln, err := serve.Listen(cfg.Listener, cfg.Listen)
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	log.Info("control plane serving", "addr", ln.Addr().String(), "etcd", cfg.Etcd)
	return serve.Run(ctx, ln, mux)
}

// staleFreeze is when a freeze is surely abandoned: a live change holds one
// for at most the cell count timeout (10 s) plus two transactions.
const staleFreeze = 2 * time.Minute

// runLeader campaigns for the mover's leadership and holds it while it
// lasts: the leader thaws abandoned freezes; user moves (a later issue) will
// run under the leadership's context too.
func runLeader(ctx context.Context, st *store.Store, svc *api.Service, instance string, log *slog.Logger) {
	for ctx.Err() == nil {
		l, err := st.Campaign(ctx, "mover", instance, 10)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("mover election failed; trying again", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		log.Info("leading the mover", "instance", instance)
		sweep := time.NewTicker(30 * time.Second)
	lead:
		for {
			select {
			case <-l.Context().Done():
				break lead
			case <-sweep.C:
				if n, err := svc.ThawStale(l.Context(), staleFreeze); err != nil {
					log.Warn("freeze sweep failed", "err", err)
				} else if n > 0 {
					log.Warn("thawed freezes left by a failed change", "count", n)
				}
			}
		}
		sweep.Stop()
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = l.Resign(rctx)
			cancel()
			return
		}
		log.Warn("mover leadership lost", "instance", instance)
	}
}
