package store

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// Records is the decoded content of the map's keys.
type Records struct {
	Epoch   uint64
	Cells   map[string]*pb.Cell
	Alive   map[string][]*pb.Liveness // by cell
	Domains map[string]*pb.Domain
	Ranges  []*pb.Range // in key order per jurisdiction, End filled in
	Pins    map[string]*pb.Pin
}

// Decode sorts the map's keys into records. Keys it does not know (locks,
// moves) are passed over; a value that does not decode is an error.
func (s *Store) Decode(kvs []KV) (*Records, error) {
	r := &Records{
		Cells:   map[string]*pb.Cell{},
		Alive:   map[string][]*pb.Liveness{},
		Domains: map[string]*pb.Domain{},
		Pins:    map[string]*pb.Pin{},
	}
	for _, kv := range kvs {
		rest, ok := strings.CutPrefix(kv.Key, s.prefix)
		if !ok {
			continue
		}
		kind, _, _ := strings.Cut(rest, "/")
		var err error
		switch {
		case rest == "map/epoch":
			var e pb.MapEpoch
			err = proto.Unmarshal(kv.Value, &e)
			r.Epoch = e.Epoch
		case kind == "cells" && strings.HasSuffix(rest, "/info"):
			var c pb.Cell
			err = proto.Unmarshal(kv.Value, &c)
			r.Cells[c.Name] = &c
		case kind == "cells" && strings.Contains(rest, "/alive/"):
			var l pb.Liveness
			err = proto.Unmarshal(kv.Value, &l)
			cell := strings.Split(rest, "/")[1]
			r.Alive[cell] = append(r.Alive[cell], &l)
		case kind == "domains":
			var d pb.Domain
			err = proto.Unmarshal(kv.Value, &d)
			r.Domains[d.Name] = &d
		case kind == "ranges":
			var rg pb.Range
			err = proto.Unmarshal(kv.Value, &rg)
			r.Ranges = append(r.Ranges, &rg)
		case kind == "pins":
			var p pb.Pin
			err = proto.Unmarshal(kv.Value, &p)
			r.Pins[p.Key] = &p
		}
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
	}
	return r, nil
}

// Map builds the pure lookup map from the records. Records that name an
// unknown jurisdiction are errors: the control plane never writes them.
func (r *Records) Map() (*placement.Map, error) {
	cells := make([]placement.Cell, 0, len(r.Cells))
	for _, c := range r.Cells {
		j, err := placement.ParseJurisdiction(c.Jurisdiction)
		if err != nil {
			return nil, fmt.Errorf("cell %s: %w", c.Name, err)
		}
		cells = append(cells, placement.Cell{
			Name: c.Name, Jurisdiction: j, APIURL: c.ApiUrl, LMTPAddr: c.LmtpAddr,
			IMAPAddr: c.ImapAddr, SubmitAddr: c.SubmissionAddr, State: CellStateName(c.State),
		})
	}
	domains := make([]placement.Domain, 0, len(r.Domains))
	for _, d := range r.Domains {
		j, err := placement.ParseJurisdiction(d.Jurisdiction)
		if err != nil {
			return nil, fmt.Errorf("domain %s: %w", d.Name, err)
		}
		mode := placement.ModeConsumer
		if d.Mode == pb.PlacementMode_PLACEMENT_MODE_TENANT {
			mode = placement.ModeTenant
		}
		domains = append(domains, placement.Domain{Name: d.Name, Jurisdiction: j, Mode: mode, Frozen: d.Frozen})
	}
	ranges := make([]placement.Range, 0, len(r.Ranges))
	for _, rg := range r.Ranges {
		j, err := placement.ParseJurisdiction(rg.Jurisdiction)
		if err != nil {
			return nil, fmt.Errorf("range %s/%d: %w", rg.Jurisdiction, rg.Start, err)
		}
		ranges = append(ranges, placement.Range{Jurisdiction: j, Start: rg.Start, Cell: rg.Cell, Epoch: rg.Epoch, Frozen: rg.Frozen})
	}
	pins := make([]placement.Pin, 0, len(r.Pins))
	for _, p := range r.Pins {
		pins = append(pins, placement.Pin{Key: p.Key, Cell: p.Cell, Epoch: p.Epoch, Frozen: p.Frozen})
	}
	return placement.NewMap(r.Epoch, cells, domains, ranges, pins)
}

// CellStateName is the short lower-case name of a cell state.
func CellStateName(s pb.CellState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CELL_STATE_"))
}
