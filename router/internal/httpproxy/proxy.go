// Package httpproxy is the router's Connect/gRPC/HTTP reverse proxy: it
// finds the subject of each call (the authenticated user, or for calls
// before login the address the request names) and sends the call to the
// owning cell through the routing contract (controlplane/routing): with
// the epoch of the map it routed by, re-routed on WRONG_CELL (at most two
// hops) and held on MOVING, a buffered body replayed each time.
package httpproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// Router runs a call at the owning cell of an address (routing.Routes).
type Router interface {
	Do(ctx context.Context, address string, call func(ctx context.Context, tgt routing.Target) error) error
}

// Config tunes the proxy.
type Config struct {
	// MaxBodyBytes bounds the body of a call made with a session token.
	// Default 48 MiB.
	MaxBodyBytes int64
	// MaxPreLoginBodyBytes bounds the body of a call made without one
	// (Login, CreateAccount…), and is as much of a call's body as is kept
	// to be replayed on WRONG_CELL: a larger body (with a token) is
	// streamed to the cell, which checks the token before reading on.
	// Default PreLoginBodyBytes.
	MaxPreLoginBodyBytes int64
	Logger               *slog.Logger
	Registerer           prometheus.Registerer
}

// PreLoginBodyBytes is the default bound of a call made before login: the
// cell's own bound (api.PreLoginBodyBytes) is the same.
const PreLoginBodyBytes = 64 << 10

// Proxy is the handler.
type Proxy struct {
	routes     Router
	maxBody    int64
	maxPreBody int64
	log        *slog.Logger

	mu    sync.Mutex
	pools map[string]*http.Transport // per cell API host

	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// New makes the proxy.
func New(routes Router, cfg Config) *Proxy {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 48 << 20 // the mail API's largest request (a send at the size limit)
	}
	if cfg.MaxPreLoginBodyBytes == 0 {
		cfg.MaxPreLoginBodyBytes = PreLoginBodyBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		routes: routes, maxBody: cfg.MaxBodyBytes, maxPreBody: cfg.MaxPreLoginBodyBytes, log: cfg.Logger, pools: map[string]*http.Transport{},
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellmail_router_http_calls_total", Help: "Proxied calls by owning cell and outcome.",
		}, []string{"cell", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellmail_router_http_call_seconds", Help: "Proxied call latency.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"cell"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.calls, p.latency)
	}
	return p
}

// pool returns the connection pool of one cell: HTTP/2 over cleartext to
// the cell's internal API, multiplexed, kept warm.
func (p *Proxy) pool(host string) *http.Transport {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.pools[host]
	if !ok {
		protocols := new(http.Protocols)
		protocols.SetUnencryptedHTTP2(true)
		t = &http.Transport{
			Protocols:             protocols,
			DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
		}
		p.pools[host] = t
	}
	return t
}

// RoundTrip sends a request through the pool of its host.
func (p *Proxy) RoundTrip(r *http.Request) (*http.Response, error) {
	return p.pool(r.URL.Host).RoundTrip(r)
}

// errNotReplayable: the call must go to another cell (or the same one
// again), and part of its body has been streamed to the first already.
var errNotReplayable = errors.New("request body already streamed to another cell")

// requestBody is a call's body as the proxy forwards it: buffered whole
// (replayable on WRONG_CELL), or its first bytes and the rest still to be
// read from the client (stream, not replayable).
type requestBody struct {
	buf    []byte
	stream io.Reader
	length int64 // of the whole body, -1 when unknown
}

// readBody reads up to p.maxPreBody bytes of the body, and the rest only as
// it is forwarded (bounded by p.maxBody) when the call has a session token;
// a call without one is refused past p.maxPreBody while reading, so that
// nobody can make the router hold large bodies before logging in.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request, fromToken bool) (requestBody, bool) {
	limit := p.maxPreBody
	if fromToken {
		limit = p.maxBody
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	buf, err := io.ReadAll(io.LimitReader(body, p.maxPreBody+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, r, http.StatusRequestEntityTooLarge, "resource_exhausted", tooLarge(limit, fromToken))
			return requestBody{}, false
		}
		writeError(w, r, http.StatusBadRequest, "invalid_argument", "request body could not be read")
		return requestBody{}, false
	}
	if int64(len(buf)) <= p.maxPreBody {
		return requestBody{buf: buf, length: int64(len(buf))}, true
	}
	if !fromToken {
		writeError(w, r, http.StatusRequestEntityTooLarge, "resource_exhausted", tooLarge(limit, false))
		return requestBody{}, false
	}
	return requestBody{buf: buf, stream: body, length: r.ContentLength}, true
}

func tooLarge(limit int64, fromToken bool) string {
	if fromToken {
		return fmt.Sprintf("request body over %d bytes", limit)
	}
	return fmt.Sprintf("request body over %d bytes: calls made before login are limited to that", limit)
}

