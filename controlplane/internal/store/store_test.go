package store_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellmail/cellmail/controlplane/cptest"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/internal/store"
)

func open(t *testing.T) (*store.Store, *cptest.Etcd) {
	t.Helper()
	e := cptest.StartEtcd(t)
	st, err := store.Open(store.Config{Endpoints: e.Endpoints}, cptest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, e
}

func putDomain(st *store.Store, name string) func(tx *store.Tx) error {
	return func(tx *store.Tx) error {
		return tx.Put(st.DomainKey(name), &pb.Domain{Name: name, Jurisdiction: "eu", Epoch: tx.NewEpoch()})
	}
}

func TestEpochRisesByOnePerChange(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	var last uint64
	for i, d := range []string{"a.example", "b.example", "c.example"} {
		e, err := st.Update(ctx, putDomain(st, d))
		if err != nil {
			t.Fatal(err)
		}
		if e != last+1 {
			t.Fatalf("change %d: epoch %d, want %d", i, e, last+1)
		}
		last = e
	}
	// A change that writes nothing commits nothing.
	e, err := st.Update(ctx, func(tx *store.Tx) error { return nil })
	if err != nil || e != last {
		t.Fatalf("empty change: epoch %d err %v, want %d", e, err, last)
	}
	kvs, _, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := st.Decode(kvs)
	if err != nil {
		t.Fatal(err)
	}
	if recs.Epoch != last || len(recs.Domains) != 3 {
		t.Fatalf("stored epoch %d domains %d, want %d and 3", recs.Epoch, len(recs.Domains), last)
	}
}

func TestChangeErrorWritesNothing(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	boom := errors.New("boom")
	_, err := st.Update(ctx, func(tx *store.Tx) error {
		if err := putDomain(st, "a.example")(tx); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	kvs, _, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 0 {
		t.Fatalf("%d keys written by a failed change", len(kvs))
	}
}

// Two changes that read the same key and write it, committing after both
// have read: exactly one wins, the other gets ErrConflict.
func TestConflictingChangesOneWins(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	if _, err := st.Update(ctx, putDomain(st, "a.example")); err != nil {
		t.Fatal(err)
	}
	var read sync.WaitGroup
	read.Add(2)
	errs := make(chan error, 2)
	for _, jur := range []string{"eu", "us"} {
		go func() {
			first := true
			_, err := st.Update(ctx, func(tx *store.Tx) error {
				var d pb.Domain
				if _, err := tx.Get(st.DomainKey("a.example"), &d); err != nil {
					return err
				}
				if first {
					first = false
					read.Done()
					read.Wait()
				}
				d.Jurisdiction = jur
				return tx.Put(st.DomainKey("a.example"), &d)
			})
			errs <- err
		}()
	}
	var won, aborted int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			won++
		case errors.Is(err, store.ErrConflict):
			aborted++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if won != 1 || aborted != 1 {
		t.Fatalf("won %d aborted %d, want 1 and 1", won, aborted)
	}
}

// A change that lost only to an unrelated change runs again and commits.
func TestUnrelatedChangeIsRetried(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	var runs atomic.Int32
	e, err := st.Update(ctx, func(tx *store.Tx) error {
		var d pb.Domain
		if _, err := tx.Get(st.DomainKey("a.example"), &d); err != nil {
			return err
		}
		if runs.Add(1) == 1 {
			if _, err := st.Update(ctx, putDomain(st, "other.example")); err != nil {
				return err
			}
		}
		return putDomain(st, "a.example")(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 2 || e != 2 {
		t.Fatalf("runs %d epoch %d, want 2 and 2", runs.Load(), e)
	}
}

func TestWatchReportsCompaction(t *testing.T) {
	st, e := open(t)
	ctx := context.Background()
	_, rev0, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a.example", "b.example"} {
		if _, err := st.Update(ctx, putDomain(st, d)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b := <-st.Watch(wctx, rev0)
	if !errors.Is(b.Err, store.ErrCompacted) {
		t.Fatalf("watch from compacted revision: %+v, want ErrCompacted", b)
	}
}

func TestWatchDeliversChanges(t *testing.T) {
	st, _ := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, rev, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := st.Watch(ctx, rev)
	if _, err := st.Update(ctx, putDomain(st, "a.example")); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for !seen[st.DomainKey("a.example")] || !seen[st.EpochKey()] {
		b, ok := <-ch
		if !ok || b.Err != nil {
			t.Fatalf("watch ended: %v", b.Err)
		}
		for _, ev := range b.Events {
			seen[ev.Key] = true
		}
	}
}

func TestCampaignHandsOverOnResign(t *testing.T) {
	st, _ := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l1, err := st.Campaign(ctx, "mover", "one", 5)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *store.Leadership, 1)
	go func() {
		l2, err := st.Campaign(ctx, "mover", "two", 5)
		if err != nil {
			t.Error(err)
		}
		got <- l2
	}()
	select {
	case <-got:
		t.Fatal("second candidate leads while the first holds leadership")
	case <-time.After(300 * time.Millisecond): // a window in which it must not win
	}
	if err := l1.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if l1.Context().Err() == nil {
		t.Fatal("resigned leadership's context still live")
	}
	select {
	case l2 := <-got:
		if l2 == nil || l2.Context().Err() != nil {
			t.Fatal("second candidate did not take over")
		}
		_ = l2.Resign(ctx)
	case <-ctx.Done():
		t.Fatal("second candidate never led")
	}
}

func TestKeepAliveHoldsKeyUntilCancelled(t *testing.T) {
	st, _ := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- st.KeepAlive(ctx, "eu-1", "i1", &pb.Liveness{Instance: "i1"}, 5*time.Second)
	}()
	alive := func() int {
		kvs, _, err := st.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		recs, err := st.Decode(kvs)
		if err != nil {
			t.Fatal(err)
		}
		return len(recs.Alive["eu-1"])
	}
	waitFor(t, func() bool { return alive() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return alive() == 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
