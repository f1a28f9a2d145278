package placement

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Sentinel errors of lookups.
var (
	ErrUnknownDomain       = errors.New("domain not hosted")
	ErrNoRange             = errors.New("no range covers the key")
	ErrUnknownJurisdiction = errors.New("unknown jurisdiction")
	ErrUnknownCell         = errors.New("unknown cell")
)

// KeyBits is the width of the hashed part of a keyspace id.
const KeyBits = 56

// SpaceEnd is the exclusive end of one jurisdiction's hash space.
const SpaceEnd = uint64(1) << KeyBits

// Jurisdiction is the 8-bit code that prefixes a keyspace id. Codes are
// fixed forever (they are part of every keyspace id), so they are listed
// here rather than allocated at run time.
type Jurisdiction uint8

var jurisdictionNames = map[string]Jurisdiction{
	"eu": 1, "us": 2, "uk": 3, "ch": 4, "ca": 5, "au": 6, "jp": 7,
	"in": 8, "br": 9, "sg": 10, "kr": 11, "za": 12, "test": 255,
}

// ParseJurisdiction returns the code of a jurisdiction name.
func ParseJurisdiction(name string) (Jurisdiction, error) {
	if j, ok := jurisdictionNames[strings.ToLower(name)]; ok {
		return j, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownJurisdiction, name)
}

// String returns the jurisdiction's name.
func (j Jurisdiction) String() string {
	for n, c := range jurisdictionNames {
		if c == j {
			return n
		}
	}
	return fmt.Sprintf("jurisdiction(%d)", uint8(j))
}

// Mode is a domain's placement mode.
type Mode uint8

// Placement modes: see DESIGN.md §2.
const (
	ModeTenant Mode = iota + 1
	ModeConsumer
)

// String returns "tenant" or "consumer".
func (m Mode) String() string {
	switch m {
	case ModeTenant:
		return "tenant"
	case ModeConsumer:
		return "consumer"
	}
	return "unknown"
}

// Domain is a hosted domain's record.
type Domain struct {
	Name         string // canonical A-label form
	Jurisdiction Jurisdiction
	Mode         Mode
	Frozen       bool // being removed
}

// Cell is what the map says of a cell.
type Cell struct {
	Name         string
	Jurisdiction Jurisdiction
	APIURL       string
	LMTPAddr     string
	IMAPAddr     string
	SubmitAddr   string
	State        string
}

// Range gives the keys [Start, End) of one jurisdiction to Cell.
type Range struct {
	Jurisdiction Jurisdiction
	Start, End   uint64
	Cell         string
	Epoch        uint64
	Frozen       bool // changing owner
}

// Pin overrides the ranges for one placement key.
type Pin struct {
	Key    string
	Cell   string
	Epoch  uint64
	Frozen bool // changing owner
}

// PlacementKey is the key a subject is placed by: the domain for tenant
// domains, the canonical address for consumer domains.
func PlacementKey(a Address, mode Mode) string {
	if mode == ModeTenant {
		return a.Domain
	}
	return a.String()
}

// Hash56 is the first 56 bits of SHA-256 of the key: stable across
// processes, versions and machines, and uniform.
func Hash56(key string) uint64 {
	sum := sha256.Sum256([]byte(key))
	return binary.BigEndian.Uint64(sum[:8]) >> (64 - KeyBits)
}

// KeyspaceID is jurisdiction (8 bits) ‖ hash56(key).
func KeyspaceID(j Jurisdiction, key string) uint64 {
	return uint64(j)<<KeyBits | Hash56(key)
}

// Route is the answer of a lookup.
type Route struct {
	Address    Address
	Domain     Domain
	Key        string
	KeyspaceID uint64
	Cell       string
	// Epoch of the map the answer came from.
	Epoch  uint64
	Pinned bool
	// Frozen: the subject's domain, range or pin is being changed; its
	// cell answers MOVING until the change commits.
	Frozen bool
	// The owning range, when not pinned.
	Range Range
}

// Map is an immutable snapshot of the placement map. Build one with NewMap;
// a changed map is a new Map.
type Map struct {
	epoch   uint64
	cells   map[string]Cell
	domains map[string]Domain
	pins    map[string]Pin
	ranges  [256][]Range // per jurisdiction, sorted by Start, End filled in
}

