package cache

import (
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache/redistest"
)

// Take, Give and Levels behave the same on Redis and on the in-process
// fallback: free events, then waits that double, a refused event that
// counts nothing, draining, giving back.
func TestTakeRedisAndFallback(t *testing.T) {
	srv := redistest.Start(t)
	for _, backend := range []string{"redis", "fallback"} {
		t.Run(backend, func(t *testing.T) {
			addr := srv.Addr
			if backend == "fallback" {
				addr = "127.0.0.1:1" // nothing listens there
			}
			c := newCache(t, addr)
			ctx := t.Context()
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			b := Bucket{Key: backend + ":k", Free: 2, Leak: time.Minute, Base: time.Second, Max: 4 * time.Second}
			counter := Bucket{Key: backend + ":n", Leak: time.Hour, Base: time.Second, Max: time.Second, CountOnly: true}
			take := func(want time.Duration) {
				t.Helper()
				got, err := c.Take(ctx, now, []Bucket{b, counter})
				if err != nil || got != want {
					t.Fatalf("Take at %v = %v, %v; want %v", now.Format(time.TimeOnly), got, err, want)
				}
			}
			take(0)
			take(0)
			take(time.Second) // count 2 = Free: wait Base
			take(time.Second) // refused: nothing counted
			now = now.Add(time.Second)
			take(0)
			take(2 * time.Second)
			now = now.Add(2 * time.Second)
			take(0)
			take(4 * time.Second)
			now = now.Add(4 * time.Second)
			take(0)
			take(4 * time.Second) // Max, not 8s
			now = now.Add(time.Hour)
			take(0) // drained
			lv, err := c.Levels(ctx, now, []Bucket{counter, {Key: backend + ":none", Leak: time.Minute, Base: time.Second, Max: time.Second}})
			if err != nil || lv[0] < 4.9 || lv[0] > 5 || lv[1] != 0 {
				t.Fatalf("Levels = %v, %v; want [~5 0]", lv, err)
			}
			if err := c.Give(ctx, now, []Bucket{counter}); err != nil {
				t.Fatal(err)
			}
			if lv, _ := c.Levels(ctx, now, []Bucket{counter}); lv[0] < 3.9 || lv[0] > 4 {
				t.Fatalf("after Give: %v, want ~4", lv)
			}
			if err := c.Forget(ctx, b.Key); err != nil {
				t.Fatal(err)
			}
			take(0)
			if _, err := c.Take(ctx, now, []Bucket{{Key: "bad", Leak: 0, Base: time.Second, Max: time.Second}}); err == nil {
				t.Fatal("Take with a zero Leak: no error")
			}
		})
	}
}
