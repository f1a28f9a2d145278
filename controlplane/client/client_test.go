package client_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/cptest"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/controlplane/placement"
)

type env struct {
	etcd *cptest.Etcd
	st   *store.Store
}

func newEnv(t *testing.T) *env {
	e := cptest.StartEtcd(t)
	st, err := store.Open(store.Config{Endpoints: e.Endpoints}, cptest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ev := &env{etcd: e, st: st}
	ev.update(t, func(tx *store.Tx) error {
		for _, c := range []*pb.Cell{{Name: "eu-1", Jurisdiction: "eu", ApiUrl: "http://x"}, {Name: "eu-2", Jurisdiction: "eu", ApiUrl: "http://y"}} {
			if err := tx.Put(st.CellKey(c.Name), c); err != nil {
				return err
			}
		}
		if err := tx.Put(st.RangeKey("eu", 0), &pb.Range{Jurisdiction: "eu", Cell: "eu-1"}); err != nil {
			return err
		}
		return tx.Put(st.DomainKey("eu.example"), &pb.Domain{Name: "eu.example", Jurisdiction: "eu", Mode: pb.PlacementMode_PLACEMENT_MODE_TENANT})
	})
	return ev
}

func (e *env) update(t *testing.T, f func(tx *store.Tx) error) uint64 {
	t.Helper()
	epoch, err := e.st.Update(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return epoch
}

// assign moves the whole eu range to cell (a raw map edit, as a test).
func (e *env) assign(t *testing.T, cell string) uint64 {
	return e.update(t, func(tx *store.Tx) error {
		return tx.Put(e.st.RangeKey("eu", 0), &pb.Range{Jurisdiction: "eu", Cell: cell, Epoch: tx.NewEpoch()})
	})
}

func run(t *testing.T, c *client.Client) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

func owner(t *testing.T, c *client.Client) string {
	t.Helper()
	rt, err := c.Lookup("someone@eu.example")
	if err != nil {
		t.Fatal(err)
	}
	return rt.Cell
}

func wait(t *testing.T, c *client.Client, epoch uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitEpoch(ctx, epoch); err != nil {
		t.Fatal(err)
	}
}

func TestWatchFollowsChanges(t *testing.T) {
	e := newEnv(t)
	c, err := client.New(client.Config{Endpoints: e.etcd.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Lookup("a@eu.example"); !errors.Is(err, client.ErrNotReady) {
		t.Fatalf("lookup before ready: %v, want ErrNotReady", err)
	}
	run(t, c)
	<-c.Ready()
	if got := owner(t, c); got != "eu-1" {
		t.Fatalf("owner %s, want eu-1", got)
	}
	wait(t, c, e.assign(t, "eu-2"))
	if got := owner(t, c); got != "eu-2" {
		t.Fatalf("owner after change %s, want eu-2", got)
	}
	if c.Staleness() > 5*time.Second {
		t.Fatalf("staleness %s right after a change", c.Staleness())
	}
}

// A client restarted from a snapshot whose revision has been compacted
// away lists the map again and ends up current.
func TestRecoversFromCompactionByListingAgain(t *testing.T) {
	e := newEnv(t)
	snap := client.FileSnapshot{Path: filepath.Join(t.TempDir(), "map.snapshot")}
	c1, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c1)
	<-c1.Ready()
	stop() // writes the snapshot
	c1.Close()

	e.assign(t, "eu-1")
	epoch := e.assign(t, "eu-2") // compaction keeps only the newest revision
	if _, err := e.etcd.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}

	c2, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	run(t, c2)
	wait(t, c2, epoch)
	if got := owner(t, c2); got != "eu-2" {
		t.Fatalf("owner %s after recovery, want eu-2", got)
	}
	if c2.Relists() != 1 {
		t.Fatalf("relists = %d, want 1 (the snapshot's revision was compacted)", c2.Relists())
	}
}

// A client restarted from a snapshot while etcd is down serves the
// snapshot's map and says how stale it is.
func TestServesSnapshotWhileEtcdIsDown(t *testing.T) {
	e := newEnv(t)
	snap := client.FileSnapshot{Path: filepath.Join(t.TempDir(), "map.snapshot")}
	c1, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c1)
	<-c1.Ready()
	stop()
	c1.Close()
	e.etcd.Close()

	c2, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	run(t, c2)
	select {
	case <-c2.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready from the snapshot")
	}
	if got := owner(t, c2); got != "eu-1" {
		t.Fatalf("owner %s from snapshot, want eu-1", got)
	}
	if c2.Staleness() <= 0 {
		t.Fatal("staleness not reported")
	}
}

// Refresh reads one subject linearizably into a copy that is held still.
func TestRefreshUpdatesOneSubject(t *testing.T) {
	e := newEnv(t)
	snap := client.FileSnapshot{Path: filepath.Join(t.TempDir(), "map.snapshot")}
	c1, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c1)
	<-c1.Ready()
	stop()
	c1.Close()
	e.assign(t, "eu-2")
	pinEpoch := e.update(t, func(tx *store.Tx) error {
		return tx.Put(e.st.PinKey("pinned.example"), &pb.Pin{Key: "pinned.example", Cell: "eu-1", Epoch: tx.NewEpoch()})
	})

	held, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, Snapshot: snap, RefreshRate: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.LoadSnapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := owner(t, held); got != "eu-1" {
		t.Fatalf("held copy owner %s, want the stale eu-1", got)
	}
	rt, err := held.Refresh(context.Background(), "someone@eu.example")
	if err != nil {
		t.Fatal(err)
	}
	if rt.Cell != "eu-2" || rt.Epoch < pinEpoch {
		t.Fatalf("refreshed route %s at epoch %d, want eu-2 at ≥ %d", rt.Cell, rt.Epoch, pinEpoch)
	}
	// The limiter allows one refresh a second (burst 1).
	if _, err := held.Refresh(context.Background(), "someone@eu.example"); !errors.Is(err, client.ErrRateLimited) {
		t.Fatalf("second refresh: %v, want ErrRateLimited", err)
	}
	if _, err := held.Refresh(context.Background(), "not an address"); !errors.Is(err, placement.ErrInvalidAddress) {
		t.Fatalf("bad address: %v", err)
	}
}

// An idle map (no writes at all) is still known to be current: staleness
// stays within a few check periods.
func TestIdleMapStaysCurrent(t *testing.T) {
	e := newEnv(t)
	every := 50 * time.Millisecond
	c, err := client.New(client.Config{Endpoints: e.etcd.Endpoints, ProgressEvery: every})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	run(t, c)
	<-c.Ready()
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		idle := time.Since(start)
		if s := c.Staleness(); idle > 10*every && s < 4*every {
			return // current long after the last write
		}
		if time.Now().After(deadline) {
			t.Fatalf("staleness %s after %s idle", c.Staleness(), idle)
		}
		time.Sleep(every / 2)
	}
}
