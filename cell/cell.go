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
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cell/internal/api"
	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/cache"
	"github.com/cellmail/cellmail/cell/internal/clamd"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/dispatch"
	"github.com/cellmail/cellmail/cell/internal/imapd"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/cell/internal/msgauth"
	"github.com/cellmail/cellmail/cell/internal/outbound"
	"github.com/cellmail/cellmail/cell/internal/ownership"
	"github.com/cellmail/cellmail/cell/internal/queue"
	"github.com/cellmail/cellmail/cell/internal/smtpd"
	"github.com/cellmail/cellmail/controlplane/client"
	cpv1 "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/routing"
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
	// AgentToken authenticates the control plane's and other cells' calls.
	AgentToken string
	// OperatorToken authorises account creation.
	OperatorToken string
	// DatabaseURL is the cell's YugabyteDB (or PostgreSQL) database.
	DatabaseURL string
	// RedisAddr is the cell's Redis (cache, rate limits, wake-ups).
	RedisAddr string
	// BlobDir is the filesystem blob store's root (default DataDir/blobs).
	BlobDir string
	// BlobS3, when set, keeps the cell's blobs in an S3 bucket instead of
	// files under BlobDir (which must then be empty).
	BlobS3 *BlobBucket
	// LMTPListen is the LMTP endpoint (inbound mail from the router's SMTP
	// edge); ignored when LMTPListener is set. Empty: no LMTP.
	LMTPListen   string
	LMTPListener net.Listener
	// IMAPListen is the cell's internal IMAP endpoint (the router's IMAP
	// proxy splices clients to it); ignored when IMAPListener is set.
	// Empty: no IMAP.
	IMAPListen   string
	IMAPListener net.Listener
	// IMAPTrustedProxies are the peers (the routers) whose first ID
	// "x-originating-ip" names the IMAP client, for the login limits;
	// nil: loopback and private addresses. A router that reaches the cell
	// from elsewhere must be listed, or every login counts against the
	// router's own address (runbooks/login-limits.md).
	IMAPTrustedProxies []netip.Prefix
	// Kafka lists the brokers of the cell's queue (DESIGN.md §4); empty: the
	// pipeline runs straight from the spool table.
	Kafka []string
	// Role is what this process does: RoleAll (default), RoleFront (API,
	// LMTP and the spool relay) or RoleWorker (the inbound pipeline, as a
	// member of the cell's consumer group; needs Kafka).
	Role string
	// DNS is the resolver (host:port) for SPF, DKIM and DMARC; empty: the
	// system's.
	DNS string
	// Clamd is clamd's address (host:port or socket path); empty: no virus
	// scan.
	Clamd string
	// AuthServID names this service in Authentication-Results (default
	// "cellmail").
	AuthServID string
	// Hostname is this cell's name in outbound SMTP (EHLO), bounces and
	// Message-IDs (default <name>.cellmail.local).
	Hostname string
	// OutboundPort is the port remote mail exchangers are reached on (25;
	// tests use their own).
	OutboundPort int
	// SendLimit is how many messages an account may send per 10 minutes
	// (default 100; recipients: ten times as many per hour).
	SendLimit int
	// Instance names this process in liveness keys (host-pid when empty).
	Instance string
	// LoginClock is the login limits' clock (nil: time.Now); tests move
	// it instead of waiting for delays to end.
	LoginClock func() time.Time
	Logger     *slog.Logger
}

// BlobBucket is an S3-compatible bucket for a cell's blobs
// (runbooks/blob-store.md). Every process of the cell must name the same
// bucket and prefix.
type BlobBucket struct {
	// Endpoint is the server's host:port, without scheme.
	Endpoint string
	// TLS selects https.
	TLS bool
	// Region is the bucket's region; empty: asked of the server at start
	// (a request without retries).
	Region string
	// Bucket must exist.
	Bucket string
	// Prefix, ending in /, is prepended to every key, so that cells can
	// share a bucket; empty: the bucket is the cell's alone.
	Prefix string
	// AccessKey and SecretKey are the credentials.
	AccessKey, SecretKey string
}

