// Package client keeps a router's or a cell's copy of the placement map
// current: it lists the map, then watches it, lists again after a
// compaction, snapshots it to disk so that its owner restarts while etcd is
// down, and refreshes one subject with a linearizable read when told the
// copy was wrong (WRONG_CELL).
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// ErrNotReady is returned before the first map (from etcd or a snapshot).
var ErrNotReady = errors.New("placement map not loaded yet")

// ErrRateLimited is returned by Refresh when refreshes come too fast.
var ErrRateLimited = errors.New("map refresh rate limit reached")

// SnapshotStore keeps the last map across restarts.
type SnapshotStore interface {
	Load(ctx context.Context) ([]byte, error)
	Save(ctx context.Context, b []byte) error
}

// Config says where the map is and how to keep it.
type Config struct {
	Endpoints []string
	Prefix    string        // store.DefaultPrefix when empty
	Snapshot  SnapshotStore // optional
	// Refreshes per second allowed (WRONG_CELL storms must not overload
	// etcd). Default 20.
	RefreshRate float64
	// How often to check the copy is current (a linearizable read of
	// map/epoch compared with the copy's epoch). Default 2s.
	ProgressEvery time.Duration
	Logger        *slog.Logger
}

// Client is a watch-fed copy of the map. Its methods are safe for
// concurrent use.
type Client struct {
	cfg     Config
	st      *store.Store
	log     *slog.Logger
	limiter *rate.Limiter

	mu       sync.Mutex
	kvs      map[string]store.KV
	rev      int64
	needList bool
	relists  atomic.Int64
	changed  chan struct{} // closed and replaced when the map changes
	dirty    bool

	synced    atomic.Bool // the copy came from etcd at least once
	started   time.Time
	m         atomic.Pointer[placement.Map]
	heard     atomic.Int64 // unix nanos of the last time the copy was known current
	ready     chan struct{}
	readyOnce sync.Once
}

// New makes a client; Run keeps it current.
func New(cfg Config) (*Client, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RefreshRate == 0 {
		cfg.RefreshRate = 20
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = 2 * time.Second
	}
	st, err := store.Open(store.Config{Endpoints: cfg.Endpoints, Prefix: cfg.Prefix}, cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg: cfg, st: st, log: cfg.Logger,
		limiter: rate.NewLimiter(rate.Limit(cfg.RefreshRate), int(max(cfg.RefreshRate, 1))),
		kvs:     map[string]store.KV{},
		changed: make(chan struct{}),
		ready:   make(chan struct{}),
		started: time.Now(),
	}, nil
}

// Close releases the etcd connection.
func (c *Client) Close() error { return c.st.Close() }

// Map is the current map, nil before Ready.
func (c *Client) Map() *placement.Map { return c.m.Load() }

// Ready is closed once a map is loaded, from etcd or from the snapshot.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Epoch is the current map's epoch (0 before Ready).
func (c *Client) Epoch() uint64 {
	if m := c.m.Load(); m != nil {
		return m.Epoch()
	}
	return 0
}

// Serving reports whether the copy should be served from: it has been
// checked against etcd in this process, or etcd could not be reached within
// grace of the start (then the snapshot is the best there is).
func (c *Client) Serving(grace time.Duration) bool {
	return c.m.Load() != nil && (c.synced.Load() || time.Since(c.started) > grace)
}

// Staleness is how long since the copy was last known to be current.
func (c *Client) Staleness() time.Duration {
	h := c.heard.Load()
	if h == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(time.Unix(0, h))
}

// Lookup answers from the current map.
func (c *Client) Lookup(address string) (placement.Route, error) {
	m := c.m.Load()
	if m == nil {
		return placement.Route{}, ErrNotReady
	}
	return m.Lookup(address)
}

// WaitEpoch blocks until the map has reached epoch e or ctx ends.
func (c *Client) WaitEpoch(ctx context.Context, e uint64) error {
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if c.Epoch() >= e {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for map epoch %d (at %d): %w", e, c.Epoch(), ctx.Err())
		}
	}
}

