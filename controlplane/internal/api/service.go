// Package api serves the control-plane admin API (ControlPlaneService):
// the rules of the placement map, applied as etcd transactions through the
// store, with owner changes made safe by freezing the subject first.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/internal/store"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// mapReader is the watch-fed map the service answers lookups from.
type mapReader interface {
	Map() *placement.Map
	WaitEpoch(ctx context.Context, e uint64) error
}

// PlacedCounter asks a cell how many subjects it holds in a scope. The
// count must be taken only after the cell's map has reached req.MinEpoch.
type PlacedCounter interface {
	CountPlaced(ctx context.Context, cell *pb.Cell, req *pb.CountPlacedRequest) (uint64, error)
}

// Service implements ControlPlaneService.
type Service struct {
	st      *store.Store
	maps    mapReader
	counter PlacedCounter
	log     *slog.Logger
	// How long to wait for a cell to confirm a freeze and count.
	countTimeout time.Duration
}

var _ controlplanev1connect.ControlPlaneServiceHandler = (*Service)(nil)

// NewService makes the service.
func NewService(st *store.Store, maps mapReader, counter PlacedCounter, log *slog.Logger) *Service {
	return &Service{st: st, maps: maps, counter: counter, log: log, countTimeout: 10 * time.Second}
}

var cellNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func checkJurisdiction(name string) (string, error) {
	j, err := placement.ParseJurisdiction(name)
	if err != nil {
		return "", err
	}
	return j.String(), nil
}

// checkFilter canonicalises an optional jurisdiction filter in place.
func checkFilter(jur *string) error {
	if *jur == "" {
		return nil
	}
	j, err := checkJurisdiction(*jur)
	*jur = j
	return err
}

// settle waits (briefly) until this instance's map copy shows epoch e, so
// that a list right after a change shows the change.
func (s *Service) settle(ctx context.Context, e uint64) {
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := s.maps.WaitEpoch(wctx, e); err != nil {
		s.log.Warn("map copy did not reach the new epoch", "epoch", e, "err", err)
	}
}

func (s *Service) records(ctx context.Context) (*store.Records, error) {
	kvs, _, err := s.st.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return s.st.Decode(kvs)
}

// RegisterCell creates or updates a cell's record. The first cell of a
// jurisdiction receives the jurisdiction's whole key space as one range.
func (s *Service) RegisterCell(ctx context.Context, req *connect.Request[pb.RegisterCellRequest]) (*connect.Response[pb.RegisterCellResponse], error) {
	m := req.Msg
	if !cellNameRE.MatchString(m.Name) {
		return nil, fmt.Errorf("%w: cell name %q: lower-case letters, digits and hyphens, at most 63", errInvalid, m.Name)
	}
	jur, err := checkJurisdiction(m.Jurisdiction)
	if err != nil {
		return nil, err
	}
	if u, err := url.Parse(m.ApiUrl); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: api_url %q is not an http(s) URL", errInvalid, m.ApiUrl)
	}
	var out pb.Cell
	created := false
	epoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		var old pb.Cell
		found, err := tx.Get(s.st.CellKey(m.Name), &old)
		if err != nil {
			return err
		}
		if found && old.Jurisdiction != jur {
			return fmt.Errorf("%w: cell %s exists in jurisdiction %s", errPrecondition, m.Name, old.Jurisdiction)
		}
		state := pb.CellState_CELL_STATE_ACTIVE
		if found {
			state = old.State
		}
		out = pb.Cell{Name: m.Name, Jurisdiction: jur, State: state, ApiUrl: m.ApiUrl, LmtpAddr: m.LmtpAddr,
			ImapAddr: m.ImapAddr, SubmissionAddr: m.SubmissionAddr, Epoch: tx.NewEpoch()}
		created = !found
		if found && proto3Equal(&old, &out) {
			return nil // nothing to change
		}
		if err := tx.Put(s.st.CellKey(m.Name), &out); err != nil {
			return err
		}
		ranges, err := tx.List(s.st.RangePrefix(jur))
		if err != nil {
			return err
		}
		if len(ranges) == 0 {
			return tx.Put(s.st.RangeKey(jur, 0), &pb.Range{Jurisdiction: jur, Start: 0, Cell: m.Name, Epoch: tx.NewEpoch()})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.settle(ctx, epoch)
	if !created && out.Epoch > epoch {
		out.Epoch = epoch
	}
	return connect.NewResponse(&pb.RegisterCellResponse{Cell: &out, Created: created}), nil
}