// config is the blob store's configuration of b.
func (b *BlobBucket) config() blobstore.S3Config {
	return blobstore.S3Config{Endpoint: b.Endpoint, TLS: b.TLS, Region: b.Region, Bucket: b.Bucket, Prefix: b.Prefix,
		AccessKey: b.AccessKey, SecretKey: b.SecretKey}
}

// Roles of a cell process.
const (
	RoleAll    = "all"
	RoleFront  = "front"
	RoleWorker = "worker"
)

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
	if len(c.OperatorToken) < 16 {
		errs = append(errs, errors.New("operator token of at least 16 characters is required"))
	}
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("database URL is required"))
	}
	if c.RedisAddr == "" {
		errs = append(errs, errors.New("redis address is required"))
	}
	if c.BlobS3 != nil {
		if c.BlobDir != "" {
			errs = append(errs, errors.New("blob directory and S3 bucket both set: a cell keeps its blobs in one place"))
		}
		cfg := c.BlobS3.config()
		if err := cfg.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("blob store: %w", err))
		}
	}
	switch c.Role {
	case "", RoleAll, RoleFront:
	case RoleWorker:
		if len(c.Kafka) == 0 {
			errs = append(errs, errors.New("the worker role needs Kafka brokers"))
		}
	default:
		errs = append(errs, fmt.Errorf("role %q: want all, front or worker", c.Role))
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

	store, err := mailstore.Open(ctx, cfg.DatabaseURL, log.With("part", "mailstore"))
	if err != nil {
		return fmt.Errorf("cell: %w", err)
	}
	defer store.Close()
	files, err := openBlobs(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("cell: %w", err)
	}
	// Readers see the files and the small blobs delivery keeps in the
	// metadata store (delivery.InlineMax).
	blobs := blobstore.Tiered{Store: files, Inline: store}
	kv, err := cache.New(ctx, cache.Config{Addr: cfg.RedisAddr, Logger: log.With("part", "cache")})
	if err != nil {
		return fmt.Errorf("cell: cache: %w", err)
	}
	defer kv.Close()

	var prod *queue.Producer
	if len(cfg.Kafka) > 0 {
		if prod, err = queue.NewProducer(cfg.Kafka, log.With("part", "queue")); err != nil {
			return fmt.Errorf("cell: %w", err)
		}
		defer prod.Close()
	}
	// Every component from here on runs in the group: the first to fail
	// ends the process, and the adapters above are closed (deferred) only
	// after every component has returned.
	g := serve.NewGroup(ctx)
	defer g.Stop()
	ctx = g.Context()
	g.Go("map watch", maps.Run)
	if cfg.Role != RoleWorker { // a worker serves no requests: not a live instance
		g.Go("liveness", func(ctx context.Context) error {
			return maps.KeepAlive(ctx, cfg.Name, cfg.Instance, apiURL, 10*time.Second)
		})
	}
	wake, relay := startPipeline(g, cfg, store, blobs, kv, prod, log)
	fence := ownership.New(cfg.Name, maps)
	hasher := auth.NewHasher(auth.OWASP)
	logins := auth.NewLoginLimits(kv, cfg.LoginClock, log.With("part", "login-limits"))
	srv := api.NewServer(fence, maps, counter{store}, log)
	// The one acceptance path into this cell's mailboxes (LMTP, the
	// DeliveryService, this cell's own users' sends).
	acceptor := delivery.NewAcceptor(delivery.AcceptorConfig{Fence: fence, Store: store, Blobs: blobs, Wake: wake, Relay: relay,
		Log: log.With("part", "accept")})
	defer acceptor.Close()
	var sender *outbound.Sender
	wakeOutbound := func(accountID string) {
		if sender != nil { // set before anything is served
			sender.Wake()
		}
		if prod != nil { // the senders of the cell's other processes; never delays the send
			go func() {
				if err := prod.NotifyOutbound(ctx, accountID); err != nil && ctx.Err() == nil {
					log.Warn("outbound notification not published; senders find the mail on their next pass", "err", err)
				}
			}()
		}
	}
	dcfg := dispatch.Config{Cell: cfg.Name, Maps: maps, Accept: acceptor, Queue: store, Limiter: kv,
		Routes:    routing.New(maps, routing.Config{Logger: log.With("part", "routing")}),
		Peers:     dispatch.PeerClient{HTTP: &http.Client{Timeout: 2 * time.Minute}, Token: cfg.AgentToken},
		SendLimit: cfg.SendLimit, Wake: wakeOutbound, Log: log.With("part", "dispatch")}
	if v := virusScanner(cfg); v != nil {
		dcfg.Virus = v
	}
	dispatcher := dispatch.New(dcfg)
	mailSrv := api.NewMailServer(api.MailConfig{
		Server: srv, Fence: fence, Store: store, Blobs: blobs, Cache: kv,
		Hasher: hasher, Logins: logins, Limits: message.DefaultLimits(), OperatorToken: cfg.OperatorToken,
		Dispatch: dispatcher, WakeOutbound: wakeOutbound, Logger: log,
	})
	if cfg.Role != RoleFront {
		sender = newSender(cfg, store, blobs, dispatcher, log)
		g.Go("outbound sender", func(ctx context.Context) error { sender.Run(ctx); return nil })
		if len(cfg.Kafka) > 0 {
			g.Go("outbound consumer", func(ctx context.Context) error {
				return queue.ConsumeOutbound(ctx, cfg.Kafka, "cellmail-"+cfg.Name+"-outbound", log.With("part", "outbound"), sender.Wake)
			})
		}
	}
	if cfg.Role == RoleWorker {
		reg := prometheus.NewRegistry()
		serve.MapGauges(reg, "cellmail_cell", maps)
		mux := http.NewServeMux()
		serve.Probes(mux, func() error { return store.Ping(ctx) }, reg)
		log.Info("cell worker running", "probes", apiURL, "instance", cfg.Instance)
		g.Go("probes", func(ctx context.Context) error { return serve.Run(ctx, ln, mux) })
		return g.Wait()
	}
	g.Go("blob collector", func(ctx context.Context) error { collectBlobs(ctx, files, store, log); return nil })

	reg := prometheus.NewRegistry()
	serve.MapGauges(reg, "cellmail_cell", maps)

	mux := http.NewServeMux()
	limits := []connect.HandlerOption{connect.WithReadMaxBytes(1 << 20)}
	// CellService calls carry no token (WhoAmI routes by address): the
	// pre-login bound, on the wire (gzip included) and decoded.
	cellPath, cellHandler := cellv1connect.NewCellServiceHandler(srv, connect.WithReadMaxBytes(api.PreLoginBodyBytes),
		connect.WithInterceptors(srv.FenceInterceptor()))
	mux.Handle(cellPath, http.MaxBytesHandler(cellHandler, api.PreLoginBodyBytes))
	mux.Handle(controlplanev1connect.NewCellAgentServiceHandler(srv, append(limits,
		connect.WithInterceptors(api.AgentAuthInterceptor(cfg.AgentToken), srv.FenceInterceptor()))...))
	// Bodies are bounded while read: small before login (LimitBody).
	mailPath, mailHandler := mailv1connect.NewMailServiceHandler(mailSrv, connect.WithReadMaxBytes(api.MaxRequestBytes),
		connect.WithInterceptors(mailSrv.MailInterceptor()))
	mux.Handle(mailPath, mailSrv.LimitBody(mailHandler, ""))
	deliveryPath, deliveryHandler := mailv1connect.NewDeliveryServiceHandler(mailSrv, connect.WithReadMaxBytes(api.MaxRequestBytes),
		connect.WithInterceptors(api.AgentAuthInterceptor(cfg.AgentToken), srv.FenceInterceptor()))
	mux.Handle(deliveryPath, mailSrv.LimitBody(deliveryHandler, cfg.AgentToken))
	mux.HandleFunc("GET /v1/messages/{id}/raw", mailSrv.ServeDownload)
	mux.Handle(cellv1connect.NewOperatorServiceHandler(mailSrv.Operator(DKIMSelector(cfg.Name)), append(limits,
		connect.WithInterceptors(mailSrv.OperatorInterceptor()))...))
	mux.HandleFunc("GET /v1/messages/{id}/attachments/{part}", mailSrv.ServeDownload)
	serve.Probes(mux, func() error {
		if maps.Map() == nil {
			return errors.New("no placement map yet")
		}
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := store.Ping(pctx); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		return nil
	}, reg)
	if cfg.LMTPListener != nil || cfg.LMTPListen != "" {
		lln, err := serve.Listen(cfg.LMTPListener, cfg.LMTPListen)
		if err != nil {
			return fmt.Errorf("cell: lmtp: %w", err)
		}
		lmtp := smtpd.New(smtpd.Config{Accept: acceptor, Domain: cfg.Name, Logger: log.With("part", "lmtp")})
		g.Serve("lmtp", func() error { return lmtp.Serve(lln) }, lmtp.Close)
		log.Info("cell LMTP serving", "lmtp", lln.Addr().String())
	}
	if cfg.IMAPListener != nil || cfg.IMAPListen != "" {
		iln, err := serve.Listen(cfg.IMAPListener, cfg.IMAPListen)
		if err != nil {
			return fmt.Errorf("cell: imap: %w", err)
		}
		hub := imapd.NewHub()
		g.Go("imap wake-ups", func(ctx context.Context) error {
			if err := hub.Run(ctx, kv); err != nil && ctx.Err() == nil {
				log.Error("imap wake-ups stopped; IDLE falls back to polling", "err", err)
			}
			return nil
		})
		imapSrv := imapd.New(imapd.Config{Store: store, Blobs: blobs, Append: delivery.New(blobs, store, message.DefaultLimits()),
			Hasher: hasher, Fence: fence, Logins: logins, TrustedProxies: cfg.IMAPTrustedProxies, Publish: kv, Hub: hub,
			Logger: log.With("part", "imap")})
		g.Serve("imap", func() error { return imapSrv.Serve(iln) }, imapSrv.Close)
		log.Info("cell IMAP serving", "imap", iln.Addr().String())
	}
	log.Info("cell serving", "api", apiURL, "instance", cfg.Instance)
	g.Go("api", func(ctx context.Context) error { return serve.Run(ctx, ln, mux) })
	return g.Wait()
}

