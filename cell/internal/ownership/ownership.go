// Package ownership is the cell's fence (DESIGN.md §3): it decides from the
// cell's own copy of the map whether this cell may serve a subject for a
// caller that has seen a given map epoch.
package ownership

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/controlplane/client"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// Maps is the cell's watch-fed map copy.
type Maps interface {
	Map() *placement.Map
	WaitEpoch(ctx context.Context, e uint64) error
}

// Fence checks ownership for one cell.
type Fence struct {
	cell string
	maps Maps
	// How long to wait for the cell's copy to reach the caller's epoch.
	catchUp time.Duration
	// What MOVING asks callers to wait.
	retryAfter time.Duration
}

// New makes the fence of a cell.
func New(cell string, maps Maps) *Fence {
	return &Fence{cell: cell, maps: maps, catchUp: 2 * time.Second, retryAfter: time.Second}
}

// Cell is the name of the fenced cell.
func (f *Fence) Cell() string { return f.cell }

// Check answers the route of address if this cell owns it at an epoch at
// least callerEpoch: the cell first catches up to callerEpoch (a caller that
// has seen a newer map must not be served from an older one). Errors:
// *mail.WrongCellError, *mail.MovingError, mail.ErrStaleMap,
// mail.ErrNotFound (domain not hosted), mail.ErrInvalid (bad address).
func (f *Fence) Check(ctx context.Context, address string, callerEpoch uint64) (placement.Route, error) {
	m := f.maps.Map()
	if m == nil {
		return placement.Route{}, fmt.Errorf("%w: no map yet", mail.ErrStaleMap)
	}
	if callerEpoch > m.Epoch() {
		wctx, cancel := context.WithTimeout(ctx, f.catchUp)
		err := f.maps.WaitEpoch(wctx, callerEpoch)
		cancel()
		if err != nil {
			return placement.Route{}, fmt.Errorf("%w: at %d, caller at %d", mail.ErrStaleMap, m.Epoch(), callerEpoch)
		}
		m = f.maps.Map()
	}
	rt, err := m.Lookup(address)
	switch {
	case errors.Is(err, placement.ErrInvalidAddress):
		return rt, fmt.Errorf("%w: %v", mail.ErrInvalid, err)
	case errors.Is(err, placement.ErrUnknownDomain):
		return rt, fmt.Errorf("%w: %v", mail.ErrNotFound, err)
	case errors.Is(err, client.ErrNotReady), errors.Is(err, placement.ErrNoRange):
		return rt, fmt.Errorf("%w: %v", mail.ErrUnavailable, err)
	case err != nil:
		return rt, err
	}
	if rt.Cell != f.cell {
		we := &mail.WrongCellError{Owner: rt.Cell, Epoch: m.Epoch()}
		if c, ok := m.Cell(rt.Cell); ok {
			we.OwnerAPIURL = c.APIURL
		}
		return rt, we
	}
	if rt.Frozen {
		return rt, &mail.MovingError{RetryAfter: f.retryAfter}
	}
	return rt, nil
}