func proto3Equal(a, b *pb.Cell) bool {
	return a.Name == b.Name && a.Jurisdiction == b.Jurisdiction && a.State == b.State && a.ApiUrl == b.ApiUrl &&
		a.LmtpAddr == b.LmtpAddr && a.ImapAddr == b.ImapAddr && a.SubmissionAddr == b.SubmissionAddr
}

func (s *Service) cellStatuses(recs *store.Records, jur string) []*pb.CellStatus {
	var out []*pb.CellStatus
	for _, c := range recs.Cells {
		if jur != "" && c.Jurisdiction != jur {
			continue
		}
		st := &pb.CellStatus{Cell: c, Alive: recs.Alive[c.Name]}
		for _, r := range recs.Ranges {
			if r.Cell == c.Name {
				st.Ranges++
			}
		}
		for _, p := range recs.Pins {
			if p.Cell == c.Name {
				st.Pins++
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Cell.Name < out[b].Cell.Name })
	return out
}

// ListCells lists cells with their live instances.
func (s *Service) ListCells(ctx context.Context, req *connect.Request[pb.ListCellsRequest]) (*connect.Response[pb.ListCellsResponse], error) {
	jur := ""
	if req.Msg.Jurisdiction != "" {
		var err error
		if jur, err = checkJurisdiction(req.Msg.Jurisdiction); err != nil {
			return nil, err
		}
	}
	recs, err := s.records(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.ListCellsResponse{Cells: s.cellStatuses(recs, jur), Epoch: recs.Epoch}), nil
}

// GetCell returns one cell.
func (s *Service) GetCell(ctx context.Context, req *connect.Request[pb.GetCellRequest]) (*connect.Response[pb.GetCellResponse], error) {
	recs, err := s.records(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range s.cellStatuses(recs, "") {
		if st.Cell.Name == req.Msg.Name {
			return connect.NewResponse(&pb.GetCellResponse{Cell: st}), nil
		}
	}
	return nil, fmt.Errorf("%w: cell %q", errNotFound, req.Msg.Name)
}

// SetCellState sets ACTIVE, DRAINING or READONLY.
func (s *Service) SetCellState(ctx context.Context, req *connect.Request[pb.SetCellStateRequest]) (*connect.Response[pb.SetCellStateResponse], error) {
	if _, ok := pb.CellState_name[int32(req.Msg.State)]; !ok || req.Msg.State == pb.CellState_CELL_STATE_UNSPECIFIED {
		return nil, fmt.Errorf("%w: state must be ACTIVE, DRAINING or READONLY", errInvalid)
	}
	var out pb.Cell
	epoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		found, err := tx.Get(s.st.CellKey(req.Msg.Name), &out)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: cell %q", errNotFound, req.Msg.Name)
		}
		if out.State == req.Msg.State {
			return nil
		}
		out.State, out.Epoch = req.Msg.State, tx.NewEpoch()
		return tx.Put(s.st.CellKey(out.Name), &out)
	})
	if err != nil {
		return nil, err
	}
	s.settle(ctx, epoch)
	return connect.NewResponse(&pb.SetCellStateResponse{Cell: &out}), nil
}

