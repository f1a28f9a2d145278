// Package cache gives the cell a Redis cache of derived data that can be
// lost at any time: hot lists, rate-limit counters and pub/sub wake-ups.
//
// It is the cell's only user of rueidis. Nothing stored here is the only copy
// of anything, so losing Redis loses no data, and it must not stop the cell
// either: every method degrades instead of blocking.
//
//   - New does not fail when Redis is down. It connects in the background
//     with backoff; until then, and during later outages, Get, Set, Delete
//     and Publish return an error wrapping ErrUnavailable at once, without
//     touching the network.
//   - Every command is bounded by a short timeout (opTimeout), so a hung
//     Redis costs an API call at most that long.
//   - A command that fails for a reason other than a Redis error reply marks
//     Redis down; a background probe (PING with backoff) marks it up again.
//     In between, calls fail fast rather than each waiting for a timeout.
//   - Allow and Take fall back to in-process counters while Redis is down
//     (see Allow, Take), and Subscribe resubscribes once Redis is back.
//
// Keys are used as given, except that Allow keeps its counters under the
// "rl:" prefix and Take its buckets under "th:"; other callers must not use
// those prefixes.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Errors returned, wrapped, by Cache methods.
var (
	// ErrMiss means Get found no value for the key.
	ErrMiss = errors.New("cache miss")
	// ErrUnavailable means Redis cannot be used right now: not yet
	// connected, down, too slow, or the Cache is closed. Callers carry on
	// without the cache.
	ErrUnavailable = errors.New("redis unavailable")
)

const (
	// opTimeout bounds every Redis command issued for a caller.
	opTimeout = 200 * time.Millisecond
	// dialTimeout bounds a TCP connect to Redis.
	dialTimeout = time.Second
	// connTimeout is rueidis's ConnWriteTimeout: a connection whose replies
	// (or keep-alive PINGs) take longer than this is closed. Subscriptions
	// rely on it to notice a hung server.
	connTimeout = 2 * time.Second
	// minBackoff and maxBackoff bound the wait between reconnect probes.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Config configures a Cache.
type Config struct {
	// Addr is the Redis server's host:port. Required.
	Addr string
	// Logger receives connection state changes (connected, lost,
	// recovered). Nil discards them.
	Logger *slog.Logger
}

// Validate reports whether c can be used by New.
func (c Config) Validate() error {
	if c.Addr == "" {
		return errors.New("cache: Config.Addr is required")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("cache: Config.Addr %q: %w", c.Addr, err)
	}
	return nil
}

// Cache is a Redis-backed cache, rate limiter and wake-up bus that degrades
// when Redis is unavailable. Its methods are safe for concurrent use.
type Cache struct {
	log   *slog.Logger
	opt   rueidis.ClientOption
	local *localLimiter
	// fixedWindow is Allow's script; rueidis caches its SHA1 and falls
	// back from EVALSHA to EVAL after a Redis restart empties the script
	// cache.
	fixedWindow *rueidis.Lua
	// throttle and localBuckets are Take's scripts and in-process
	// fallback.
	throttle     throttleScripts
	localBuckets *localBuckets

	life     context.Context // cancelled by Close
	stop     context.CancelFunc
	done     chan struct{} // closed when the supervisor has returned
	firstTry chan struct{} // closed after the first connection attempt
	wake     chan struct{} // asks the supervisor to probe now; capacity 1
	close    sync.Once

	mu     sync.Mutex
	client rueidis.Client // nil until the first successful connect
	up     bool           // Redis answered lately; calls may use client
	upCh   chan struct{}  // closed while up; replaced when going down
	closed bool
}

// New returns a Cache for cfg.Addr. It fails only on an invalid cfg: when
// Redis is down, New still succeeds and keeps connecting in the background.
// New waits for the first connection attempt, but no longer than ctx allows
// nor than dialTimeout, so a Cache made while Redis is up is usable at once.
// ctx does not bound the Cache's life; Close does.
func New(ctx context.Context, cfg Config) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life, stop := context.WithCancel(context.Background())
	c := &Cache{
		log: log.With("redis", cfg.Addr),
		opt: rueidis.ClientOption{
			InitAddress: []string{cfg.Addr},
			// One standalone server: skip rueidis's CLUSTER probing.
			ForceSingleClient: true,
			// Commands are bounded by opTimeout; let a failure come back
			// at once and trip the breaker instead of being retried.
			DisableRetry: true,
			// No client-side caching (and no CLIENT TRACKING): values
			// are read through Get only.
			DisableCache: true,
			// One pipelined connection (rueidis maps -1 to 2^0). With
			// the default of several, each stale connection fails one
			// command after a Redis restart, so recovery would flap.
			PipelineMultiplex: -1,
			Dialer:            net.Dialer{Timeout: dialTimeout},
			ConnWriteTimeout:  connTimeout,
			ClientName:        "cellmail-cell",
		},
		local:        newLocalLimiter(time.Now),
		fixedWindow:  newFixedWindow(),
		throttle:     newThrottleScripts(),
		localBuckets: newLocalBuckets(),
		life:         life,
		stop:         stop,
		done:         make(chan struct{}),
		firstTry:     make(chan struct{}),
		wake:         make(chan struct{}, 1),
		upCh:         make(chan struct{}),
	}
	go c.supervise()
	wait := time.NewTimer(dialTimeout)
	defer wait.Stop()
	select {
	case <-c.firstTry:
	case <-ctx.Done():
	case <-wait.C:
	}
	return c, nil
}