// newSender makes the outbound sender: remote mail by MX, with DKIM,
// retries and bounces; mail to our own domains that could not be handed
// to its cell at once goes through the dispatcher's routing.
func newSender(cfg Config, store *mailstore.Store, blobs blobstore.Tiered, d *dispatch.Dispatcher, log *slog.Logger) *outbound.Sender {
	host := cfg.Hostname
	if host == "" {
		host = cfg.Name + ".cellmail.local"
	}
	return &outbound.Sender{Store: store, DSN: delivery.New(blobs, store, message.DefaultLimits()), Resolver: resolver(cfg.DNS),
		Hostname: host, Port: cfg.OutboundPort, Selector: DKIMSelector(cfg.Name), Log: log.With("part", "outbound"),
		IsHosted: d.IsHosted, DeliverHosted: d.DeliverHosted}
}

// DKIMSelector is the selector of the DKIM keys a cell makes: one per cell,
// so every cell of a domain signs with its own key and each publishes its
// own record (<selector>._domainkey.<domain>).
func DKIMSelector(cell string) string { return "cm-" + cell }

// resolver asks the DNS server at addr, or the system's when empty.
func resolver(addr string) *net.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// startPipeline starts what this process runs of the inbound pipeline and
// returns what wakes it after an acceptance:
//   - no broker: a worker reading the spool table;
//   - with a broker: the relay (spool → inbound topic, and its sweeper) in
//     front processes, the consumer group member in worker processes; both
//     in RoleAll.
func startPipeline(g *serve.Group, cfg Config, store *mailstore.Store, blobs blobstore.Tiered, kv *cache.Cache, prod *queue.Producer,
	log *slog.Logger) (wake func(), relay func([]mailstore.SpoolEntry)) {
	lim := message.DefaultLimits()
	lim.MaxSize += 256 << 10 // the trace and verdict fields added to a message of the largest size accepted
	p := &delivery.Pipeline{D: delivery.New(blobs, store, lim), Store: store, Notify: kv, Log: log.With("part", "pipeline")}
	// The same senders' records are asked for message after message: a
	// minute's cache spares the resolver (and the wait) for most of them.
	p.Auth = &msgauth.Checker{AuthServID: cfg.AuthServID, Resolver: msgauth.NewCache(resolver(cfg.DNS), time.Minute, 100_000)}
	if p.Auth.AuthServID == "" {
		p.Auth.AuthServID = "cellmail"
	}
	if v := virusScanner(cfg); v != nil {
		p.Virus = v
	}
	if len(cfg.Kafka) == 0 {
		w := delivery.NewWorker(p, store, log.With("part", "spool"))
		g.Go("spool worker", func(ctx context.Context) error { w.Run(ctx); return nil })
		return w.Wake, nil
	}
	p.Events = prod
	wake = func() {}
	if cfg.Role != RoleWorker {
		r := delivery.NewRelay(store, prod, log.With("part", "relay"))
		g.Go("relay", func(ctx context.Context) error { r.Run(ctx); return nil })
		wake, relay = r.Wake, r.Publish
	}
	if cfg.Role != RoleFront {
		rescuer := delivery.NewRescuer(p, store, log.With("part", "rescue"))
		g.Go("rescuer", func(ctx context.Context) error { rescuer.Run(ctx); return nil })
		g.Go("inbound consumer", func(ctx context.Context) error {
			return queue.ConsumeInbound(ctx, cfg.Kafka, "cellmail-"+cfg.Name+"-inbound", log.With("part", "worker"), p.HandleIDs)
		})
	}
	return wake, relay
}

