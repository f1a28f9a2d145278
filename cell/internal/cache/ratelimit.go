package cache

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// rateLimitPrefix keeps Allow's counters apart from cached values.
const rateLimitPrefix = "rl:"

// fixedWindowScript counts one hit on KEYS[1] and returns {count, ms left in
// the window}. The first hit starts a window of ARGV[1] ms; a counter without
// an expiry (which only a foreign write could leave) gets one too, so no key
// can block forever. One round trip, atomic.
const fixedWindowScript = `
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
`

func newFixedWindow() *rueidis.Lua { return rueidis.NewLuaScript(fixedWindowScript) }

// Allow counts one event against key and reports whether it is within limit
// events per window. Windows are fixed: the first event starts one, and the
// count resets when it ends. When the event is refused, retryAfter is how long
// until the window ends (> 0); when allowed it is 0. Refused events count too.
//
// The counter lives in Redis under "rl:"+key, so the limit is shared by all
// instances of the cell. While Redis is unavailable Allow falls back to an
// in-process limiter with the same semantics and returns err == nil: during
// an outage the limit therefore holds per process, not per cell (n instances
// admit up to n×limit), and counts do not carry over when Redis comes back
// (one window may admit up to twice the limit across the switch).
//
// err is non-nil only for invalid arguments (limit < 1, window < 1ms), for
// Redis error replies (e.g. a foreign value of the wrong type under the key),
// and when ctx is done; then allowed is false.
func (c *Cache) Allow(ctx context.Context, key string, limit int, window time.Duration) (allowed bool, retryAfter time.Duration, err error) {
	if limit < 1 {
		return false, 0, fmt.Errorf("cache: allow %q: limit %d is not positive", key, limit)
	}
	if window < time.Millisecond {
		return false, 0, fmt.Errorf("cache: allow %q: window %v is shorter than 1ms", key, window)
	}
	client, err := c.conn()
	if err != nil {
		allowed, retryAfter = c.local.allow(key, limit, window)
		return allowed, retryAfter, nil
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res, err := c.fixedWindow.Exec(opCtx, client,
		[]string{rateLimitPrefix + key},
		[]string{strconv.FormatInt(ceilMillis(window), 10)},
	).AsIntSlice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("script returned %d values, want 2", len(res))
	}
	if err != nil {
		if cerr := c.check(ctx, err); !isUnavailable(cerr) {
			return false, 0, fmt.Errorf("cache: allow %q: %w", key, cerr)
		}
		allowed, retryAfter = c.local.allow(key, limit, window)
		return allowed, retryAfter, nil
	}
	count, left := res[0], time.Duration(res[1])*time.Millisecond
	if count <= int64(limit) {
		return true, 0, nil
	}
	return false, max(left, time.Millisecond), nil
}

// localLimiter is Allow's in-process fallback: fixed windows like the Redis
// script, kept in a map that is swept of ended windows as it grows.
type localLimiter struct {
	now func() time.Time

	mu      sync.Mutex
	windows map[string]localWindow
	sweepAt int // sweep ended windows when the map reaches this size
}

type localWindow struct {
	count int
	end   time.Time
}

// minSweep is the map size below which the local limiter does not sweep.
const minSweep = 1024

func newLocalLimiter(now func() time.Time) *localLimiter {
	return &localLimiter{now: now, windows: make(map[string]localWindow), sweepAt: minSweep}
}

func (l *localLimiter) allow(key string, limit int, window time.Duration) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.windows[key]
	if !ok || !now.Before(w.end) {
		if !ok && len(l.windows) >= l.sweepAt {
			l.sweep(now)
		}
		w = localWindow{end: now.Add(window)}
	}
	w.count++
	l.windows[key] = w
	if w.count <= limit {
		return true, 0
	}
	return false, w.end.Sub(now)
}

// sweep drops ended windows and sets the next sweep at twice the live size,
// so sweeping costs amortised O(1) per call.
func (l *localLimiter) sweep(now time.Time) {
	for k, w := range l.windows {
		if !now.Before(w.end) {
			delete(l.windows, k)
		}
	}
	l.sweepAt = max(2*len(l.windows), minSweep)
}
