package api_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/cptest"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/internal/api"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// counter answers for the cells. Until the mail store exists no real cell
// holds a subject, so the "cell still holds users" answers come from here.
type counter struct {
	mu sync.Mutex
	fn func(ctx context.Context, cell *pb.Cell, req *pb.CountPlacedRequest) (uint64, error)
}

func (c *counter) CountPlaced(ctx context.Context, cell *pb.Cell, req *pb.CountPlacedRequest) (uint64, error) {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn == nil {
		return 0, nil
	}
	return fn(ctx, cell, req)
}

func (c *counter) set(fn func(ctx context.Context, cell *pb.Cell, req *pb.CountPlacedRequest) (uint64, error)) {
	c.mu.Lock()
	c.fn = fn
	c.mu.Unlock()
}

type fixture struct {
	cp      controlplanev1connect.ControlPlaneServiceClient
	url     string
	counter *counter
	svc     *api.Service
	st      *store.Store
}

func setup(t *testing.T) *fixture {
	e := cptest.StartEtcd(t)
	log := cptest.Logger(t)
	st, err := store.Open(store.Config{Endpoints: e.Endpoints}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	maps, err := client.New(client.Config{Endpoints: e.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = maps.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; maps.Close() })

	f := &fixture{counter: &counter{}, st: st}
	f.svc = api.NewService(st, maps, f.counter, log)
	mux := http.NewServeMux()
	mux.Handle(controlplanev1connect.NewControlPlaneServiceHandler(f.svc,
		connect.WithInterceptors(api.NewAuthInterceptor(cptest.AdminToken, log))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	f.cp = controlplanev1connect.NewControlPlaneServiceClient(srv.Client(), srv.URL, connect.WithInterceptors(bearer(cptest.AdminToken)))

	for _, c := range []struct{ name, jur string }{{"eu-1", "eu"}, {"eu-2", "eu"}, {"eu-3", "eu"}, {"us-1", "us"}} {
		must(f.cp.RegisterCell(context.Background(), connect.NewRequest(&pb.RegisterCellRequest{Name: c.name, Jurisdiction: c.jur, ApiUrl: "http://127.0.0.1:1"})))(t)
	}
	must(f.cp.AddDomain(context.Background(), connect.NewRequest(&pb.AddDomainRequest{Name: "eu.example", Jurisdiction: "eu", Mode: pb.PlacementMode_PLACEMENT_MODE_CONSUMER})))(t)
	must(f.cp.AddDomain(context.Background(), connect.NewRequest(&pb.AddDomainRequest{Name: "acme.example", Jurisdiction: "eu", Mode: pb.PlacementMode_PLACEMENT_MODE_TENANT})))(t)
	return f
}

func bearer(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}
}

// must(call())(t) fails the test when call failed, else returns its value.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func (f *fixture) epoch(t *testing.T) uint64 {
	t.Helper()
	return must(f.cp.ListRanges(context.Background(), connect.NewRequest(&pb.ListRangesRequest{})))(t).Msg.Epoch
}

func (f *fixture) lookup(t *testing.T, addr string) *pb.LookupResponse {
	t.Helper()
	return must(f.cp.Lookup(context.Background(), connect.NewRequest(&pb.LookupRequest{Address: addr})))(t).Msg
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("err = %v, want %v", err, code)
	}
}