// Close stops reconnecting, closes the Redis connections and makes every
// later call fail with ErrUnavailable (Allow falls back to its in-process
// limiter, Subscribe returns). It waits for in-flight commands to finish.
func (c *Cache) Close() {
	c.close.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.up = false
		c.mu.Unlock()
		c.stop()
		<-c.done
		c.mu.Lock()
		client := c.client
		c.mu.Unlock()
		if client != nil {
			client.Close()
		}
	})
}

// Get returns the value stored under key. A missing key yields an error
// wrapping ErrMiss; an unusable Redis one wrapping ErrUnavailable.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	client, err := c.conn()
	if err != nil {
		return nil, fmt.Errorf("cache: get %q: %w", key, err)
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	// ToString and a copy, not AsBytes: AsBytes returns the reply string's
	// own memory as a []byte, which the caller would then be free to
	// mutate.
	val, err := client.Do(opCtx, client.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("cache: get %q: %w", key, ErrMiss)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: get %q: %w", key, c.check(ctx, err))
	}
	return []byte(val), nil
}

// Set stores val under key for ttl, which must be positive (it is rounded up
// to whole milliseconds). A failed Set loses nothing but the cached copy.
func (c *Cache) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("cache: set %q: ttl %v is not positive", key, ttl)
	}
	client, err := c.conn()
	if err != nil {
		return fmt.Errorf("cache: set %q: %w", key, err)
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := client.B().Set().Key(key).Value(rueidis.BinaryString(val)).PxMilliseconds(ceilMillis(ttl)).Build()
	if err := client.Do(opCtx, cmd).Error(); err != nil {
		return fmt.Errorf("cache: set %q: %w", key, c.check(ctx, err))
	}
	return nil
}

// Delete removes keys; missing keys are not an error. Callers that delete to
// invalidate should remember that a failed Delete (ErrUnavailable) leaves the
// old value readable until its TTL ends once Redis is back, so TTLs bound
// staleness.
func (c *Cache) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	client, err := c.conn()
	if err != nil {
		return fmt.Errorf("cache: delete: %w", err)
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := client.Do(opCtx, client.B().Del().Key(keys...).Build()).Error(); err != nil {
		return fmt.Errorf("cache: delete: %w", c.check(ctx, err))
	}
	return nil
}

// conn returns the client if Redis is believed usable, and otherwise an
// error wrapping ErrUnavailable, without touching the network.
func (c *Cache) conn() (rueidis.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return nil, fmt.Errorf("closed: %w", ErrUnavailable)
	case c.client == nil:
		return nil, fmt.Errorf("not connected: %w", ErrUnavailable)
	case !c.up:
		return nil, fmt.Errorf("down: %w", ErrUnavailable)
	}
	return c.client, nil
}