// ServeHTTP routes one call.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body requestBody
	address, fromToken := subjectFromToken(r.Header.Get("Authorization"))
	switch {
	case r.Method == http.MethodGet && fromToken:
		// Downloads: no body to replay.
	case r.Method != http.MethodPost:
		writeError(w, r, http.StatusMethodNotAllowed, "unimplemented", "the router routes POST calls, and GET with a session token")
		return
	default:
		var ok bool
		if body, ok = p.readBody(w, r, fromToken); !ok {
			return
		}
		if !fromToken {
			var err error
			if address, err = addressFromBody(r.URL.Path, r.Header.Get("Content-Type"), body.buf); err != nil {
				if errors.Is(err, errNeedsLogin) {
					writeError(w, r, http.StatusUnauthorized, "unauthenticated", err.Error())
					return
				}
				writeError(w, r, http.StatusBadRequest, "invalid_argument", err.Error())
				return
			}
		}
	}
	start := time.Now()
	var last routing.Target
	err := p.routes.Do(r.Context(), address, func(ctx context.Context, tgt routing.Target) error {
		if last.Hop != 0 && body.stream != nil {
			// Part of the body went to the first cell: the client sends it
			// again, to the owner the router now knows.
			return errNotReplayable
		}
		last = tgt
		return p.forward(w, r, body, tgt)
	})
	if err != nil {
		p.routeError(w, r, err)
		return
	}
	p.latency.WithLabelValues(last.Cell.Name).Observe(time.Since(start).Seconds())
}

// forward proxies the call to tgt. It returns the cell's routing answer
// (*routing.WrongCell, *routing.Moving), having written nothing, when the
// cell does not serve the subject; else nil, the answer written.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, body requestBody, tgt routing.Target) error {
	if tgt.Cell.APIURL == "" {
		return fmt.Errorf("%w: %s", routing.ErrNoEndpoint, tgt.Cell.Name)
	}
	u, err := url.Parse(tgt.Cell.APIURL)
	if err != nil {
		writeError(w, r, http.StatusBadGateway, "unavailable", "owning cell has a bad endpoint")
		return nil
	}
	var routed error
	rp := &httputil.ReverseProxy{
		Transport:     p,
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = u.Host
			pr.SetXForwarded()
			routing.SetEpoch(pr.Out.Header, tgt.Epoch)
			if r.Method == http.MethodPost {
				pr.Out.Body = io.NopCloser(bytes.NewReader(body.buf))
				if body.stream != nil {
					// Closing the cell's request closes the client's body:
					// a cell that answers without reading it all (a
					// revoked token) makes the transport abort the upload,
					// and its wait for a Read of the client's stream that
					// flow control keeps blocked must end (a hang seen
					// under load in TestPreLoginBodyLimit).
					pr.Out.Body = struct {
						io.Reader
						io.Closer
					}{io.MultiReader(bytes.NewReader(body.buf), body.stream), r.Body}
				}
				pr.Out.ContentLength = body.length
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if rerr := routing.FromHeader(resp.Header); rerr != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
				resp.Body.Close()
				routed = rerr
				return rerr
			}
			resp.Header.Set(routing.HeaderHops, strconv.Itoa(tgt.Hop))
			p.calls.WithLabelValues(tgt.Cell.Name, outcome(resp)).Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if routed != nil {
				return
			}
			p.calls.WithLabelValues(tgt.Cell.Name, "unreachable").Inc()
			p.log.Warn("owning cell unreachable", "cell", tgt.Cell.Name, "err", err)
			// Never re-route: no other cell has this subject's data.
			writeError(w, r, http.StatusServiceUnavailable, "unavailable", "the cell that holds this account is unavailable; retry later")
		},
	}
	rp.ServeHTTP(w, r)
	return routed
}

func outcome(resp *http.Response) string {
	if resp.StatusCode == http.StatusOK {
		if s := resp.Header.Get("Grpc-Status"); s != "" && s != "0" {
			return "error"
		}
		return "ok"
	}
	return "error"
}

// routeError answers a call that could not be routed.
func (p *Proxy) routeError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, placement.ErrInvalidAddress):
		writeError(w, r, http.StatusBadRequest, "invalid_argument", err.Error())
	case errors.Is(err, placement.ErrUnknownDomain):
		writeError(w, r, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, client.ErrRateLimited):
		writeError(w, r, http.StatusTooManyRequests, "unavailable", "routing map refresh rate limited; retry")
	case errors.Is(err, errNotReplayable):
		writeError(w, r, http.StatusServiceUnavailable, "unavailable", "the account moved to another cell; retry")
	case errors.Is(err, routing.ErrWrongCell), errors.Is(err, routing.ErrMoving):
		// Still not served after the hops and waits the contract allows.
		p.log.Info("call not routed to a serving cell", "err", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, r, http.StatusServiceUnavailable, "unavailable", "the account is moving between cells; retry")
	default:
		p.log.Warn("cannot route", "err", err)
		writeError(w, r, http.StatusServiceUnavailable, "unavailable", "no route to the owning cell; retry later")
	}
}

var grpcCodes = map[string]string{
	"invalid_argument": "3", "not_found": "5", "unauthenticated": "16", "resource_exhausted": "8", "failed_precondition": "9",
	"unimplemented": "12", "unavailable": "14",
}

// writeError answers in the protocol of the call: a Connect error body, or
// a trailers-only gRPC status.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.Header().Set("Grpc-Status", grpcCodes[code])
		w.Header().Set("Grpc-Message", url.PathEscape(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": msg})
}
