package cache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache/redistest"
)

// checkLimits makes limit+1 calls to Allow for key with a one-minute window
// and checks that exactly the last one is refused, with a retry delay.
func checkLimits(t testing.TB, c *Cache, key string, limit int) {
	t.Helper()
	for i := range limit {
		ok, retry, err := c.Allow(t.Context(), key, limit, time.Minute)
		if err != nil || !ok || retry != 0 {
			t.Fatalf("Allow(%s) #%d = %v, %v, %v; want allowed", key, i+1, ok, retry, err)
		}
	}
	ok, retry, err := c.Allow(t.Context(), key, limit, time.Minute)
	if err != nil || ok || retry <= 0 || retry > time.Minute {
		t.Fatalf("Allow(%s) #%d = %v, %v, %v; want refused with 0 < retryAfter <= 1m", key, limit+1, ok, retry, err)
	}
}

func TestAllow(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()

	checkLimits(t, c, "user:1", 3)
	checkLimits(t, c, "user:2", 3) // keys are independent

	// The counter lives under the rl: prefix.
	if _, err := c.Get(ctx, "rl:user:1"); err != nil {
		t.Errorf("Get(rl:user:1) = %v, want the counter", err)
	}

	// A new window admits again.
	const window = 500 * time.Millisecond
	start := time.Now()
	if ok, _, err := c.Allow(ctx, "short", 1, window); err != nil || !ok {
		t.Fatalf("Allow(short) #1 = %v, %v; want allowed", ok, err)
	}
	ok, retry, err := c.Allow(ctx, "short", 1, window)
	if err != nil || ok || retry <= 0 || retry > window {
		t.Fatalf("Allow(short) #2 = %v, %v, %v; want refused with 0 < retryAfter <= %v", ok, retry, err, window)
	}
	eventually(t, "new window", func() error {
		ok, _, err := c.Allow(ctx, "short", 1, window)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("still refused")
		}
		return nil
	})
	if d := time.Since(start); d < window {
		t.Errorf("admitted again after %v, within the %v window", d, window)
	}

	for _, tt := range []struct {
		limit  int
		window time.Duration
	}{{0, time.Second}, {-1, time.Second}, {1, 0}, {1, time.Microsecond}} {
		if _, _, err := c.Allow(ctx, "bad", tt.limit, tt.window); err == nil {
			t.Errorf("Allow(limit %d, window %v) succeeded", tt.limit, tt.window)
		}
	}
}

// TestAllowConcurrent checks that racing callers are admitted exactly limit
// times, against Redis and against the in-process fallback.
func TestAllowConcurrent(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	down := newCache(t, redistest.New(t).Addr) // never started

	for name, c := range map[string]*Cache{"redis": c, "fallback": down} {
		t.Run(name, func(t *testing.T) {
			const (
				callers = 20
				limit   = 7
			)
			var admitted atomic.Int32
			var wg sync.WaitGroup
			errs := make(chan error, callers)
			for range callers {
				wg.Go(func() {
					ok, _, err := c.Allow(t.Context(), "burst", limit, time.Minute)
					if err != nil {
						errs <- err
						return
					}
					if ok {
						admitted.Add(1)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("Allow: %v", err)
			}
			if got := admitted.Load(); got != limit {
				t.Errorf("admitted %d of %d callers, want %d", got, callers, limit)
			}
		})
	}
}

// TestLocalLimiter drives the fallback limiter with a fake clock.
func TestLocalLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		at        time.Duration // since t0
		key       string
		allowed   bool
		retryLeft time.Duration
	}
	tests := []struct {
		name   string
		limit  int
		window time.Duration
		steps  []step
	}{
		{
			name: "limit then new window", limit: 2, window: 10 * time.Second,
			steps: []step{
				{0, "a", true, 0},
				{time.Second, "a", true, 0},
				{2 * time.Second, "a", false, 8 * time.Second},
				{9 * time.Second, "a", false, time.Second},
				{10 * time.Second, "a", true, 0}, // window [0s,10s) has ended
				{11 * time.Second, "a", true, 0},
				{12 * time.Second, "a", false, 8 * time.Second},
			},
		},
		{
			name: "keys are independent", limit: 1, window: time.Minute,
			steps: []step{
				{0, "a", true, 0},
				{0, "b", true, 0},
				{time.Second, "a", false, 59 * time.Second},
				{time.Second, "b", false, 59 * time.Second},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var now time.Time
			l := newLocalLimiter(func() time.Time { return now })
			for i, s := range tt.steps {
				now = t0.Add(s.at)
				ok, retry := l.allow(s.key, tt.limit, tt.window)
				if ok != s.allowed || retry != s.retryLeft {
					t.Errorf("step %d (%v, %s) = %v, %v; want %v, %v", i, s.at, s.key, ok, retry, s.allowed, s.retryLeft)
				}
			}
		})
	}
}

func TestLocalLimiterSweeps(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLocalLimiter(func() time.Time { return now })
	for i := range 10 * minSweep {
		l.allow(fmt.Sprint("k", i), 1, time.Second)
		now = now.Add(time.Millisecond) // each window ends 1000 calls later
	}
	if n := len(l.windows); n > 2*minSweep {
		t.Errorf("%d windows kept, want at most %d (ended ones swept)", n, 2*minSweep)
	}
}