// AddDomain hosts a domain in a jurisdiction. Adding the same domain again
// with the same settings is a no-op.
func (s *Service) AddDomain(ctx context.Context, req *connect.Request[pb.AddDomainRequest]) (*connect.Response[pb.AddDomainResponse], error) {
	name, err := placement.CanonicalDomain(strings.TrimSpace(req.Msg.Name))
	if err != nil {
		return nil, fmt.Errorf("%w: domain %q: %v", errInvalid, req.Msg.Name, err)
	}
	jur, err := checkJurisdiction(req.Msg.Jurisdiction)
	if err != nil {
		return nil, err
	}
	if req.Msg.Mode != pb.PlacementMode_PLACEMENT_MODE_TENANT && req.Msg.Mode != pb.PlacementMode_PLACEMENT_MODE_CONSUMER {
		return nil, fmt.Errorf("%w: mode must be tenant or consumer", errInvalid)
	}
	var out pb.Domain
	epoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		found, err := tx.Get(s.st.DomainKey(name), &out)
		if err != nil {
			return err
		}
		if found {
			if out.Jurisdiction != jur || out.Mode != req.Msg.Mode {
				return fmt.Errorf("%w: domain %s is already hosted in %s as %s", errPrecondition, name, out.Jurisdiction, modeName(out.Mode))
			}
			return nil
		}
		ranges, err := tx.List(s.st.RangePrefix(jur))
		if err != nil {
			return err
		}
		if len(ranges) == 0 {
			return fmt.Errorf("%w: jurisdiction %s has no cell yet", errPrecondition, jur)
		}
		out = pb.Domain{Name: name, Jurisdiction: jur, Mode: req.Msg.Mode, Epoch: tx.NewEpoch()}
		return tx.Put(s.st.DomainKey(name), &out)
	})
	if err != nil {
		return nil, err
	}
	s.settle(ctx, epoch)
	return connect.NewResponse(&pb.AddDomainResponse{Domain: &out}), nil
}

func modeName(m pb.PlacementMode) string {
	return strings.ToLower(strings.TrimPrefix(m.String(), "PLACEMENT_MODE_"))
}

// ListDomains lists hosted domains.
func (s *Service) ListDomains(ctx context.Context, req *connect.Request[pb.ListDomainsRequest]) (*connect.Response[pb.ListDomainsResponse], error) {
	if err := checkFilter(&req.Msg.Jurisdiction); err != nil {
		return nil, err
	}
	recs, err := s.records(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListDomainsResponse{}
	for _, d := range recs.Domains {
		if req.Msg.Jurisdiction == "" || d.Jurisdiction == req.Msg.Jurisdiction {
			out.Domains = append(out.Domains, d)
		}
	}
	sort.Slice(out.Domains, func(a, b int) bool { return out.Domains[a].Name < out.Domains[b].Name })
	return connect.NewResponse(out), nil
}

// RemoveDomain stops hosting a domain, only when no cell holds a subject of
// it: the domain is frozen, every cell of its jurisdiction counts its
// subjects once it has seen the freeze, and the domain is deleted only when
// all say zero (else it is unfrozen and the call fails).
func (s *Service) RemoveDomain(ctx context.Context, req *connect.Request[pb.RemoveDomainRequest]) (*connect.Response[pb.RemoveDomainResponse], error) {
	name, err := placement.CanonicalDomain(strings.TrimSpace(req.Msg.Name))
	if err != nil {
		return nil, fmt.Errorf("%w: domain %q: %v", errInvalid, req.Msg.Name, err)
	}
	var d pb.Domain
	freezeEpoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		found, err := tx.Get(s.st.DomainKey(name), &d)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: domain %s", errNotFound, name)
		}
		if d.Frozen {
			return fmt.Errorf("%w: domain %s is frozen by a change in progress", store.ErrConflict, name)
		}
		d.Frozen, d.FrozenUnix, d.Epoch = true, time.Now().Unix(), tx.NewEpoch()
		return tx.Put(s.st.DomainKey(name), &d)
	})
	if err != nil {
		return nil, err
	}
	recs, err := s.records(ctx)
	if err == nil {
		for _, c := range recs.Cells {
			if c.Jurisdiction != d.Jurisdiction {
				continue
			}
			var n uint64
			if n, err = s.count(ctx, c, &pb.CountPlacedRequest{Domain: name, MinEpoch: freezeEpoch}); err != nil {
				break
			}
			if n > 0 {
				err = fmt.Errorf("%w: cell %s still holds %d subject(s) of %s", errPrecondition, c.Name, n, name)
				break
			}
		}
	}
	epoch, uerr := s.st.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		var cur pb.Domain
		found, gerr := tx.Get(s.st.DomainKey(name), &cur)
		if gerr != nil || !found || !cur.Frozen {
			return gerr
		}
		if err != nil {
			cur.Frozen, cur.FrozenUnix, cur.Epoch = false, 0, tx.NewEpoch()
			return tx.Put(s.st.DomainKey(name), &cur)
		}
		tx.Delete(s.st.DomainKey(name))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if uerr != nil {
		return nil, uerr
	}
	s.settle(ctx, epoch)
	return connect.NewResponse(&pb.RemoveDomainResponse{}), nil
}

