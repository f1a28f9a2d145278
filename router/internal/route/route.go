// Package route answers, for every edge of the router, which cell owns an
// address: from the watch-fed map, or after a WRONG_CELL from a
// linearizable refresh of that one subject.
package route

import (
	"context"
	"errors"
	"fmt"

	"github.com/cellmail/cellmail/controlplane/placement"
)

// ErrNoCellEndpoint is returned when the map names a cell with no address.
var ErrNoCellEndpoint = errors.New("owning cell has no endpoint in the map")

// Maps is what the router needs of the map client.
type Maps interface {
	Map() *placement.Map
	Lookup(address string) (placement.Route, error)
	Refresh(ctx context.Context, address string) (placement.Route, error)
}

// Target is where a subject's calls go.
type Target struct {
	Route placement.Route
	Cell  placement.Cell
}

// Table resolves addresses to cells.
type Table struct{ maps Maps }

// New makes a table over the map client.
func New(maps Maps) *Table { return &Table{maps: maps} }

// Resolve answers from the current map.
func (t *Table) Resolve(address string) (Target, error) {
	rt, err := t.maps.Lookup(address)
	if err != nil {
		return Target{}, err
	}
	return t.target(rt)
}

// Refresh re-reads the subject from etcd and answers from the result.
func (t *Table) Refresh(ctx context.Context, address string) (Target, error) {
	rt, err := t.maps.Refresh(ctx, address)
	if err != nil {
		return Target{}, err
	}
	return t.target(rt)
}

func (t *Table) target(rt placement.Route) (Target, error) {
	m := t.maps.Map()
	c, ok := m.Cell(rt.Cell)
	if !ok || c.APIURL == "" {
		return Target{}, fmt.Errorf("%w: %s", ErrNoCellEndpoint, rt.Cell)
	}
	return Target{Route: rt, Cell: c}, nil
}