// virusScanner is the cell's clamd, or nil when none is configured.
func virusScanner(cfg Config) *clamd.Client {
	if cfg.Clamd == "" {
		return nil
	}
	return &clamd.Client{Addr: cfg.Clamd}
}

// spoolKeep is how long a delivered spool entry (and so its delivery key,
// which recognises a sender's retry) is kept.
const spoolKeep = 7 * 24 * time.Hour

// openBlobs opens the cell's blob store: the S3 bucket of cfg.BlobS3, or
// else the files under cfg.BlobDir (default DataDir/blobs).
func openBlobs(ctx context.Context, cfg Config, log *slog.Logger) (blobstore.Store, error) {
	if cfg.BlobS3 != nil {
		s, err := blobstore.NewS3(ctx, cfg.BlobS3.config())
		if err != nil {
			return nil, err
		}
		log.Info("blob store: S3", "endpoint", cfg.BlobS3.Endpoint, "bucket", cfg.BlobS3.Bucket, "prefix", cfg.BlobS3.Prefix)
		return s, nil
	}
	dir := cfg.BlobDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "blobs")
	}
	return blobstore.NewFS(dir)
}

// blobCollector is what collectBlobs uses of a blob store.
type blobCollector interface {
	Collect(ctx context.Context, referenced func(ctx context.Context, refs []string) (map[string]bool, error), grace time.Duration) (int, error)
}