// Run keeps the copy current until ctx ends: snapshot first when there is
// one, then list and watch, listing again after any watch failure.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.Snapshot != nil {
		if err := c.LoadSnapshot(ctx); err != nil {
			c.log.Info("no usable map snapshot", "err", err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.progressLoop(ctx) }()
	go func() { defer wg.Done(); c.snapshotLoop(ctx) }()
	defer wg.Wait()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.syncOnce(ctx)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, store.ErrCompacted) {
			c.mu.Lock()
			c.needList = true
			c.mu.Unlock()
			c.log.Info("map watch revision compacted; listing again", "err", err)
			continue
		}
		c.log.Warn("map watch ended; resuming", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 3*time.Second)
	}
	return nil
}

// Relists counts how often the whole map was listed.
func (c *Client) Relists() int64 { return c.relists.Load() }

// syncOnce lists the map when it has none (or after a compaction), then
// watches from the copy's revision until the watch fails.
func (c *Client) syncOnce(ctx context.Context) error {
	c.mu.Lock()
	rev, needList := c.rev, c.needList || c.rev == 0
	c.mu.Unlock()
	if needList {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		kvs, lrev, err := c.st.List(lctx)
		cancel()
		if err != nil {
			return err
		}
		c.relists.Add(1)
		all := make(map[string]store.KV, len(kvs))
		for _, kv := range kvs {
			all[kv.Key] = kv
		}
		c.mu.Lock()
		c.kvs, c.rev, c.needList = all, lrev, false
		err = c.rebuildLocked()
		c.mu.Unlock()
		if err != nil {
			return err
		}
		rev = lrev
		c.heard.Store(time.Now().UnixNano())
		c.synced.Store(true)
	}
	for b := range c.st.Watch(ctx, rev) {
		if b.Err != nil {
			return b.Err
		}
		c.heard.Store(time.Now().UnixNano())
		if len(b.Events) == 0 {
			continue
		}
		c.mu.Lock()
		for _, ev := range b.Events {
			if ev.Deleted {
				delete(c.kvs, ev.Key)
			} else {
				c.kvs[ev.Key] = ev.KV
			}
		}
		c.rev = b.Revision
		err := c.rebuildLocked()
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (c *Client) rebuildLocked() error {
	kvs := make([]store.KV, 0, len(c.kvs))
	for _, kv := range c.kvs {
		kvs = append(kvs, kv)
	}
	recs, err := c.st.Decode(kvs)
	if err != nil {
		return err
	}
	m, err := recs.Map()
	if err != nil {
		return fmt.Errorf("build map: %w", err)
	}
	c.m.Store(m)
	c.dirty = true
	close(c.changed)
	c.changed = make(chan struct{})
	c.readyOnce.Do(func() { close(c.ready) })
	return nil
}

func (c *Client) progressLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Every map change raises map/epoch, so a copy at etcd's
			// epoch is current. Failures and lag show as staleness.
			rctx, cancel := context.WithTimeout(ctx, c.cfg.ProgressEvery)
			e, err := c.st.Epoch(rctx)
			cancel()
			if err == nil && c.m.Load() != nil && e == c.Epoch() {
				c.heard.Store(time.Now().UnixNano())
				c.synced.Store(true)
			}
		}
	}
}

// Refresh reads what decides address's owner from etcd (linearizable),
// folds it into the copy, and answers from the result. It is rate-limited.
func (c *Client) Refresh(ctx context.Context, address string) (placement.Route, error) {
	a, err := placement.ParseAddress(address)
	if err != nil {
		return placement.Route{}, err
	}
	if !c.limiter.Allow() {
		return placement.Route{}, ErrRateLimited
	}
	m := c.m.Load()
	if m == nil {
		return placement.Route{}, ErrNotReady
	}
	d, known := m.Domain(a.Domain)
	if !known {
		// Learn the domain first: its record decides the key.
		if err := c.readKey(ctx, "", 0, a.String(), a.Domain, ""); err != nil {
			return placement.Route{}, err
		}
		m = c.m.Load()
		if d, known = m.Domain(a.Domain); !known {
			return placement.Route{}, fmt.Errorf("%w: %s", placement.ErrUnknownDomain, a.Domain)
		}
	}
	key := placement.PlacementKey(a, d.Mode)
	if err := c.readKey(ctx, d.Jurisdiction.String(), placement.Hash56(key), key, a.Domain, key); err != nil {
		return placement.Route{}, err
	}
	return c.m.Load().LookupAddress(a)
}