func (s *Service) count(ctx context.Context, c *pb.Cell, req *pb.CountPlacedRequest) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, s.countTimeout)
	defer cancel()
	n, err := s.counter.CountPlaced(cctx, c, req)
	if err != nil {
		return 0, fmt.Errorf("%w: cell %s could not confirm what it holds: %v", errPrecondition, c.Name, err)
	}
	return n, nil
}

func fillEnds(ranges []*pb.Range) {
	sort.Slice(ranges, func(a, b int) bool {
		if ranges[a].Jurisdiction != ranges[b].Jurisdiction {
			return ranges[a].Jurisdiction < ranges[b].Jurisdiction
		}
		return ranges[a].Start < ranges[b].Start
	})
	for i, r := range ranges {
		r.End = placement.SpaceEnd
		if i+1 < len(ranges) && ranges[i+1].Jurisdiction == r.Jurisdiction {
			r.End = ranges[i+1].Start
		}
	}
}

// ListRanges lists ranges in key order.
func (s *Service) ListRanges(ctx context.Context, req *connect.Request[pb.ListRangesRequest]) (*connect.Response[pb.ListRangesResponse], error) {
	if err := checkFilter(&req.Msg.Jurisdiction); err != nil {
		return nil, err
	}
	recs, err := s.records(ctx)
	if err != nil {
		return nil, err
	}
	fillEnds(recs.Ranges)
	out := &pb.ListRangesResponse{Epoch: recs.Epoch}
	for _, r := range recs.Ranges {
		if (req.Msg.Jurisdiction == "" || r.Jurisdiction == req.Msg.Jurisdiction) && (req.Msg.Cell == "" || r.Cell == req.Msg.Cell) {
			out.Ranges = append(out.Ranges, r)
		}
	}
	return connect.NewResponse(out), nil
}

// rangesIn reads a jurisdiction's ranges inside a change, ends filled in.
func (s *Service) rangesIn(tx *store.Tx, jur string) ([]*pb.Range, error) {
	kvs, err := tx.List(s.st.RangePrefix(jur))
	if err != nil {
		return nil, err
	}
	recs, err := s.st.Decode(kvs)
	if err != nil {
		return nil, err
	}
	fillEnds(recs.Ranges)
	return recs.Ranges, nil
}

