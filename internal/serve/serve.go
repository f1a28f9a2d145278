// Package serve runs the HTTP servers of cellmail's services: HTTP/1.1 and
// cleartext HTTP/2 on one listener (Connect, gRPC and gRPC-Web alike), the
// /livez, /readyz and /metrics endpoints, and a graceful stop.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Probes adds /livez (the process answers), /readyz (ready returns nil)
// and /metrics (reg) to mux.
func Probes(mux *http.ServeMux, ready func() error, reg *prometheus.Registry) {
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// Gauge registers a gauge read from f at scrape time.
func Gauge(reg *prometheus.Registry, name, help string, f func() float64) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Run serves h on ln until ctx ends, then shuts down gracefully (5 s).
func Run(ctx context.Context, ln net.Listener, h http.Handler) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: h, Protocols: protocols, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// Listen returns ln when set, else listens on addr.
func Listen(ln net.Listener, addr string) (net.Listener, error) {
	if ln != nil {
		return ln, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// MapCopy is a watch-fed placement map copy, as the metrics see it.
type MapCopy interface {
	Staleness() time.Duration
	Epoch() uint64
}

// MapGauges registers <prefix>_map_staleness_seconds and <prefix>_map_epoch
// for a service's map copy.
func MapGauges(reg *prometheus.Registry, prefix string, maps MapCopy) {
	Gauge(reg, prefix+"_map_staleness_seconds", "Seconds since this process's map copy was last known current.",
		func() float64 { return maps.Staleness().Seconds() })
	Gauge(reg, prefix+"_map_epoch", "Epoch of this process's map copy.", func() float64 { return float64(maps.Epoch()) })
}
