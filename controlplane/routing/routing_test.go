package routing

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// Both the router and the cells route with their map client.
var _ Maps = (*client.Client)(nil)

const subject = "ann@x.example"

var errRateLimited = errors.New("refresh rate limited")

// mapAt is a map at epoch where owner holds the whole eu space; cells a, b
// and c exist.
func mapAt(t *testing.T, epoch uint64, owner string) *placement.Map {
	t.Helper()
	var cells []placement.Cell
	for _, n := range []string{"a", "b", "c"} {
		cells = append(cells, placement.Cell{Name: n, Jurisdiction: 1, APIURL: "http://" + n})
	}
	m, err := placement.NewMap(epoch, cells, []placement.Domain{{Name: "x.example", Jurisdiction: 1, Mode: placement.ModeConsumer}},
		[]placement.Range{{Jurisdiction: 1, Start: 0, Cell: owner, Epoch: epoch}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fakeMaps is a map copy (cur) and etcd (fresh): Refresh installs fresh.
type fakeMaps struct {
	cur, fresh *placement.Map
	refreshErr error
	refreshes  int
}

func (f *fakeMaps) Map() *placement.Map { return f.cur }
func (f *fakeMaps) Lookup(address string) (placement.Route, error) {
	return f.cur.Lookup(address)
}
func (f *fakeMaps) Refresh(_ context.Context, address string) (placement.Route, error) {
	f.refreshes++
	if f.refreshErr != nil {
		return placement.Route{}, f.refreshErr
	}
	f.cur = f.fresh
	return f.cur.Lookup(address)
}

// try is one call as the test saw it.
type try struct {
	Cell  string
	Epoch uint64
	Hop   int
}

func TestDo(t *testing.T) {
	wrong := func(owner string, epoch uint64) error { return &WrongCell{Owner: owner, Epoch: epoch} }
	moving := func(d time.Duration) error { return &Moving{RetryAfter: d} }
	other := errors.New("mailbox full")
	for _, tc := range []struct {
		name       string
		address    string
		cur, fresh string // owners in the copy (epoch 5) and in etcd (epoch 7)
		refreshErr error
		answers    []error // what the cells answer, in order; nil after the list
		// onWait, when set, changes the copy during a MOVING wait.
		onWait    func(t *testing.T, f *fakeMaps)
		cancelled bool // the context is cancelled during the first wait

		wantTries     []try
		wantWaits     []time.Duration
		wantRefreshes int
		wantErr       error // errors.Is
		wantWrongCell bool  // errors.As *WrongCell
		wantMoving    bool  // errors.As *Moving
	}{
		{name: "served by the map's owner", cur: "a", fresh: "a",
			wantTries: []try{{"a", 5, 1}}},
		{name: "not for us: no call", address: "ann@other.example", cur: "a", fresh: "a",
			wantErr: placement.ErrUnknownDomain},
		{name: "other errors returned as they are, no retry", cur: "a", fresh: "a", answers: []error{other},
			wantTries: []try{{"a", 5, 1}}, wantErr: other},
		{name: "WRONG_CELL: refresh, second hop to the new owner", cur: "a", fresh: "b", answers: []error{wrong("b", 7)},
			wantTries: []try{{"a", 5, 1}, {"b", 7, 2}}, wantRefreshes: 1},
		{name: "WRONG_CELL from a cell ahead of etcd's answer: its epoch travels", cur: "a", fresh: "b", answers: []error{wrong("b", 9)},
			wantTries: []try{{"a", 5, 1}, {"b", 9, 2}}, wantRefreshes: 1},
		{name: "WRONG_CELL twice: at most two hops", cur: "a", fresh: "b", answers: []error{wrong("b", 7), wrong("c", 8)},
			wantTries: []try{{"a", 5, 1}, {"b", 7, 2}}, wantRefreshes: 1, wantWrongCell: true},
		{name: "refresh rate-limited: the owner the cell named", cur: "a", fresh: "b", refreshErr: errRateLimited, answers: []error{wrong("c", 8)},
			wantTries: []try{{"a", 5, 1}, {"c", 8, 2}}, wantRefreshes: 1},
		{name: "refresh rate-limited, named owner unknown: the refresh error", cur: "a", fresh: "b", refreshErr: errRateLimited,
			answers: []error{wrong("zz", 8)}, wantTries: []try{{"a", 5, 1}}, wantRefreshes: 1, wantErr: errRateLimited},
		{name: "refresh says the domain is gone", cur: "a", fresh: "b", refreshErr: fmt.Errorf("%w: x.example", placement.ErrUnknownDomain),
			answers: []error{wrong("b", 8)}, wantTries: []try{{"a", 5, 1}}, wantRefreshes: 1, wantErr: placement.ErrUnknownDomain},
		{name: "MOVING: wait what the cell asks, same cell again", cur: "a", fresh: "a", answers: []error{moving(time.Second)},
			wantTries: []try{{"a", 5, 1}, {"a", 5, 1}}, wantWaits: []time.Duration{time.Second}},
		{name: "MOVING then the copy names the new owner: no hop spent", cur: "a", fresh: "a", answers: []error{moving(time.Second)},
			onWait:    func(t *testing.T, f *fakeMaps) { f.cur = mapAt(t, 6, "b") },
			wantTries: []try{{"a", 5, 1}, {"b", 6, 1}}, wantWaits: []time.Duration{time.Second}},
		{name: "MOVING waits are bounded each", cur: "a", fresh: "a", answers: []error{moving(0), moving(time.Hour)},
			wantTries: []try{{"a", 5, 1}, {"a", 5, 1}, {"a", 5, 1}}, wantWaits: []time.Duration{minMovingWait, maxMovingWait}},
		{name: "MOVING for ever: bounded in all, then MOVING", cur: "a", fresh: "a",
			answers:   []error{moving(2 * time.Second), moving(2 * time.Second), moving(2 * time.Second), moving(2 * time.Second), moving(2 * time.Second)},
			wantTries: []try{{"a", 5, 1}, {"a", 5, 1}, {"a", 5, 1}, {"a", 5, 1}, {"a", 5, 1}},
			wantWaits: []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}, wantMoving: true},
		{name: "MOVING, caller gives up while waiting", cur: "a", fresh: "a", answers: []error{moving(time.Second)}, cancelled: true,
			wantTries: []try{{"a", 5, 1}}, wantWaits: []time.Duration{time.Second}, wantErr: context.Canceled},
		{name: "WRONG_CELL then MOVING at the new owner", cur: "a", fresh: "b", answers: []error{wrong("b", 7), moving(time.Second)},
			wantTries: []try{{"a", 5, 1}, {"b", 7, 2}, {"b", 7, 2}}, wantWaits: []time.Duration{time.Second}, wantRefreshes: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeMaps{cur: mapAt(t, 5, tc.cur), fresh: mapAt(t, 7, tc.fresh), refreshErr: tc.refreshErr}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wrongs int
			r := New(f, Config{OnWrongCell: func(Target, *WrongCell) { wrongs++ }})
			var waits []time.Duration
			r.sleep = func(ctx context.Context, d time.Duration) error {
				waits = append(waits, d)
				if tc.onWait != nil {
					tc.onWait(t, f)
				}
				if tc.cancelled {
					cancel()
				}
				return ctx.Err()
			}
			var tries []try
			addr := tc.address
			if addr == "" {
				addr = subject
			}
			err := r.Do(ctx, addr, func(_ context.Context, tgt Target) error {
				tries = append(tries, try{tgt.Cell.Name, tgt.Epoch, tgt.Hop})
				if len(tries) <= len(tc.answers) {
					return tc.answers[len(tries)-1]
				}
				return nil
			})
			if !reflect.DeepEqual(tries, tc.wantTries) {
				t.Errorf("tries %v, want %v", tries, tc.wantTries)
			}
			if !reflect.DeepEqual(waits, tc.wantWaits) {
				t.Errorf("waits %v, want %v", waits, tc.wantWaits)
			}
			if f.refreshes != tc.wantRefreshes || wrongs != tc.wantRefreshes {
				t.Errorf("refreshes %d (OnWrongCell %d), want %d", f.refreshes, wrongs, tc.wantRefreshes)
			}
			var wc *WrongCell
			var mv *Moving
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("err %v, want %v", err, tc.wantErr)
				}
			case tc.wantWrongCell:
				if !errors.As(err, &wc) {
					t.Errorf("err %v, want WRONG_CELL", err)
				}
			case tc.wantMoving:
				if !errors.As(err, &mv) {
					t.Errorf("err %v, want MOVING", err)
				}
			case err != nil:
				t.Errorf("err %v, want nil", err)
			}
		})
	}
}

func TestResolveUnknownCell(t *testing.T) {
	m, err := placement.NewMap(3, []placement.Cell{{Name: "a", Jurisdiction: 1}},
		[]placement.Domain{{Name: "x.example", Jurisdiction: 1, Mode: placement.ModeConsumer}},
		[]placement.Range{{Jurisdiction: 1, Start: 0, Cell: "a"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gone, _ := placement.NewMap(4, nil, nil, nil, nil)
	f := &fakeMaps{cur: m}
	r := New(f, Config{})
	tgt, err := r.Resolve(subject)
	if err != nil || tgt.Cell.Name != "a" || tgt.Epoch != 3 || tgt.Hop != 1 {
		t.Fatalf("Resolve: %+v, %v", tgt, err)
	}
	// The copy changes between the lookup and the cell's record.
	f.cur = gone
	if _, err := r.target(tgt.Route); !errors.Is(err, placement.ErrUnknownCell) {
		t.Fatalf("cell gone: %v, want ErrUnknownCell", err)
	}
}
