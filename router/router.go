// Package router runs the stateless global router: it holds the whole
// placement map in memory (watch-fed, snapshotted to disk so it restarts
// while etcd is down) and sends every call to the owning cell
// (DESIGN.md §1, §3).
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/router/internal/httpproxy"
	"github.com/cellmail/cellmail/router/internal/route"
)

// Config is what a router process needs.
type Config struct {
	// HTTPListen is the API address; ignored when HTTPListener is set.
	HTTPListen   string
	HTTPListener net.Listener
	// Etcd endpoints and key prefix of the placement map.
	Etcd   []string
	Prefix string
	// DataDir keeps the map snapshot.
	DataDir string
	// MaxStaleness is how old the map copy may be before /readyz fails.
	// Default 5 minutes: a router keeps serving from its copy while etcd is
	// down (cells fence any stale route), but says so.
	MaxStaleness time.Duration
	Logger       *slog.Logger
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
		done := make(chan struct{})
		go func() { defer close(done); _ = maps.Run(ctx) }()
		defer func() { <-done }()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cellmail_router_map_staleness_seconds", Help: "Seconds since the router's map copy was last known current.",
	}, func() float64 { return maps.Staleness().Seconds() }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cellmail_router_map_epoch", Help: "Epoch of the router's map copy.",
	}, func() float64 { return float64(maps.Epoch()) }))
	proxy := httpproxy.New(route.New(maps), httpproxy.Config{Logger: log, Registerer: reg})

	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if maps.Map() == nil {
			http.Error(w, "no placement map yet", http.StatusServiceUnavailable)
			return
		}
		if s := maps.Staleness(); s > cfg.MaxStaleness {
			http.Error(w, fmt.Sprintf("placement map %s stale", s.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	ln := cfg.HTTPListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			return fmt.Errorf("router: listen %s: %w", cfg.HTTPListen, err)
		}
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: protocols, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	log.Info("router serving", "http", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("router: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	return hs.Shutdown(sctx)
}
