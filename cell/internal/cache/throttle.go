package cache

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// throttlePrefix keeps Take's buckets apart from cached values and from
// Allow's counters.
const throttlePrefix = "th:"

// Bucket is one failure counter of Take: a leaky bucket whose level grows by
// one for each event Take admits and drains by one every Leak. Its count n
// is the level rounded up (an event partly drained still counts). While n
// is at least Free, the next event must wait Base·2^(n−Free), at most Max,
// after the last admitted one: the delay grows with each further event and
// ends as the bucket drains, so a bucket never blocks for good.
type Bucket struct {
	Key string
	// Free is the level below which an event passes at once (≥ 0).
	Free int
	// Leak is how long the bucket takes to drain by one (> 0).
	Leak time.Duration
	// Base and Max bound the wait at and above Free (0 < Base ≤ Max).
	Base, Max time.Duration
	// CountOnly buckets count but never make an event wait.
	CountOnly bool
}

func (b Bucket) check() error {
	if b.Key == "" || b.Free < 0 || b.Leak < time.Millisecond || b.Base < time.Millisecond || b.Max < b.Base {
		return fmt.Errorf("cache: bucket %+v: invalid parameters", b)
	}
	return nil
}

// wait is how long after the last admitted event, at level l, the next
// one must wait.
func (b Bucket) wait(l float64) time.Duration {
	c := count(l)
	if b.CountOnly || c < float64(b.Free) {
		return 0
	}
	n := c - float64(b.Free)
	if n >= 40 {
		return b.Max
	}
	return min(b.Base*time.Duration(1<<int(n)), b.Max)
}

// count is a level rounded up, ignoring float noise.
func count(l float64) float64 { return math.Ceil(l - 1e-9) }

// ttl is how long a bucket at level l, last admitted now, must be kept:
// until it has drained, and no shorter than the wait it imposes.
func (b Bucket) ttl(l float64) time.Duration {
	return time.Duration(math.Ceil(l*float64(b.Leak))) + b.Max + time.Second
}

// throttleTakeScript admits one event if every bucket lets it pass at now
// (ARGV[1], ms) and then adds one to each; otherwise it changes nothing and
// returns the longest wait in ms. Each key has 5 arguments: free, leak ms,
// base ms, max ms, count-only (1/0). A bucket is a hash {l: level at t,
// t: ms of the last admitted event}; levels drain linearly. Atomic, so
// concurrent attempts see each other's counts.
const throttleTakeScript = `
local now = tonumber(ARGV[1])
local levels = {}
local wait = 0
for i, k in ipairs(KEYS) do
  local o = 1 + (i - 1) * 5
  local free, leak, base, maxw, only = tonumber(ARGV[o+1]), tonumber(ARGV[o+2]), tonumber(ARGV[o+3]), tonumber(ARGV[o+4]), ARGV[o+5]
  local v = redis.call('HMGET', k, 'l', 't')
  local l, t = tonumber(v[1]) or 0, tonumber(v[2]) or now
  if now > t then l = math.max(0, l - (now - t) / leak) end
  levels[i] = l
  local c = math.ceil(l - 1e-9)
  if only ~= '1' and c >= free then
    local n = c - free
    local w = maxw
    if n < 40 then w = math.min(base * math.pow(2, n), maxw) end
    local left = t + w - now
    if left > wait then wait = left end
  end
end
if wait > 0 then return math.ceil(wait) end
for i, k in ipairs(KEYS) do
  local o = 1 + (i - 1) * 5
  local leak, maxw = tonumber(ARGV[o+2]), tonumber(ARGV[o+4])
  local l = levels[i] + 1
  redis.call('HSET', k, 'l', tostring(l), 't', tostring(now))
  redis.call('PEXPIRE', k, math.ceil(l * leak + maxw + 1000))
end
return 0
`

