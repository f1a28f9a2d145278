package serve

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// A server whose listener fails ends the group with its error, and every
// other component is stopped before Wait returns.
func TestGroupEndsWhenAServerStops(t *testing.T) {
	g := NewGroup(context.Background())
	var workerDone, stopped atomic.Bool
	g.Go("worker", func(ctx context.Context) error {
		<-ctx.Done()
		workerDone.Store(true)
		return nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // the listener fails at once
	g.Serve("lmtp", func() error { _, err := ln.Accept(); return err }, func() error { stopped.Store(true); return nil })
	err = g.Wait()
	if err == nil || !strings.Contains(err.Error(), "lmtp stopped") {
		t.Fatalf("Wait: %v, want the failed server's error", err)
	}
	if !workerDone.Load() || !stopped.Load() {
		t.Fatalf("worker returned %v, server stopped %v: want both", workerDone.Load(), stopped.Load())
	}
}

// The group's context ending stops every component, and Wait is nil; a
// worker's error while it runs ends it with that error.
func TestGroupStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := NewGroup(ctx)
	served := make(chan struct{})
	g.Serve("api", func() error { <-served; return errors.New("closed") }, func() error { close(served); return nil })
	g.Go("worker", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatalf("Wait after the context ended: %v", err)
	}

	g = NewGroup(context.Background())
	g.Go("consumer", func(context.Context) error { return errors.New("broker gone") })
	g.Go("worker", func(ctx context.Context) error { <-ctx.Done(); return nil })
	if err := g.Wait(); err == nil || !strings.Contains(err.Error(), "consumer: broker gone") {
		t.Fatalf("Wait: %v, want the consumer's error", err)
	}
}