// SplitRange cuts the range holding `at` in two at `at`; both halves keep
// the owner, so no data moves and no freeze is needed.
func (s *Service) SplitRange(ctx context.Context, req *connect.Request[pb.SplitRangeRequest]) (*connect.Response[pb.SplitRangeResponse], error) {
	jur, err := checkJurisdiction(req.Msg.Jurisdiction)
	if err != nil {
		return nil, err
	}
	at := req.Msg.At
	if at == 0 || at >= placement.SpaceEnd {
		return nil, fmt.Errorf("%w: split point %d must lie in (0, 2^56)", errInvalid, at)
	}
	var lower, upper pb.Range
	epoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		ranges, err := s.rangesIn(tx, jur)
		if err != nil {
			return err
		}
		for _, r := range ranges {
			if r.Start == at {
				return fmt.Errorf("%w: %s/%d is already a range boundary", errPrecondition, jur, at)
			}
			if r.Start < at && at < r.End {
				if r.Frozen {
					return fmt.Errorf("%w: range %s/%d is frozen by a change in progress", store.ErrConflict, jur, r.Start)
				}
				lower = pb.Range{Jurisdiction: jur, Start: r.Start, End: at, Cell: r.Cell, Epoch: tx.NewEpoch()}
				upper = pb.Range{Jurisdiction: jur, Start: at, End: r.End, Cell: r.Cell, Epoch: tx.NewEpoch()}
				if err := tx.Put(s.st.RangeKey(jur, r.Start), stored(&lower)); err != nil {
					return err
				}
				return tx.Put(s.st.RangeKey(jur, at), stored(&upper))
			}
		}
		return fmt.Errorf("%w: no range of %s holds %d", errPrecondition, jur, at)
	})
	if err != nil {
		return nil, err
	}
	s.settle(ctx, epoch)
	return connect.NewResponse(&pb.SplitRangeResponse{Lower: &lower, Upper: &upper}), nil
}

// stored is the range as kept in etcd: the end is derived, not stored.
func stored(r *pb.Range) *pb.Range {
	return &pb.Range{Jurisdiction: r.Jurisdiction, Start: r.Start, Cell: r.Cell, Epoch: r.Epoch, Frozen: r.Frozen, FrozenUnix: r.FrozenUnix}
}

func (s *Service) targetCell(tx *store.Tx, name, jur string) (*pb.Cell, error) {
	var c pb.Cell
	found, err := tx.Get(s.st.CellKey(name), &c)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: cell %q", errNotFound, name)
	}
	if c.Jurisdiction != jur {
		return nil, fmt.Errorf("%w: cell %s is in jurisdiction %s, the subject in %s", errPrecondition, name, c.Jurisdiction, jur)
	}
	if c.State != pb.CellState_CELL_STATE_ACTIVE {
		return nil, fmt.Errorf("%w: cell %s is %s and takes no new subjects", errPrecondition, name, store.CellStateName(c.State))
	}
	return &c, nil
}

// AssignRange gives a range to another cell of its jurisdiction — only a
// range that holds no subject yet (moving users is the mover's work). The
// range is frozen, its owner counts its subjects once it has seen the
// freeze, and the assignment commits only on zero.
func (s *Service) AssignRange(ctx context.Context, req *connect.Request[pb.AssignRangeRequest]) (*connect.Response[pb.AssignRangeResponse], error) {
	jur, err := checkJurisdiction(req.Msg.Jurisdiction)
	if err != nil {
		return nil, err
	}
	key := s.st.RangeKey(jur, req.Msg.Start)
	var r *pb.Range
	var owner *pb.Cell
	var end uint64
	freezeEpoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		if _, err := s.targetCell(tx, req.Msg.Cell, jur); err != nil {
			return err
		}
		ranges, err := s.rangesIn(tx, jur)
		if err != nil {
			return err
		}
		found := false
		for _, x := range ranges {
			if x.Start == req.Msg.Start {
				r, end, found = stored(x), x.End, true
			}
		}
		if !found {
			return fmt.Errorf("%w: no range starts at %s/%d", errNotFound, jur, req.Msg.Start)
		}
		if r.Frozen {
			return fmt.Errorf("%w: range %s/%d is frozen by a change in progress", store.ErrConflict, jur, r.Start)
		}
		if r.Cell == req.Msg.Cell {
			return nil
		}
		var oc pb.Cell
		if _, err := tx.Get(s.st.CellKey(r.Cell), &oc); err != nil {
			return err
		}
		owner = &oc
		r.Frozen, r.FrozenUnix, r.Epoch = true, time.Now().Unix(), tx.NewEpoch()
		return tx.Put(key, r)
	})
	if err != nil {
		return nil, err
	}
	if owner == nil { // already owned by the target
		r.End = end
		return connect.NewResponse(&pb.AssignRangeResponse{Range: r}), nil
	}
	n, cerr := s.count(ctx, owner, &pb.CountPlacedRequest{Jurisdiction: jur, Start: r.Start, End: end, MinEpoch: freezeEpoch})
	if cerr == nil && n > 0 {
		cerr = fmt.Errorf("%w: range %s/%d holds %d subject(s) in cell %s: move them instead", errPrecondition, jur, r.Start, n, owner.Name)
	}
	epoch, err := s.st.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		var cur pb.Range
		found, err := tx.Get(key, &cur)
		if err != nil || !found || !cur.Frozen {
			return err
		}
		cur.Frozen, cur.FrozenUnix, cur.Epoch = false, 0, tx.NewEpoch()
		if cerr == nil {
			cur.Cell = req.Msg.Cell
		}
		r = &cur
		return tx.Put(key, &cur)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	s.settle(ctx, epoch)
	r.End = end
	return connect.NewResponse(&pb.AssignRangeResponse{Range: r}), nil
}