// blobGrace is how long an unreferenced blob is kept: far longer than any
// delivery takes between storing a blob and committing its reference.
const blobGrace = time.Hour

// collectBlobs removes unreferenced blobs, and purges delivered spool
// entries older than spoolKeep, every hour until ctx ends.
func collectBlobs(ctx context.Context, blobs blobCollector, store *mailstore.Store, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := blobs.Collect(ctx, store.Referenced, blobGrace)
			if err != nil && ctx.Err() == nil {
				log.Warn("blob collection failed", "err", err)
				continue
			}
			log.Info("unreferenced blobs collected", "deleted", n)
			if n, err := store.CollectInline(ctx, blobGrace); err != nil && ctx.Err() == nil {
				log.Warn("inline blob collection failed", "err", err)
			} else if n > 0 {
				log.Info("unreferenced inline blobs collected", "deleted", n)
			}
			if n, err := store.PurgeSpool(ctx, spoolKeep); err != nil {
				log.Warn("spool purge failed", "err", err)
			} else if n > 0 {
				log.Info("delivered spool entries purged", "deleted", n)
			}
		}
	}
}

// counter answers the control plane's counts from the account table.
type counter struct{ store *mailstore.Store }

func (c counter) CountPlaced(ctx context.Context, req *cpv1.CountPlacedRequest) (uint64, error) {
	return c.store.CountPlaced(ctx, req.Domain, req.PlacementKey, req.Jurisdiction, req.Start, req.End)
}