// NewMap checks the records and builds a map. Ranges of one jurisdiction
// must not share a start; a jurisdiction's first range should start at 0
// (keys below the first start have no owner). Pins and ranges must name
// known cells of the right jurisdiction.
func NewMap(epoch uint64, cells []Cell, domains []Domain, ranges []Range, pins []Pin) (*Map, error) {
	m := &Map{
		epoch:   epoch,
		cells:   make(map[string]Cell, len(cells)),
		domains: make(map[string]Domain, len(domains)),
		pins:    make(map[string]Pin, len(pins)),
	}
	for _, c := range cells {
		m.cells[c.Name] = c
	}
	for _, d := range domains {
		m.domains[d.Name] = d
	}
	for _, p := range pins {
		c, ok := m.cells[p.Cell]
		if !ok {
			return nil, fmt.Errorf("pin %q: %w %q", p.Key, ErrUnknownCell, p.Cell)
		}
		// The key is a domain (tenant) or an address (consumer): a pin
		// must not move its subject out of the domain's jurisdiction.
		if d, ok := m.domains[p.Key[strings.LastIndexByte(p.Key, '@')+1:]]; ok && c.Jurisdiction != d.Jurisdiction {
			return nil, fmt.Errorf("pin %q: cell %q is of jurisdiction %s, domain %q of %s", p.Key, p.Cell, c.Jurisdiction, d.Name, d.Jurisdiction)
		}
		m.pins[p.Key] = p
	}
	for _, r := range ranges {
		c, ok := m.cells[r.Cell]
		if !ok {
			return nil, fmt.Errorf("range %s/%d: %w %q", r.Jurisdiction, r.Start, ErrUnknownCell, r.Cell)
		}
		if c.Jurisdiction != r.Jurisdiction {
			return nil, fmt.Errorf("range %s/%d: cell %q is of jurisdiction %s", r.Jurisdiction, r.Start, r.Cell, c.Jurisdiction)
		}
		if r.Start >= SpaceEnd {
			return nil, fmt.Errorf("range %s/%d: start beyond the 56-bit space", r.Jurisdiction, r.Start)
		}
		m.ranges[r.Jurisdiction] = append(m.ranges[r.Jurisdiction], r)
	}
	for j := range m.ranges {
		rs := m.ranges[j]
		sort.Slice(rs, func(a, b int) bool { return rs[a].Start < rs[b].Start })
		for i := range rs {
			if i > 0 && rs[i].Start == rs[i-1].Start {
				return nil, fmt.Errorf("two ranges start at %s/%d", Jurisdiction(j), rs[i].Start)
			}
			if i+1 < len(rs) {
				rs[i].End = rs[i+1].Start
			} else {
				rs[i].End = SpaceEnd
			}
		}
	}
	return m, nil
}

// Epoch is the map's epoch: it rises with every change.
func (m *Map) Epoch() uint64 { return m.epoch }

// Cell returns a cell's record.
func (m *Map) Cell(name string) (Cell, bool) {
	c, ok := m.cells[name]
	return c, ok
}

// Cells returns every cell, sorted by name.
func (m *Map) Cells() []Cell {
	out := make([]Cell, 0, len(m.cells))
	for _, c := range m.cells {
		out = append(out, c)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// Domain returns a domain's record by its canonical name.
func (m *Map) Domain(name string) (Domain, bool) {
	d, ok := m.domains[name]
	return d, ok
}

// Ranges returns a jurisdiction's ranges in key order. The slice is shared:
// do not modify it.
func (m *Map) Ranges(j Jurisdiction) []Range { return m.ranges[j] }

// Pin returns the pin of a placement key.
func (m *Map) Pin(key string) (Pin, bool) {
	p, ok := m.pins[key]
	return p, ok
}

// Lookup parses and canonicalises an address and finds its owner.
func (m *Map) Lookup(address string) (Route, error) {
	a, err := ParseAddress(address)
	if err != nil {
		return Route{}, err
	}
	return m.LookupAddress(a)
}

// LookupAddress finds the owner of a canonical address: pins, then ranges.
func (m *Map) LookupAddress(a Address) (Route, error) {
	d, ok := m.domains[a.Domain]
	if !ok {
		return Route{}, fmt.Errorf("%w: %s", ErrUnknownDomain, a.Domain)
	}
	key := PlacementKey(a, d.Mode)
	rt := Route{Address: a, Domain: d, Key: key, KeyspaceID: KeyspaceID(d.Jurisdiction, key), Epoch: m.epoch}
	if p, ok := m.pins[key]; ok {
		rt.Cell, rt.Pinned, rt.Frozen = p.Cell, true, d.Frozen || p.Frozen
		return rt, nil
	}
	r, ok := m.RangeOf(d.Jurisdiction, rt.KeyspaceID&(SpaceEnd-1))
	if !ok {
		return rt, fmt.Errorf("%w: %s/%d", ErrNoRange, d.Jurisdiction, rt.KeyspaceID&(SpaceEnd-1))
	}
	rt.Cell, rt.Range, rt.Frozen = r.Cell, r, d.Frozen || r.Frozen
	return rt, nil
}

// RangeOf returns the range of jurisdiction j holding the 56-bit key h.
func (m *Map) RangeOf(j Jurisdiction, h uint64) (Range, bool) {
	rs := m.ranges[j]
	// The last range whose start is ≤ h.
	i := sort.Search(len(rs), func(i int) bool { return rs[i].Start > h }) - 1
	if i < 0 {
		return Range{}, false
	}
	return rs[i], true
}
