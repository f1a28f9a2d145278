package cache

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache/redistest"
)

// fast bounds how long a call may take while Redis is down or hung.
const fast = time.Second

// pollTimeout bounds every wait for an asynchronous change.
const pollTimeout = 15 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newCache returns a Cache for addr that is closed at the end of the test.
func newCache(t testing.TB, addr string) *Cache {
	t.Helper()
	c, err := New(t.Context(), Config{Addr: addr, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// eventually polls f until it returns nil, failing the test with f's last
// error after pollTimeout.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, pollTimeout, err)
		}
		<-tick.C
	}
}

// timed runs f and fails the test if it took longer than fast.
func timed(t testing.TB, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	if d := time.Since(start); d > fast {
		t.Errorf("%s took %v, want < %v", what, d, fast)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{Addr: "127.0.0.1:6379"}, true},
		{"no addr", Config{}, false},
		{"no port", Config{Addr: "localhost"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if _, err := New(t.Context(), Config{}); err == nil {
		t.Error("New with empty Config succeeded")
	}
}

func TestGetSetDelete(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()

	if _, err := c.Get(ctx, "absent"); !errors.Is(err, ErrMiss) {
		t.Fatalf("Get(absent) = %v, want ErrMiss", err)
	}
	val := []byte("hot\x00list\xff")
	if err := c.Set(ctx, "k", val, time.Minute); err != nil {
		t.Fatalf("Set: %v", err)
	}
	got, err := c.Get(ctx, "k")
	if err != nil || !bytes.Equal(got, val) {
		t.Fatalf("Get(k) = %q, %v; want %q", got, err, val)
	}
	if err := c.Set(ctx, "k2", []byte("v2"), time.Minute); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := c.Delete(ctx, "k", "k2", "absent"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	for _, k := range []string{"k", "k2"} {
		if _, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
			t.Errorf("Get(%s) after Delete = %v, want ErrMiss", k, err)
		}
	}
	if err := c.Delete(ctx); err != nil {
		t.Errorf("Delete() = %v", err)
	}
	if err := c.Set(ctx, "k", val, 0); err == nil {
		t.Error("Set with ttl 0 succeeded")
	}
}

func TestSetTTLExpires(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()

	const ttl = 300 * time.Millisecond
	start := time.Now()
	if err := c.Set(ctx, "k", []byte("v"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if _, err := c.Get(ctx, "k"); err != nil && time.Since(start) < ttl {
		t.Fatalf("Get before ttl: %v", err)
	}
	eventually(t, "expiry", func() error {
		_, err := c.Get(ctx, "k")
		if errors.Is(err, ErrMiss) {
			return nil
		}
		return errors.Join(errors.New("still present"), err)
	})
	if d := time.Since(start); d < ttl {
		t.Errorf("expired after %v, before ttl %v", d, ttl)
	}
}

func TestCallerCancelDoesNotMarkDown(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := c.Get(ctx, "k")
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with cancelled ctx = %v, want context.Canceled only", err)
	}
	if _, err := c.Get(t.Context(), "k"); !errors.Is(err, ErrMiss) {
		t.Fatalf("Get after a cancelled call = %v, want ErrMiss", err)
	}
}

// TestOutage stops Redis under a working Cache, checks that every method
// degrades quickly, and that the Cache recovers when Redis is back.
func TestOutage(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()
	if err := c.Set(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Set: %v", err)
	}
	// Load the rate-limit script, so that after the restart Allow goes
	// through rueidis's NOSCRIPT fallback from EVALSHA to EVAL.
	checkLimits(t, c, "before", 1)

	srv.Stop()
	// The first call after the crash meets the dead connection; later ones
	// fail without touching the network. Both must be quick.
	for i := range 3 {
		timed(t, "Get", func() {
			if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Get #%d while down = %v, want ErrUnavailable", i, err)
			}
		})
		timed(t, "Set", func() {
			if err := c.Set(ctx, "k", []byte("v"), time.Minute); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Set #%d while down = %v, want ErrUnavailable", i, err)
			}
		})
	}
	timed(t, "Delete", func() {
		if err := c.Delete(ctx, "k"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Delete while down = %v, want ErrUnavailable", err)
		}
	})
	timed(t, "Publish", func() {
		if err := c.Publish(ctx, "ch", []byte("x")); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Publish while down = %v, want ErrUnavailable", err)
		}
	})
	timed(t, "Allow", func() {
		checkLimits(t, c, "outage", 2)
	})

	srv.Start()
	eventually(t, "Set after restart", func() error {
		return c.Set(ctx, "k", []byte("v2"), time.Minute)
	})
	if got, err := c.Get(ctx, "k"); err != nil || string(got) != "v2" {
		t.Fatalf("Get after restart = %q, %v; want v2", got, err)
	}
	// Back on Redis: the counter is fresh (the server lost its data) and
	// shared again.
	checkLimits(t, c, "after", 2)
	c2 := newCache(t, srv.Addr)
	if ok, _, err := c2.Allow(ctx, "after", 2, time.Minute); err != nil || ok {
		t.Errorf("Allow from a second Cache = %v, %v; want refused (shared counter)", ok, err)
	}
}

// TestHungRedis pauses the server: commands get no reply, and must be cut
// off by the per-call timeout.
func TestHungRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()
	if err := c.Set(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Set: %v", err)
	}

	srv.Pause()
	for i := range 3 {
		timed(t, "Get", func() {
			if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Get #%d while hung = %v, want ErrUnavailable", i, err)
			}
		})
	}
	timed(t, "Allow", func() {
		if ok, _, err := c.Allow(ctx, "hung", 1, time.Minute); err != nil || !ok {
			t.Errorf("Allow while hung = %v, %v; want allowed by the fallback", ok, err)
		}
	})

	srv.Resume()
	eventually(t, "Get after resume", func() error {
		_, err := c.Get(ctx, "k")
		return err
	})
}

// TestNewWhileDown starts the Cache before Redis exists.
func TestNewWhileDown(t *testing.T) {
	srv := redistest.New(t)
	ctx := t.Context()
	var c *Cache
	timed(t, "New", func() { c = newCache(t, srv.Addr) })

	timed(t, "Get", func() {
		if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Get before Redis = %v, want ErrUnavailable", err)
		}
	})
	timed(t, "Set", func() {
		if err := c.Set(ctx, "k", []byte("v"), time.Minute); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Set before Redis = %v, want ErrUnavailable", err)
		}
	})
	checkLimits(t, c, "early", 3)

	srv.Start()
	eventually(t, "Set once Redis is up", func() error {
		return c.Set(ctx, "k", []byte("v"), time.Minute)
	})
	if got, err := c.Get(ctx, "k"); err != nil || string(got) != "v" {
		t.Fatalf("Get = %q, %v; want v", got, err)
	}
}

func TestClose(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()

	c.Close()
	c.Close() // idempotent
	if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Get after Close = %v, want ErrUnavailable", err)
	}
	if ok, _, err := c.Allow(ctx, "k", 1, time.Minute); err != nil || !ok {
		t.Errorf("Allow after Close = %v, %v; want allowed by the fallback", ok, err)
	}
	if err := c.Subscribe(ctx, "ch", func([]byte) {}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Subscribe after Close = %v, want ErrUnavailable", err)
	}
}
