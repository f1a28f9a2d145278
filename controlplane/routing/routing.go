// Package routing is the one routing contract of DESIGN.md §3 and §4,
// used by every edge of the router and by cells calling cells: resolve a
// subject from the watch-fed map, try its cell with the map's epoch, and on
// the cell's typed answer — WRONG_CELL{owner, epoch} or MOVING{retry_after}
// — refresh that subject and retry (at most MaxHops cells), or wait and
// retry (at most Config.MaxWait in all).
//
// The package also defines, once for both sides, how those answers and the
// epoch travel on each protocol: HTTP headers (Connect calls), an LMTP RCPT
// parameter and reply code, an IMAP ID field and response code (wire.go),
// and the session token format the router reads the subject from
// (token.go).
package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cellmail/cellmail/controlplane/placement"
)

// MaxHops is how many cells one call may visit: the one the map names,
// and after a WRONG_CELL the one a refresh (or the cell's answer) names.
const MaxHops = 2

// DefaultMaxWait bounds the time one call waits out MOVING answers: a
// subject is frozen only for the last catch-up of a move (DESIGN.md §9).
const DefaultMaxWait = 8 * time.Second

// Bounds of one wait after MOVING, whatever the cell asked.
const (
	minMovingWait = 50 * time.Millisecond
	maxMovingWait = 2 * time.Second
)

// ErrNoEndpoint is returned (wrapped) when the map names a cell without an
// endpoint for the protocol a caller speaks.
var ErrNoEndpoint = errors.New("owning cell has no endpoint for this protocol in the map")

// Maps is what routing needs of a map copy; controlplane/client.Client is
// one, for the router and for cells alike.
type Maps interface {
	Map() *placement.Map
	// Lookup answers from the current copy.
	Lookup(address string) (placement.Route, error)
	// Refresh re-reads the subject from etcd (linearizable, rate-limited)
	// and answers from the result.
	Refresh(ctx context.Context, address string) (placement.Route, error)
}

// Target is where one try of a call goes.
type Target struct {
	Route placement.Route
	Cell  placement.Cell
	// Epoch is the map epoch the call must carry (the fence's caller
	// epoch): the route's, raised to a WRONG_CELL's so that the next cell
	// answers from a map at least as new as the one that turned us away.
	Epoch uint64
	// Hop is 1 for the cell the map named, 2 after a WRONG_CELL.
	Hop int
}

// Config tunes Routes.
type Config struct {
	// MaxWait bounds the total wait on MOVING answers of one call
	// (default DefaultMaxWait); the call's context bounds it too.
	MaxWait time.Duration
	// OnWrongCell, when set, is told of each WRONG_CELL that makes Do
	// refresh the subject (the router counts them).
	OnWrongCell func(tried Target, wc *WrongCell)
	// OnMoving, when set, is told of each MOVING that Do waits out.
	OnMoving func(tried Target, m *Moving)
	Logger   *slog.Logger
}

// Routes runs calls at the owning cells of subjects. It is safe for
// concurrent use.
type Routes struct {
	maps  Maps
	cfg   Config
	sleep func(ctx context.Context, d time.Duration) error // tests replace it
}