// ListPins lists pins.
func (s *Service) ListPins(ctx context.Context, _ *connect.Request[pb.ListPinsRequest]) (*connect.Response[pb.ListPinsResponse], error) {
	recs, err := s.records(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListPinsResponse{}
	for _, p := range recs.Pins {
		out.Pins = append(out.Pins, p)
	}
	sort.Slice(out.Pins, func(a, b int) bool { return out.Pins[a].Key < out.Pins[b].Key })
	return connect.NewResponse(out), nil
}

// subject resolves a pin subject: an address of a consumer domain or a
// tenant domain. It returns the placement key, its domain and the owner
// without the pin.
func (s *Service) subject(tx *store.Tx, subject string) (key string, d *pb.Domain, rangeOwner string, err error) {
	subject = strings.TrimSpace(subject)
	var domain string
	var addr placement.Address
	if strings.Contains(subject, "@") {
		if addr, err = placement.ParseAddress(subject); err != nil {
			return "", nil, "", err
		}
		domain = addr.Domain
	} else if domain, err = placement.CanonicalDomain(subject); err != nil {
		return "", nil, "", fmt.Errorf("%w: subject %q is neither an address nor a domain: %v", errInvalid, subject, err)
	}
	d = &pb.Domain{}
	found, err := tx.Get(s.st.DomainKey(domain), d)
	if err != nil {
		return "", nil, "", err
	}
	if !found {
		return "", nil, "", fmt.Errorf("%w: %s", placement.ErrUnknownDomain, domain)
	}
	tenant := d.Mode == pb.PlacementMode_PLACEMENT_MODE_TENANT
	switch {
	case addr.Domain != "" && tenant:
		return "", nil, "", fmt.Errorf("%w: %s is a tenant domain: pin the domain, not one address", errPrecondition, domain)
	case addr.Domain == "" && !tenant:
		return "", nil, "", fmt.Errorf("%w: %s is a consumer domain: pin an address", errPrecondition, domain)
	case tenant:
		key = domain
	default:
		key = addr.String()
	}
	j, _ := placement.ParseJurisdiction(d.Jurisdiction)
	h := placement.KeyspaceID(j, key) & (placement.SpaceEnd - 1)
	ranges, err := s.rangesIn(tx, d.Jurisdiction)
	if err != nil {
		return "", nil, "", err
	}
	for _, r := range ranges {
		if r.Start <= h && h < r.End {
			rangeOwner = r.Cell
		}
	}
	return key, d, rangeOwner, nil
}

// SetPin places one subject in a given cell of its jurisdiction. When that
// changes the subject's owner, the subject is frozen at its owner, which
// must hold nothing of it (moving a user with data is the mover's work).
func (s *Service) SetPin(ctx context.Context, req *connect.Request[pb.SetPinRequest]) (*connect.Response[pb.SetPinResponse], error) {
	return s.changePin(ctx, req.Msg.Subject, req.Msg.Cell)
}

// ClearPin removes a pin; the subject falls back to its range's owner,
// under the same rule as SetPin.
func (s *Service) ClearPin(ctx context.Context, req *connect.Request[pb.ClearPinRequest]) (*connect.Response[pb.ClearPinResponse], error) {
	if _, err := s.changePin(ctx, req.Msg.Subject, ""); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.ClearPinResponse{}), nil
}

