package cache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache/redistest"
)

// subscribe runs c.Subscribe in the background and returns its messages and
// its result; it is stopped at the end of the test.
func subscribe(t *testing.T, c *Cache, channel string) (msgs <-chan string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan string, 100)
	res := make(chan error, 1)
	go func() {
		res <- c.Subscribe(ctx, channel, func(msg []byte) {
			select {
			case ch <- string(msg):
			default: // the test is not reading; drop
			}
		})
	}()
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-res
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return ch, stop
}

// publishUntilReceived publishes numbered messages until one arrives on msgs
// (the subscription may not be in place yet) and returns it.
func publishUntilReceived(t *testing.T, c *Cache, channel string, msgs <-chan string) string {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		_ = c.Publish(t.Context(), channel, fmt.Appendf(nil, "wake %d", i)) // may fail while Redis recovers
		select {
		case m := <-msgs:
			return m
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message on %s after %v", channel, pollTimeout)
		}
	}
}

func TestPublishSubscribe(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)
	ctx := t.Context()

	msgs, stop := subscribe(t, c, "mbox:1")
	other, _ := subscribe(t, c, "mbox:2")
	publishUntilReceived(t, c, "mbox:1", msgs)

	// Once subscribed, every message arrives, in order, intact.
	want := []string{"a", "b\x00\xff", "c"}
	for _, m := range want {
		if err := c.Publish(ctx, "mbox:1", []byte(m)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	for _, w := range want {
		if got := receive(t, msgs); got != w {
			t.Fatalf("received %q, want %q", got, w)
		}
	}
	select {
	case m := <-other:
		t.Errorf("mbox:2 received %q published to mbox:1", m)
	default:
	}

	// Subscribe returns the caller's ctx error when the caller stops.
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe returned %v, want context.Canceled", err)
	}
}

// TestSubscribeSurvivesRestart checks that Subscribe resubscribes after
// Redis comes back.
func TestSubscribeSurvivesRestart(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)

	msgs, _ := subscribe(t, c, "wake")
	publishUntilReceived(t, c, "wake", msgs)

	srv.Stop()
	srv.Start()
	publishUntilReceived(t, c, "wake", msgs)
}

// TestSubscribeBeforeRedis subscribes while Redis is down; the subscription
// starts when Redis does.
func TestSubscribeBeforeRedis(t *testing.T) {
	srv := redistest.New(t)
	c := newCache(t, srv.Addr)

	msgs, _ := subscribe(t, c, "wake")
	srv.Start()
	publishUntilReceived(t, c, "wake", msgs)
}

func TestSubscribeEndsOnClose(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv.Addr)

	msgs := make(chan string, 100)
	res := make(chan error, 1)
	go func() {
		res <- c.Subscribe(t.Context(), "wake", func(msg []byte) {
			select {
			case msgs <- string(msg):
			default:
			}
		})
	}()
	publishUntilReceived(t, c, "wake", msgs)
	c.Close()
	select {
	case err := <-res:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Subscribe after Close returned %v, want ErrUnavailable", err)
		}
	case <-time.After(pollTimeout):
		t.Fatalf("Subscribe still running %v after Close", pollTimeout)
	}
}

func receive(t *testing.T, msgs <-chan string) string {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(pollTimeout):
		t.Fatalf("no message after %v", pollTimeout)
		return ""
	}
}