// throttleGiveScript takes one event back from each bucket (ARGV[1] = now
// ms, then the leak ms of each): the level drops by one, the time of the
// last admitted event stays.
const throttleGiveScript = `
local now = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'l', 't')
  if v[1] then
    local l = math.max(0, tonumber(v[1]) - 1)
    local t = tonumber(v[2]) or now
    if l - (now - t) / tonumber(ARGV[i+1]) <= 0 then
      redis.call('DEL', k)
    else
      redis.call('HSET', k, 'l', tostring(l))
    end
  end
end
return 0
`

// throttleLevelScript returns each bucket's level at ARGV[1] (ms) in
// thousandths (Lua numbers become integers on the way out).
const throttleLevelScript = `
local now = tonumber(ARGV[1])
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'l', 't')
  local l, t = tonumber(v[1]) or 0, tonumber(v[2]) or now
  if now > t then l = math.max(0, l - (now - t) / tonumber(ARGV[i+1])) end
  out[i] = math.floor(l * 1000)
end
return out
`

type throttleScripts struct{ take, give, level *rueidis.Lua }

func newThrottleScripts() throttleScripts {
	return throttleScripts{take: rueidis.NewLuaScript(throttleTakeScript), give: rueidis.NewLuaScript(throttleGiveScript),
		level: rueidis.NewLuaScript(throttleLevelScript)}
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// Take admits one event at now if every bucket lets it pass, and then counts
// it in each (returning 0); otherwise it counts nothing and returns how long
// until the buckets would let it pass (> 0). now is the caller's clock, so
// tests can move time; Redis's own clock only expires drained buckets.
//
// The buckets live in Redis under "th:"+key, shared by all instances of the
// cell, and are updated in one script (atomically). While Redis is
// unavailable Take uses an in-process copy with the same semantics and
// returns err == nil (the limits then hold per process; counts do not carry
// over either way). err is non-nil for invalid buckets, Redis error replies
// and a done ctx.
func (c *Cache) Take(ctx context.Context, now time.Time, buckets []Bucket) (time.Duration, error) {
	keys := make([]string, len(buckets))
	args := []string{ms(now)}
	for i, b := range buckets {
		if err := b.check(); err != nil {
			return 0, err
		}
		only := "0"
		if b.CountOnly {
			only = "1"
		}
		keys[i] = throttlePrefix + b.Key
		args = append(args, strconv.Itoa(b.Free), strconv.FormatInt(ceilMillis(b.Leak), 10),
			strconv.FormatInt(ceilMillis(b.Base), 10), strconv.FormatInt(ceilMillis(b.Max), 10), only)
	}
	if len(buckets) == 0 {
		return 0, nil
	}
	res, err := c.runThrottle(ctx, c.throttle.take, keys, args)
	if err != nil {
		return 0, fmt.Errorf("cache: take: %w", err)
	}
	if res == nil {
		return c.localBuckets.take(now, buckets), nil
	}
	n, err := res.AsInt64()
	if err != nil {
		return 0, fmt.Errorf("cache: take: %w", err)
	}
	return time.Duration(n) * time.Millisecond, nil
}

// Give takes back one event from each bucket (one Take counted that turned
// out not to be a failure). Give never fails for want of Redis.
func (c *Cache) Give(ctx context.Context, now time.Time, buckets []Bucket) error {
	keys, args := c.keysLeaks(now, buckets)
	if len(keys) == 0 {
		return nil
	}
	res, err := c.runThrottle(ctx, c.throttle.give, keys, args)
	if err != nil {
		return fmt.Errorf("cache: give: %w", err)
	}
	if res == nil {
		c.localBuckets.give(now, buckets)
	}
	return nil
}

// Levels reports each bucket's level at now (0 for a missing one).
func (c *Cache) Levels(ctx context.Context, now time.Time, buckets []Bucket) ([]float64, error) {
	keys, args := c.keysLeaks(now, buckets)
	out := make([]float64, len(buckets))
	if len(keys) == 0 {
		return out, nil
	}
	res, err := c.runThrottle(ctx, c.throttle.level, keys, args)
	if err != nil {
		return nil, fmt.Errorf("cache: levels: %w", err)
	}
	if res == nil {
		return c.localBuckets.levels(now, buckets), nil
	}
	ns, err := res.AsIntSlice()
	if err == nil && len(ns) != len(buckets) {
		err = fmt.Errorf("script returned %d values, want %d", len(ns), len(buckets))
	}
	if err != nil {
		return nil, fmt.Errorf("cache: levels: %w", err)
	}
	for i, n := range ns {
		out[i] = float64(n) / 1000
	}
	return out, nil
}

// Forget empties buckets (a counter an operator or a success clears).
func (c *Cache) Forget(ctx context.Context, keys ...string) error {
	c.localBuckets.forget(keys)
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = throttlePrefix + k
	}
	err := c.Delete(ctx, full...)
	if isUnavailable(err) {
		return nil
	}
	return err
}

