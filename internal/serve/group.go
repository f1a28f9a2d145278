package serve

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
)

// Group runs a process's components as one (after oklog/run, as
// Prometheus's main uses it, on errgroup): a worker runs until the group's
// context ends, and its error ends the group; a server that stops by
// itself (its listener failed) ends the group with that error, and every
// other component is stopped. Wait returns when every component has
// returned, so the adapters its caller closes afterwards (the store, the
// cache, the queue's clients) are no longer in use.
type Group struct {
	g      *errgroup.Group
	ctx    context.Context
	cancel context.CancelFunc
}

// NewGroup makes a group whose components stop when ctx ends.
func NewGroup(ctx context.Context) *Group {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	return &Group{g: g, ctx: gctx, cancel: cancel}
}

// Context is the group's context: done when the group stops.
func (g *Group) Context() context.Context { return g.ctx }

// Go runs a worker: f works until ctx ends; an error it returns while the
// group runs ends the group.
func (g *Group) Go(name string, f func(ctx context.Context) error) {
	g.g.Go(func() error {
		err := f(g.ctx)
		if err != nil && g.ctx.Err() == nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// Serve runs a server: serve until the group stops, then stop; a serve
// that returns before (a failed listener) ends the group.
func (g *Group) Serve(name string, serve func() error, stop func() error) {
	g.g.Go(func() error {
		err := serve()
		if g.ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%s stopped: %v", name, err)
	})
	g.g.Go(func() error {
		<-g.ctx.Done()
		_ = stop()
		return nil
	})
}

// Wait waits for every component and returns the first error that ended
// the group (nil when its context ended it).
func (g *Group) Wait() error {
	err := g.g.Wait()
	g.cancel()
	return err
}

// Stop ends the group and waits for its components (a setup that failed
// after some had started).
func (g *Group) Stop() {
	g.cancel()
	_ = g.g.Wait()
}