// changePin sets (target != "") or clears (target == "") a pin.
func (s *Service) changePin(ctx context.Context, subject, target string) (*connect.Response[pb.SetPinResponse], error) {
	var key string
	var had bool
	var before pb.Pin
	var owner *pb.Cell // the owner that must confirm it holds nothing; nil: no owner change
	var final *pb.Pin  // nil: delete
	freezeEpoch, err := s.st.Update(ctx, func(tx *store.Tx) error {
		var d *pb.Domain
		var rangeOwner string
		var err error
		key, d, rangeOwner, err = s.subject(tx, subject)
		if err != nil {
			return err
		}
		pk := s.st.PinKey(key)
		before = pb.Pin{}
		if had, err = tx.Get(pk, &before); err != nil {
			return err
		}
		if before.Frozen {
			return fmt.Errorf("%w: %s is frozen by a change in progress", store.ErrConflict, key)
		}
		if target == "" && !had {
			return fmt.Errorf("%w: no pin for %s", errNotFound, key)
		}
		current := rangeOwner
		if had {
			current = before.Cell
		}
		newOwner := rangeOwner
		if target != "" {
			if _, err := s.targetCell(tx, target, d.Jurisdiction); err != nil {
				return err
			}
			newOwner = target
			final = &pb.Pin{Key: key, Cell: target}
		}
		if current == newOwner || current == "" {
			// No owner change: commit at once.
			owner = nil
			if final == nil {
				tx.Delete(pk)
				return nil
			}
			final.Epoch = tx.NewEpoch()
			return tx.Put(pk, final)
		}
		var oc pb.Cell
		if _, err := tx.Get(s.st.CellKey(current), &oc); err != nil {
			return err
		}
		owner = &oc
		return tx.Put(pk, &pb.Pin{Key: key, Cell: current, Frozen: true, FrozenUnix: time.Now().Unix(), Epoch: tx.NewEpoch()})
	})
	if err != nil {
		return nil, err
	}
	if owner != nil {
		n, cerr := s.count(ctx, owner, &pb.CountPlacedRequest{PlacementKey: key, MinEpoch: freezeEpoch})
		if cerr == nil && n > 0 {
			cerr = fmt.Errorf("%w: cell %s holds %d subject(s) of %s: move them instead", errPrecondition, owner.Name, n, key)
		}
		freezeEpoch, err = s.st.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error {
			pk := s.st.PinKey(key)
			var cur pb.Pin
			found, err := tx.Get(pk, &cur)
			if err != nil || !found || !cur.Frozen {
				return err
			}
			switch {
			case cerr != nil && had: // roll back
				before.Epoch = tx.NewEpoch()
				return tx.Put(pk, &before)
			case cerr != nil || final == nil:
				tx.Delete(pk)
				return nil
			default:
				final.Epoch = tx.NewEpoch()
				return tx.Put(pk, final)
			}
		})
		if cerr != nil {
			return nil, cerr
		}
		if err != nil {
			return nil, err
		}
	}
	s.settle(ctx, freezeEpoch)
	return connect.NewResponse(&pb.SetPinResponse{Pin: final}), nil
}