// New makes Routes over a map copy.
func New(maps Maps, cfg Config) *Routes {
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Routes{maps: maps, cfg: cfg, sleep: sleep}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Resolve answers from the current map: the first target of a call.
func (r *Routes) Resolve(address string) (Target, error) {
	rt, err := r.maps.Lookup(address)
	if err != nil {
		return Target{}, err
	}
	return r.target(rt)
}

func (r *Routes) target(rt placement.Route) (Target, error) {
	m := r.maps.Map()
	if m == nil {
		return Target{}, fmt.Errorf("%w: %s: no map", placement.ErrUnknownCell, rt.Cell)
	}
	c, ok := m.Cell(rt.Cell)
	if !ok {
		return Target{}, fmt.Errorf("%w: %s", placement.ErrUnknownCell, rt.Cell)
	}
	return Target{Route: rt, Cell: c, Epoch: rt.Epoch, Hop: 1}, nil
}

// Do runs call at the owning cell of address, following the contract:
//
//   - the first target comes from the current map;
//   - call returns *WrongCell (use FromConnect, ParseResponseCode or
//     FromHeader to turn a cell's answer into one): Do refreshes the
//     subject (linearizable) and calls the owner it names with the larger
//     of the two epochs; if the refresh fails (rate limit, etcd down) it
//     goes to the owner the cell named, which has the newer map. At most
//     MaxHops cells: the last WRONG_CELL is returned;
//   - call returns *Moving: Do waits what the cell asked (within bounds),
//     resolves again from the copy (the watch may have brought the new
//     owner) and calls again, until Config.MaxWait has been spent waiting;
//     then the last MOVING is returned;
//   - anything else (nil included) is returned as it is.
//
// A call that cannot be repeated (a request body already streamed) returns
// its own error on its second try. A routing error Do returns is about the
// callee's subject: a server must not pass it on as its own answer (that
// would make its caller re-route the wrong subject); it translates it, to
// unavailable for example.
func (r *Routes) Do(ctx context.Context, address string, call func(ctx context.Context, tgt Target) error) error {
	tgt, err := r.Resolve(address)
	if err != nil {
		return err
	}
	var waited time.Duration
	for {
		err := call(ctx, tgt)
		var wc *WrongCell
		var mv *Moving
		switch {
		case errors.As(err, &wc):
			if tgt.Hop >= MaxHops {
				return err
			}
			if r.cfg.OnWrongCell != nil {
				r.cfg.OnWrongCell(tgt, wc)
			}
			r.cfg.Logger.Info("WRONG_CELL: refreshing subject", "address", address, "tried", tgt.Cell.Name,
				"owner", wc.Owner, "owner_epoch", wc.Epoch, "epoch", tgt.Epoch)
			next, rerr := r.refresh(ctx, address, tgt, wc)
			if rerr != nil {
				return rerr
			}
			next.Hop = tgt.Hop + 1
			tgt = next
		case errors.As(err, &mv):
			d := min(max(mv.RetryAfter, minMovingWait), maxMovingWait, r.cfg.MaxWait-waited)
			if d <= 0 {
				return err
			}
			if r.cfg.OnMoving != nil {
				r.cfg.OnMoving(tgt, mv)
			}
			if serr := r.sleep(ctx, d); serr != nil {
				return fmt.Errorf("waiting out MOVING at %s: %w", tgt.Cell.Name, serr)
			}
			waited += d
			next, rerr := r.Resolve(address)
			if rerr != nil {
				return rerr
			}
			next.Hop, next.Epoch = tgt.Hop, max(next.Epoch, tgt.Epoch)
			tgt = next
		default:
			return err
		}
	}
}

// refresh finds the next target after wc: the subject re-read from etcd,
// or when that fails for a reason other than the subject itself, the owner
// the cell named.
func (r *Routes) refresh(ctx context.Context, address string, tried Target, wc *WrongCell) (Target, error) {
	rt, err := r.maps.Refresh(ctx, address)
	if err == nil {
		next, terr := r.target(rt)
		if terr != nil {
			return Target{}, terr
		}
		next.Epoch = max(next.Epoch, wc.Epoch, tried.Epoch)
		return next, nil
	}
	if ctx.Err() != nil || errors.Is(err, placement.ErrUnknownDomain) || errors.Is(err, placement.ErrInvalidAddress) {
		return Target{}, err
	}
	m := r.maps.Map()
	c, ok := placement.Cell{}, false
	if m != nil {
		c, ok = m.Cell(wc.Owner)
	}
	if !ok {
		return Target{}, fmt.Errorf("refresh after WRONG_CELL from %s: %w", tried.Cell.Name, err)
	}
	r.cfg.Logger.Info("map refresh failed: trying the owner the cell named", "address", address, "owner", wc.Owner, "err", err)
	rt = tried.Route
	rt.Cell, rt.Epoch = wc.Owner, wc.Epoch
	return Target{Route: rt, Cell: c, Epoch: max(wc.Epoch, tried.Epoch)}, nil
}