func (c *Cache) keysLeaks(now time.Time, buckets []Bucket) ([]string, []string) {
	keys := make([]string, len(buckets))
	args := []string{ms(now)}
	for i, b := range buckets {
		keys[i] = throttlePrefix + b.Key
		args = append(args, strconv.FormatInt(max(ceilMillis(b.Leak), 1), 10))
	}
	return keys, args
}

// runThrottle runs a bucket script; a nil result with a nil error means
// Redis is unavailable and the caller uses the in-process buckets.
func (c *Cache) runThrottle(ctx context.Context, s *rueidis.Lua, keys, args []string) (*rueidis.RedisResult, error) {
	client, err := c.conn()
	if err != nil {
		return nil, nil
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res := s.Exec(opCtx, client, keys, args)
	if err := res.Error(); err != nil {
		if cerr := c.check(ctx, err); !isUnavailable(cerr) {
			return nil, cerr
		}
		return nil, nil
	}
	return &res, nil
}

// localBuckets is Take's in-process fallback, with the scripts' semantics.
type localBuckets struct {
	mu      sync.Mutex
	b       map[string]localBucket
	sweepAt int
}

type localBucket struct {
	l       float64
	t, till time.Time // last admitted event; when it has drained
}

func newLocalBuckets() *localBuckets {
	return &localBuckets{b: map[string]localBucket{}, sweepAt: minSweep}
}

func (lb *localBuckets) level(now time.Time, b Bucket) (float64, localBucket) {
	s, ok := lb.b[b.Key]
	if !ok {
		return 0, localBucket{t: now}
	}
	l := s.l
	if now.After(s.t) {
		l = max(0, l-float64(now.Sub(s.t))/float64(b.Leak))
	}
	return l, s
}

func (lb *localBuckets) take(now time.Time, buckets []Bucket) time.Duration {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var wait time.Duration
	levels := make([]float64, len(buckets))
	for i, b := range buckets {
		l, s := lb.level(now, b)
		levels[i] = l
		if w := b.wait(l); w > 0 {
			wait = max(wait, s.t.Add(w).Sub(now))
		}
	}
	if wait > 0 {
		return wait
	}
	if len(lb.b) >= lb.sweepAt {
		for k, s := range lb.b {
			if now.After(s.till) {
				delete(lb.b, k)
			}
		}
		lb.sweepAt = max(2*len(lb.b), minSweep)
	}
	for i, b := range buckets {
		l := levels[i] + 1
		lb.b[b.Key] = localBucket{l: l, t: now, till: now.Add(b.ttl(l))}
	}
	return 0
}

func (lb *localBuckets) give(now time.Time, buckets []Bucket) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, b := range buckets {
		if s, ok := lb.b[b.Key]; ok {
			s.l = max(0, s.l-1)
			lb.b[b.Key] = s
		}
	}
}

func (lb *localBuckets) levels(now time.Time, buckets []Bucket) []float64 {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	out := make([]float64, len(buckets))
	for i, b := range buckets {
		out[i], _ = lb.level(now, b)
	}
	return out
}

func (lb *localBuckets) forget(keys []string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, k := range keys {
		delete(lb.b, k)
	}
}