// waitUp blocks until Redis is believed usable or ctx is done.
func (c *Cache) waitUp(ctx context.Context) (rueidis.Client, error) {
	for {
		c.mu.Lock()
		client, up, upCh, closed := c.client, c.up, c.upCh, c.closed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, fmt.Errorf("closed: %w", ErrUnavailable)
		case up:
			return client, nil
		}
		select {
		case <-upCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// check classifies the error of a command issued for a caller whose context
// is ctx. Redis error replies are returned as they are, except those that
// mean the server cannot serve now (LOADING, BUSY, MASTERDOWN, TRYAGAIN,
// CLUSTERDOWN). The caller's own cancellation is returned as it is. Anything
// else (network errors, opTimeout) marks Redis down and wraps ErrUnavailable.
func (c *Cache) check(ctx context.Context, err error) error {
	if rerr, ok := rueidis.IsRedisErr(err); ok && !serverBusy(rerr) {
		return err
	}
	if ctx.Err() != nil {
		return err
	}
	c.markDown(err)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// serverBusy reports whether a Redis error reply means the server cannot
// serve for now rather than that the command was wrong.
func serverBusy(err *rueidis.RedisError) bool {
	if err.IsLoading() || err.IsTryAgain() || err.IsClusterDown() {
		return true
	}
	msg := err.Error()
	return strings.HasPrefix(msg, "BUSY ") || strings.HasPrefix(msg, "MASTERDOWN")
}

// markDown records that Redis failed a command and asks the supervisor to
// probe it.
func (c *Cache) markDown(cause error) {
	c.mu.Lock()
	wasUp := c.up
	if wasUp {
		c.up = false
		c.upCh = make(chan struct{})
	}
	c.mu.Unlock()
	if wasUp {
		c.log.Warn("redis unavailable; degrading until it answers again", "err", cause)
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// markUp records that Redis answered a probe. The client is kept even after
// Close has begun: Close closes it once the supervisor has returned.
func (c *Cache) markUp(client rueidis.Client, first bool) {
	c.mu.Lock()
	c.client = client
	if c.closed {
		c.mu.Unlock()
		return
	}
	wasUp := c.up
	if !wasUp {
		c.up = true
		close(c.upCh)
	}
	c.mu.Unlock()
	switch {
	case first:
		c.log.Info("redis connected")
	case !wasUp:
		c.log.Info("redis available again")
	}
}

// supervise connects to Redis and, whenever it is marked down, probes it with
// jittered exponential backoff until it answers. It returns when the Cache is
// closed.
func (c *Cache) supervise() {
	defer close(c.done)
	backoff := minBackoff
	first := true
	for {
		err := c.probe()
		if first {
			first = false
			close(c.firstTry)
		}
		if err == nil {
			backoff = minBackoff
			// Sleep until a command fails and marks Redis down.
			for c.isUp() {
				select {
				case <-c.life.Done():
					return
				case <-c.wake:
				}
			}
			continue
		}
		c.log.Debug("redis probe failed", "err", err, "retry_in", backoff)
		t := time.NewTimer(jitter(backoff))
		select {
		case <-c.life.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (c *Cache) isUp() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// probe makes the client if there is none yet, PINGs Redis, and marks it up
// on success.
func (c *Cache) probe() error {
	c.mu.Lock()
	client := c.client
	c.mu.Unlock()
	first := client == nil
	if first {
		// rueidis.NewClient dials at once and fails if it cannot connect,
		// which is why the first connect happens here and not in New.
		var err error
		if client, err = rueidis.NewClient(c.opt); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(c.life, opTimeout)
	defer cancel()
	if err := client.Do(ctx, client.B().Ping().Build()).Error(); err != nil {
		if first {
			client.Close()
		}
		return fmt.Errorf("ping: %w", err)
	}
	c.markUp(client, first)
	return nil
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2)
}

// ceilMillis rounds d up to whole milliseconds, at least 1.
func ceilMillis(d time.Duration) int64 {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	return max(ms, 1)
}

func isUnavailable(err error) bool {
	return errors.Is(err, ErrUnavailable)
}