// Each bad call gets its code and leaves the map as it was.
func TestBadInputChangesNothing(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	must(f.cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: 1 << 40})))(t)
	f.counter.set(func(context.Context, *pb.Cell, *pb.CountPlacedRequest) (uint64, error) { return 3, nil })
	before := f.epoch(t)
	for _, tc := range []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"register bad name", func() error {
			_, err := f.cp.RegisterCell(ctx, connect.NewRequest(&pb.RegisterCellRequest{Name: "Bad Name", Jurisdiction: "eu", ApiUrl: "http://x"}))
			return err
		}, connect.CodeInvalidArgument},
		{"register unknown jurisdiction", func() error {
			_, err := f.cp.RegisterCell(ctx, connect.NewRequest(&pb.RegisterCellRequest{Name: "x-1", Jurisdiction: "mars", ApiUrl: "http://x"}))
			return err
		}, connect.CodeInvalidArgument},
		{"register moves jurisdiction", func() error {
			_, err := f.cp.RegisterCell(ctx, connect.NewRequest(&pb.RegisterCellRequest{Name: "eu-1", Jurisdiction: "us", ApiUrl: "http://x"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"domain that does not parse", func() error {
			_, err := f.cp.AddDomain(ctx, connect.NewRequest(&pb.AddDomainRequest{Name: "bad..example", Jurisdiction: "eu", Mode: pb.PlacementMode_PLACEMENT_MODE_TENANT}))
			return err
		}, connect.CodeInvalidArgument},
		{"domain without mode", func() error {
			_, err := f.cp.AddDomain(ctx, connect.NewRequest(&pb.AddDomainRequest{Name: "new.example", Jurisdiction: "eu"}))
			return err
		}, connect.CodeInvalidArgument},
		{"domain in jurisdiction without cells", func() error {
			_, err := f.cp.AddDomain(ctx, connect.NewRequest(&pb.AddDomainRequest{Name: "new.example", Jurisdiction: "jp", Mode: pb.PlacementMode_PLACEMENT_MODE_TENANT}))
			return err
		}, connect.CodeFailedPrecondition},
		{"domain re-added elsewhere", func() error {
			_, err := f.cp.AddDomain(ctx, connect.NewRequest(&pb.AddDomainRequest{Name: "EU.example", Jurisdiction: "us", Mode: pb.PlacementMode_PLACEMENT_MODE_CONSUMER}))
			return err
		}, connect.CodeFailedPrecondition},
		{"lookup unknown domain", func() error {
			_, err := f.cp.Lookup(ctx, connect.NewRequest(&pb.LookupRequest{Address: "a@unknown.example"}))
			return err
		}, connect.CodeNotFound},
		{"lookup bad address", func() error {
			_, err := f.cp.Lookup(ctx, connect.NewRequest(&pb.LookupRequest{Address: "a@@eu.example"}))
			return err
		}, connect.CodeInvalidArgument},
		{"split at a boundary", func() error {
			_, err := f.cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: 1 << 40}))
			return err
		}, connect.CodeFailedPrecondition},
		{"split at zero", func() error {
			_, err := f.cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: 0}))
			return err
		}, connect.CodeInvalidArgument},
		{"split beyond the space", func() error {
			_, err := f.cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: placement.SpaceEnd}))
			return err
		}, connect.CodeInvalidArgument},
		{"assign to another jurisdiction", func() error {
			_, err := f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 0, Cell: "us-1"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"assign a range that does not exist", func() error {
			_, err := f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 12345, Cell: "eu-2"}))
			return err
		}, connect.CodeNotFound},
		{"assign a range with users", func() error {
			_, err := f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 0, Cell: "eu-2"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"remove a domain with users", func() error {
			_, err := f.cp.RemoveDomain(ctx, connect.NewRequest(&pb.RemoveDomainRequest{Name: "eu.example"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"pin an address of a tenant domain", func() error {
			_, err := f.cp.SetPin(ctx, connect.NewRequest(&pb.SetPinRequest{Subject: "ceo@acme.example", Cell: "eu-2"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"pin to another jurisdiction", func() error {
			_, err := f.cp.SetPin(ctx, connect.NewRequest(&pb.SetPinRequest{Subject: "acme.example", Cell: "us-1"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"clear a pin that does not exist", func() error {
			_, err := f.cp.ClearPin(ctx, connect.NewRequest(&pb.ClearPinRequest{Subject: "acme.example"}))
			return err
		}, connect.CodeNotFound},
		{"state unspecified", func() error {
			_, err := f.cp.SetCellState(ctx, connect.NewRequest(&pb.SetCellStateRequest{Name: "eu-1"}))
			return err
		}, connect.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.code) })
	}
	// Failed freezes are rolled back: one epoch each for freeze and thaw.
	ranges := must(f.cp.ListRanges(ctx, connect.NewRequest(&pb.ListRangesRequest{Jurisdiction: "eu"})))(t).Msg
	for _, r := range ranges.Ranges {
		if r.Frozen || r.Cell != "eu-1" {
			t.Fatalf("range %+v changed by failed calls", r)
		}
	}
	doms := must(f.cp.ListDomains(ctx, connect.NewRequest(&pb.ListDomainsRequest{})))(t).Msg.Domains
	if len(doms) != 2 || doms[1].Frozen {
		t.Fatalf("domains changed by failed calls: %v", doms)
	}
	if got := f.epoch(t); got != before+4 {
		t.Fatalf("epoch %d after failures, want %d (two freeze/thaw pairs only)", got, before+4)
	}
	// Lookup answers from the watched map, which reaches the last thaw's
	// epoch a moment after the store does.
	rt := f.lookup(t, "bob@eu.example")
	for deadline := time.Now().Add(10 * time.Second); rt.Epoch < before+4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		rt = f.lookup(t, "bob@eu.example")
	}
	if rt.Cell != "eu-1" || rt.Frozen || rt.Epoch < before+4 {
		t.Fatalf("route changed: %+v", rt)
	}
}

func TestUnauthenticatedCallsAreRefused(t *testing.T) {
	f := setup(t)
	for _, token := range []string{"wrong-token-0123456789", ""} {
		c := controlplanev1connect.NewControlPlaneServiceClient(http.DefaultClient, f.url, connect.WithInterceptors(bearer(token)))
		_, err := c.ListCells(context.Background(), connect.NewRequest(&pb.ListCellsRequest{}))
		wantCode(t, err, connect.CodeUnauthenticated)
	}
}

func TestAssignPinAndRemoveWhenEmpty(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	var asked []*pb.CountPlacedRequest
	var mu sync.Mutex
	f.counter.set(func(_ context.Context, _ *pb.Cell, req *pb.CountPlacedRequest) (uint64, error) {
		mu.Lock()
		asked = append(asked, req)
		mu.Unlock()
		return 0, nil
	})
	r := must(f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 0, Cell: "eu-2"})))(t).Msg.Range
	if r.Cell != "eu-2" || r.Frozen || r.End != placement.SpaceEnd {
		t.Fatalf("assigned range %+v", r)
	}
	if len(asked) != 1 || asked[0].MinEpoch == 0 || asked[0].End != placement.SpaceEnd {
		t.Fatalf("owner asked %v, want one count of the whole range after the freeze", asked)
	}
	if rt := f.lookup(t, "bob@eu.example"); rt.Cell != "eu-2" {
		t.Fatalf("route after assign: %+v", rt)
	}
	must(f.cp.SetPin(ctx, connect.NewRequest(&pb.SetPinRequest{Subject: "Bob+x@EU.example", Cell: "eu-3"})))(t)
	if rt := f.lookup(t, "bob@eu.example"); rt.Cell != "eu-3" || !rt.Pinned {
		t.Fatalf("route after pin: %+v", rt)
	}
	must(f.cp.ClearPin(ctx, connect.NewRequest(&pb.ClearPinRequest{Subject: "bob@eu.example"})))(t)
	if rt := f.lookup(t, "bob@eu.example"); rt.Cell != "eu-2" || rt.Pinned {
		t.Fatalf("route after clearing the pin: %+v", rt)
	}
	must(f.cp.RemoveDomain(ctx, connect.NewRequest(&pb.RemoveDomainRequest{Name: "eu.example"})))(t)
	_, err := f.cp.Lookup(ctx, connect.NewRequest(&pb.LookupRequest{Address: "bob@eu.example"}))
	wantCode(t, err, connect.CodeNotFound)
}

// Two assignments of one range at once: exactly one wins, the other is
// aborted, and the range ends with the winner.
func TestConcurrentConflictingAssignsOneWins(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	entered := make(chan struct{}, 2)
	release := make(chan struct{})
	f.counter.set(func(context.Context, *pb.Cell, *pb.CountPlacedRequest) (uint64, error) {
		entered <- struct{}{}
		<-release
		return 0, nil
	})
	type result struct {
		cell string
		err  error
	}
	results := make(chan result, 2)
	assign := func(cell string) {
		_, err := f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 0, Cell: cell}))
		results <- result{cell, err}
	}
	go assign("eu-2")
	<-entered // the first holds the range frozen while its owner counts
	go assign("eu-3")
	second := <-results
	close(release)
	first := <-results
	if first.err != nil {
		t.Fatalf("first assign: %v", first.err)
	}
	if connect.CodeOf(second.err) != connect.CodeAborted {
		t.Fatalf("second assign: %v, want aborted", second.err)
	}
	if rt := f.lookup(t, "bob@eu.example"); rt.Cell != first.cell || rt.Frozen {
		t.Fatalf("route %+v, want %s", rt, first.cell)
	}
	var ce *connect.Error
	if !errors.As(second.err, &ce) || len(ce.Details()) == 0 {
		t.Fatalf("aborted error without a typed detail: %v", second.err)
	}
}

// A freeze left by a control plane that died mid-change is thawed by the
// leader's sweep once it is older than any live change; the subject stays
// with the owner that holds its data. A recent freeze is left alone.
func TestStaleFreezesAreThawed(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	must(f.cp.SplitRange(ctx, connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: 1 << 40})))(t)
	freeze := func(start uint64, at time.Time) {
		if _, err := f.st.Update(ctx, func(tx *store.Tx) error {
			return tx.Put(f.st.RangeKey("eu", start), &pb.Range{Jurisdiction: "eu", Start: start, Cell: "eu-1", Frozen: true, FrozenUnix: at.Unix(), Epoch: tx.NewEpoch()})
		}); err != nil {
			t.Fatal(err)
		}
	}
	freeze(0, time.Now().Add(-time.Hour))
	freeze(1<<40, time.Now())
	n, err := f.svc.ThawStale(ctx, 2*time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("thawed %d, %v; want 1", n, err)
	}
	for _, r := range must(f.cp.ListRanges(ctx, connect.NewRequest(&pb.ListRangesRequest{Jurisdiction: "eu"})))(t).Msg.Ranges {
		if r.Cell != "eu-1" || r.Frozen != (r.Start == 1<<40) {
			t.Fatalf("range %+v after the sweep", r)
		}
	}
	// The thawed range takes changes again.
	must(f.cp.AssignRange(ctx, connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: 0, Cell: "eu-2"})))(t)
}
