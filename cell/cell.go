// Package cell runs one cell: a self-contained slice of users with its own
// stores and protocol endpoints, serving only the subjects the placement map
// gives it (DESIGN.md §1, §3).
package cell

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/internal/api"
	"github.com/cellmail/cellmail/cell/internal/ownership"
	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
)

// Config is what a cell process needs.
type Config struct {
	// Name of the cell as registered in the control plane.
	Name string
	// Listen is the API's address; ignored when Listener is set.
	Listen   string
	Listener net.Listener
	// Etcd endpoints and key prefix of the placement map.
	Etcd   []string
	Prefix string
	// DataDir keeps the cell's local state (the map snapshot).
	DataDir string
	// AgentToken authenticates the control plane's calls.
	AgentToken string
	// Instance names this process in liveness keys (host-pid when empty).
	Instance string
	Logger   *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("cell name is required"))
	}
	if c.Listen == "" && c.Listener == nil {
		errs = append(errs, errors.New("listen address is required"))
	}
	if len(c.Etcd) == 0 {
		errs = append(errs, errors.New("at least one etcd endpoint is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data directory is required"))
	}
	if len(c.AgentToken) < 16 {
		errs = append(errs, errors.New("agent token of at least 16 characters is required"))
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("cell config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("cell", cfg.Name)
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("cell: data dir: %w", err)
	}
	maps, err := client.New(client.Config{
		Endpoints: cfg.Etcd, Prefix: cfg.Prefix, Logger: log.With("part", "mapclient"),
		Snapshot: client.FileSnapshot{Path: filepath.Join(cfg.DataDir, "map.snapshot")},
	})
	if err != nil {
		return err
	}
	defer maps.Close()

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("cell: listen %s: %w", cfg.Listen, err)
		}
	}
	apiURL := "http://" + ln.Addr().String()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bg := make(chan struct{}, 2)
	go func() { defer func() { bg <- struct{}{} }(); _ = maps.Run(ctx) }()
	go func() {
		defer func() { bg <- struct{}{} }()
		_ = maps.KeepAlive(ctx, cfg.Name, cfg.Instance, apiURL, 10*time.Second)
	}()
	defer func() { <-bg; <-bg }()

	fence := ownership.New(cfg.Name, maps)
	srv := api.NewServer(fence, maps, api.NoSubjects{}, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cellmail_cell_map_staleness_seconds", Help: "Seconds since the cell's map copy was last known current.",
	}, func() float64 { return maps.Staleness().Seconds() }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cellmail_cell_map_epoch", Help: "Epoch of the cell's map copy.",
	}, func() float64 { return float64(maps.Epoch()) }))

	mux := http.NewServeMux()
	limits := []connect.HandlerOption{connect.WithReadMaxBytes(1 << 20)}
	mux.Handle(cellv1connect.NewCellServiceHandler(srv, append(limits, connect.WithInterceptors(srv.FenceInterceptor()))...))
	mux.Handle(controlplanev1connect.NewCellAgentServiceHandler(srv, append(limits,
		connect.WithInterceptors(api.AgentAuthInterceptor(cfg.AgentToken), srv.FenceInterceptor()))...))
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if maps.Map() == nil {
			http.Error(w, "no placement map yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: protocols, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	log.Info("cell serving", "api", apiURL, "instance", cfg.Instance)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("cell: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	return hs.Shutdown(sctx)
}