func (c *Client) readKey(ctx context.Context, jur string, h uint64, pinKey, domain, forgetPin string) error {
	kvs, _, err := c.st.ReadKey(ctx, jur, h, pinKey, domain)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pinSeen := false
	for _, kv := range kvs {
		if kv.Key == c.st.PinKey(pinKey) {
			pinSeen = true
		}
		if old, ok := c.kvs[kv.Key]; !ok || old.ModRevision < kv.ModRevision {
			c.kvs[kv.Key] = kv
		}
	}
	if forgetPin != "" && !pinSeen {
		delete(c.kvs, c.st.PinKey(forgetPin)) // cleared since our copy
	}
	return c.rebuildLocked()
}

// KeepAlive holds the cell instance's liveness key until ctx ends.
func (c *Client) KeepAlive(ctx context.Context, cell, instance, apiURL string, ttl time.Duration) error {
	return c.st.KeepAlive(ctx, cell, instance, &pb.Liveness{Instance: instance, ApiUrl: apiURL, StartedUnix: time.Now().Unix()}, ttl)
}

func (c *Client) snapshotLoop(ctx context.Context) {
	if c.cfg.Snapshot == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var savedHeard int64
	for {
		select {
		case <-ctx.Done():
			c.mu.Lock()
			c.dirty = true // record when the copy was last known current
			c.mu.Unlock()
			c.saveSnapshot(context.WithoutCancel(ctx))
			return
		case <-t.C:
			// Save on change, and at least once a minute while current, so
			// a restarted owner's staleness is measured from the last time
			// the copy was known current, not from the last map change.
			if h := c.heard.Load(); h-savedHeard > int64(time.Minute) {
				c.mu.Lock()
				c.dirty = true
				c.mu.Unlock()
				savedHeard = h
			}
			c.saveSnapshot(ctx)
		}
	}
}

func (c *Client) saveSnapshot(ctx context.Context) {
	c.mu.Lock()
	if !c.dirty {
		c.mu.Unlock()
		return
	}
	// WrittenUnix is when the copy was last known current.
	snap := &pb.MapSnapshot{Revision: c.rev, WrittenUnix: time.Unix(0, c.heard.Load()).Unix()}
	for _, kv := range c.kvs {
		snap.Records = append(snap.Records, &pb.SnapshotRecord{Key: kv.Key, Value: kv.Value, ModRevision: kv.ModRevision})
	}
	c.dirty = false
	c.mu.Unlock()
	b, err := proto.Marshal(snap)
	if err == nil {
		err = c.cfg.Snapshot.Save(ctx, b)
	}
	if err != nil {
		c.log.Warn("map snapshot not saved", "err", err)
		c.mu.Lock()
		c.dirty = true
		c.mu.Unlock()
	}
}

// LoadSnapshot installs the snapshot as the current map, unless a map from
// etcd is already there. Run calls it first; it is exported for tools and
// tests that want a map copy held still at the snapshot.
func (c *Client) LoadSnapshot(ctx context.Context) error {
	if c.cfg.Snapshot == nil {
		return errors.New("no snapshot store configured")
	}
	b, err := c.cfg.Snapshot.Load(ctx)
	if err != nil {
		return err
	}
	var snap pb.MapSnapshot
	if err := proto.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rev != 0 {
		return nil // etcd answered first
	}
	for _, r := range snap.Records {
		c.kvs[r.Key] = store.KV{Key: r.Key, Value: r.Value, ModRevision: r.ModRevision}
	}
	c.rev = snap.Revision
	if err := c.rebuildLocked(); err != nil {
		return err
	}
	c.dirty = false
	c.heard.Store(time.Unix(snap.WrittenUnix, 0).UnixNano())
	c.log.Info("map loaded from snapshot", "revision", snap.Revision, "epoch", c.Epoch(), "age", c.Staleness().Round(time.Second))
	return nil
}

// FileSnapshot keeps the snapshot in a file, replaced atomically.
type FileSnapshot struct{ Path string }

// Load reads the file.
func (f FileSnapshot) Load(context.Context) ([]byte, error) { return os.ReadFile(f.Path) }

// Save writes a temporary file, syncs it and renames it over the old one.
func (f FileSnapshot) Save(_ context.Context, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.Path), ".snapshot-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.Path)
}
