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

	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/internal/api"
	"github.com/cellmail/cellmail/cell/internal/ownership"
	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/internal/serve"
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

	ln, err := serve.Listen(cfg.Listener, cfg.Listen)
	if err != nil {
		return fmt.Errorf("cell: %w", err)
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
	serve.Gauge(reg, "cellmail_cell_map_staleness_seconds", "Seconds since the cell's map copy was last known current.",
		func() float64 { return maps.Staleness().Seconds() })
	serve.Gauge(reg, "cellmail_cell_map_epoch", "Epoch of the cell's map copy.", func() float64 { return float64(maps.Epoch()) })

	mux := http.NewServeMux()
	limits := []connect.HandlerOption{connect.WithReadMaxBytes(1 << 20)}
	mux.Handle(cellv1connect.NewCellServiceHandler(srv, append(limits, connect.WithInterceptors(srv.FenceInterceptor()))...))
	mux.Handle(controlplanev1connect.NewCellAgentServiceHandler(srv, append(limits,
		connect.WithInterceptors(api.AgentAuthInterceptor(cfg.AgentToken), srv.FenceInterceptor()))...))
	serve.Probes(mux, func() error {
		if maps.Map() == nil {
			return errors.New("no placement map yet")
		}
		return nil
	}, reg)
	log.Info("cell serving", "api", apiURL, "instance", cfg.Instance)
	return serve.Run(ctx, ln, mux)
}