// Lookup answers from this instance's map copy.
func (s *Service) Lookup(ctx context.Context, req *connect.Request[pb.LookupRequest]) (*connect.Response[pb.LookupResponse], error) {
	m := s.maps.Map()
	if m == nil {
		return nil, fmt.Errorf("%w: map not loaded", errUnavailable)
	}
	rt, err := m.Lookup(req.Msg.Address)
	if err != nil {
		return nil, err
	}
	out := &pb.LookupResponse{
		Address: rt.Address.String(), PlacementKey: rt.Key, Cell: rt.Cell,
		Jurisdiction: rt.Domain.Jurisdiction.String(), KeyspaceId: rt.KeyspaceID, Epoch: rt.Epoch,
		Pinned: rt.Pinned, Frozen: rt.Frozen,
	}
	if !rt.Pinned {
		out.RangeStart, out.RangeEnd = rt.Range.Start, rt.Range.End
	}
	if c, ok := m.Cell(rt.Cell); ok {
		out.CellApiUrl = c.APIURL
	}
	return connect.NewResponse(out), nil
}

// ThawStale undoes freezes older than maxAge: they were left by a control
// plane that died between freezing a subject and committing or rolling back
// its change (a live change takes at most the count timeout). The subject
// stays with the owner it had, which holds its data. A pin frozen on its
// way in is removed only if it was new; the leader runs this periodically.
func (s *Service) ThawStale(ctx context.Context, maxAge time.Duration) (int, error) {
	recs, err := s.records(ctx)
	if err != nil {
		return 0, err
	}
	cutoff := time.Now().Add(-maxAge).Unix()
	thawed := 0
	thaw := func(key string, stale func(tx *store.Tx) (bool, error)) {
		if _, err := s.st.Update(ctx, func(tx *store.Tx) error {
			ok, err := stale(tx)
			if ok {
				thawed++
			}
			return err
		}); err != nil {
			s.log.Warn("thawing a stale freeze failed", "key", key, "err", err)
		}
	}
	for _, r := range recs.Ranges {
		if !r.Frozen || r.FrozenUnix > cutoff {
			continue
		}
		key := s.st.RangeKey(r.Jurisdiction, r.Start)
		thaw(key, func(tx *store.Tx) (bool, error) {
			var cur pb.Range
			if found, err := tx.Get(key, &cur); err != nil || !found || !cur.Frozen || cur.FrozenUnix > cutoff {
				return false, err
			}
			cur.Frozen, cur.FrozenUnix, cur.Epoch = false, 0, tx.NewEpoch()
			return true, tx.Put(key, &cur)
		})
	}
	for _, d := range recs.Domains {
		if !d.Frozen || d.FrozenUnix > cutoff {
			continue
		}
		key := s.st.DomainKey(d.Name)
		thaw(key, func(tx *store.Tx) (bool, error) {
			var cur pb.Domain
			if found, err := tx.Get(key, &cur); err != nil || !found || !cur.Frozen || cur.FrozenUnix > cutoff {
				return false, err
			}
			cur.Frozen, cur.FrozenUnix, cur.Epoch = false, 0, tx.NewEpoch()
			return true, tx.Put(key, &cur)
		})
	}
	for _, p := range recs.Pins {
		if !p.Frozen || p.FrozenUnix > cutoff {
			continue
		}
		key := s.st.PinKey(p.Key)
		thaw(key, func(tx *store.Tx) (bool, error) {
			var cur pb.Pin
			if found, err := tx.Get(key, &cur); err != nil || !found || !cur.Frozen || cur.FrozenUnix > cutoff {
				return false, err
			}
			// The frozen pin names the owner that holds the data: keep it,
			// thawed, so the subject stays where its data is.
			cur.Frozen, cur.FrozenUnix, cur.Epoch = false, 0, tx.NewEpoch()
			return true, tx.Put(key, &cur)
		})
	}
	return thawed, nil
}
