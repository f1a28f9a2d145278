package placement

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
)

const (
	eu Jurisdiction = 1
	us Jurisdiction = 2
	uk Jurisdiction = 3
)

// Half of a jurisdiction's space.
const half = SpaceEnd / 2

func testCells() []Cell {
	return []Cell{
		{Name: "eu-1", Jurisdiction: eu},
		{Name: "eu-2", Jurisdiction: eu},
		{Name: "eu-3", Jurisdiction: eu},
		{Name: "us-1", Jurisdiction: us},
		{Name: "uk-1", Jurisdiction: uk},
	}
}

func testDomains() []Domain {
	return []Domain{
		{Name: "acme.example", Jurisdiction: eu, Mode: ModeTenant},
		{Name: "mail.example", Jurisdiction: eu, Mode: ModeConsumer},
		{Name: "us.example", Jurisdiction: us, Mode: ModeConsumer},
		{Name: "uk.example", Jurisdiction: uk, Mode: ModeConsumer}, // no ranges
		{Name: "xn--bcher-kva.example", Jurisdiction: eu, Mode: ModeTenant},
	}
}

func testRanges() []Range {
	return []Range{
		{Jurisdiction: eu, Start: half, Cell: "eu-2", Epoch: 3},
		{Jurisdiction: eu, Start: 0, Cell: "eu-1", Epoch: 2},
		{Jurisdiction: us, Start: 0, Cell: "us-1", Epoch: 1},
	}
}

func testPins() []Pin {
	return []Pin{
		{Key: "vip@mail.example", Cell: "eu-3", Epoch: 4},
		{Key: "xn--bcher-kva.example", Cell: "eu-3", Epoch: 5},
	}
}

func newTestMap(t testing.TB) *Map {
	t.Helper()
	m, err := NewMap(7, testCells(), testDomains(), testRanges(), testPins())
	if err != nil {
		t.Fatalf("NewMap: %v", err)
	}
	return m
}

func TestNewMap(t *testing.T) {
	tests := []struct {
		name    string
		ranges  []Range
		pins    []Pin
		wantErr error // nil: any error
		ok      bool
	}{
		{name: "valid", ranges: testRanges(), pins: testPins(), ok: true},
		{name: "no ranges or pins", ok: true},
		{name: "pin of unhosted domain", pins: []Pin{{Key: "a@elsewhere.example", Cell: "us-1"}}, ok: true},
		{
			name: "duplicate start",
			ranges: append(testRanges(),
				Range{Jurisdiction: eu, Start: half, Cell: "eu-3"}),
		},
		{
			name: "duplicate start at zero",
			ranges: []Range{
				{Jurisdiction: us, Start: 0, Cell: "us-1"},
				{Jurisdiction: us, Start: 0, Cell: "us-1"},
			},
		},
		{
			name:    "range of unknown cell",
			ranges:  []Range{{Jurisdiction: eu, Start: 0, Cell: "eu-9"}},
			wantErr: ErrUnknownCell,
		},
		{
			name:   "range of cell of another jurisdiction",
			ranges: []Range{{Jurisdiction: eu, Start: 0, Cell: "us-1"}},
		},
		{
			name:   "range start beyond the space",
			ranges: []Range{{Jurisdiction: eu, Start: SpaceEnd, Cell: "eu-1"}},
		},
		{
			name:    "pin to unknown cell",
			pins:    []Pin{{Key: "bob@mail.example", Cell: "eu-9"}},
			wantErr: ErrUnknownCell,
		},
		{
			name: "consumer pin to cell of another jurisdiction",
			pins: []Pin{{Key: "bob@mail.example", Cell: "us-1"}},
		},
		{
			name: "tenant pin to cell of another jurisdiction",
			pins: []Pin{{Key: "acme.example", Cell: "us-1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMap(1, testCells(), testDomains(), tt.ranges, tt.pins)
			if tt.ok {
				if err != nil {
					t.Fatalf("NewMap: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewMap succeeded, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("NewMap: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestNewMapRanges(t *testing.T) {
	in := []Range{
		{Jurisdiction: eu, Start: 300, Cell: "eu-3"},
		{Jurisdiction: us, Start: 0, Cell: "us-1"},
		{Jurisdiction: eu, Start: 0, Cell: "eu-1"},
		{Jurisdiction: eu, Start: 100, Cell: "eu-2", End: 12345}, // End is ignored
		{Jurisdiction: us, Start: half, Cell: "us-1"},
	}
	orig := slices.Clone(in)
	m, err := NewMap(1, testCells(), testDomains(), in, nil)
	if err != nil {
		t.Fatalf("NewMap: %v", err)
	}
	if !slices.Equal(in, orig) {
		t.Errorf("NewMap changed its argument: %v, was %v", in, orig)
	}
	tests := []struct {
		j    Jurisdiction
		want []Range
	}{
		{eu, []Range{
			{Jurisdiction: eu, Start: 0, End: 100, Cell: "eu-1"},
			{Jurisdiction: eu, Start: 100, End: 300, Cell: "eu-2"},
			{Jurisdiction: eu, Start: 300, End: SpaceEnd, Cell: "eu-3"},
		}},
		{us, []Range{
			{Jurisdiction: us, Start: 0, End: half, Cell: "us-1"},
			{Jurisdiction: us, Start: half, End: SpaceEnd, Cell: "us-1"},
		}},
		{uk, nil},
	}
	for _, tt := range tests {
		t.Run(tt.j.String(), func(t *testing.T) {
			got := m.Ranges(tt.j)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Ranges(%s) = %v, want %v", tt.j, got, tt.want)
			}
			if n := len(got); n > 0 && got[n-1].End != SpaceEnd {
				t.Errorf("last End = %#x, want SpaceEnd", got[n-1].End)
			}
		})
	}
}

func TestMapAccessors(t *testing.T) {
	m := newTestMap(t)
	if got := m.Epoch(); got != 7 {
		t.Errorf("Epoch() = %d, want 7", got)
	}
	var names []string
	for _, c := range m.Cells() {
		names = append(names, c.Name)
	}
	if want := []string{"eu-1", "eu-2", "eu-3", "uk-1", "us-1"}; !slices.Equal(names, want) {
		t.Errorf("Cells() = %v, want %v", names, want)
	}
	if c, ok := m.Cell("us-1"); !ok || c.Jurisdiction != us {
		t.Errorf("Cell(us-1) = %v, %v", c, ok)
	}
	if _, ok := m.Cell("nope"); ok {
		t.Errorf("Cell(nope) found")
	}
	if d, ok := m.Domain("mail.example"); !ok || d.Mode != ModeConsumer || d.Jurisdiction != eu {
		t.Errorf("Domain(mail.example) = %v, %v", d, ok)
	}
	if p, ok := m.Pin("vip@mail.example"); !ok || p.Cell != "eu-3" {
		t.Errorf("Pin(vip@mail.example) = %v, %v", p, ok)
	}
}

func TestLookup(t *testing.T) {
	m := newTestMap(t)
	tests := []struct {
		in       string
		wantKey  string
		wantCell string // "" to compute from the ranges
		pinned   bool
		wantErr  error
	}{
		// Tenant domain: the domain is the key.
		{in: "alice@acme.example", wantKey: "acme.example"},
		{in: "Bob+x@ACME.example", wantKey: "acme.example"},
		{in: "carol@acme.example", wantKey: "acme.example"},
		// Consumer domain: the canonical address is the key.
		{in: "alice@mail.example", wantKey: "alice@mail.example"},
		{in: "<Alice+News@Mail.Example>", wantKey: "alice@mail.example"},
		{in: "bob@mail.example", wantKey: "bob@mail.example"},
		{in: "dave@us.example", wantKey: "dave@us.example", wantCell: "us-1"},
		// Pins come first.
		{in: "VIP+x@mail.example", wantKey: "vip@mail.example", wantCell: "eu-3", pinned: true},
		{in: "anyone@bücher.example", wantKey: "xn--bcher-kva.example", wantCell: "eu-3", pinned: true},
		// Errors.
		{in: "alice@unknown.example", wantErr: ErrUnknownDomain},
		{in: "alice@uk.example", wantKey: "alice@uk.example", wantErr: ErrNoRange},
		{in: "not an address", wantErr: ErrInvalidAddress},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			rt, err := m.Lookup(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Lookup(%q) = %+v, %v; want %v", tt.in, rt, err, tt.wantErr)
				}
				if tt.wantKey != "" && rt.Key != tt.wantKey {
					t.Errorf("Key = %q, want %q", rt.Key, tt.wantKey)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lookup(%q): %v", tt.in, err)
			}
			if rt.Key != tt.wantKey {
				t.Errorf("Key = %q, want %q", rt.Key, tt.wantKey)
			}
			if want := KeyspaceID(rt.Domain.Jurisdiction, tt.wantKey); rt.KeyspaceID != want {
				t.Errorf("KeyspaceID = %#x, want %#x", rt.KeyspaceID, want)
			}
			if rt.Epoch != 7 {
				t.Errorf("Epoch = %d, want 7", rt.Epoch)
			}
			if rt.Pinned != tt.pinned {
				t.Errorf("Pinned = %v, want %v", rt.Pinned, tt.pinned)
			}
			wantCell := tt.wantCell
			if !tt.pinned {
				h := rt.KeyspaceID & (SpaceEnd - 1)
				if h < rt.Range.Start || h >= rt.Range.End {
					t.Errorf("hash %#x outside its range [%#x, %#x)", h, rt.Range.Start, rt.Range.End)
				}
				if wantCell == "" {
					wantCell = "eu-1"
					if h >= half {
						wantCell = "eu-2"
					}
				}
				if rt.Range.Cell != rt.Cell {
					t.Errorf("Range.Cell = %q, Cell = %q", rt.Range.Cell, rt.Cell)
				}
			} else if rt.Range != (Range{}) {
				t.Errorf("pinned route has a Range: %+v", rt.Range)
			}
			if rt.Cell != wantCell {
				t.Errorf("Cell = %q, want %q", rt.Cell, wantCell)
			}
		})
	}
}

// TestLookupTenantShared checks that every address of a tenant domain gets
// the same key and cell, and that consumer addresses get their own.
func TestLookupTenantShared(t *testing.T) {
	m := newTestMap(t)
	first, err := m.Lookup("user0@acme.example")
	if err != nil {
		t.Fatal(err)
	}
	cells := map[string]bool{}
	for i := range 200 {
		rt, err := m.Lookup(fmt.Sprintf("User%d@acme.example", i))
		if err != nil {
			t.Fatal(err)
		}
		if rt.Key != "acme.example" || rt.Cell != first.Cell || rt.KeyspaceID != first.KeyspaceID {
			t.Fatalf("%s: key %q cell %q id %#x, want those of %s", rt.Address, rt.Key, rt.Cell, rt.KeyspaceID, first.Address)
		}
		rt, err = m.Lookup(fmt.Sprintf("user%d@mail.example", i))
		if err != nil {
			t.Fatal(err)
		}
		if rt.Key != rt.Address.String() {
			t.Fatalf("consumer key %q, want %q", rt.Key, rt.Address)
		}
		cells[rt.Cell] = true
	}
	if !cells["eu-1"] || !cells["eu-2"] {
		t.Errorf("200 consumer addresses fell in cells %v only, want both halves", cells)
	}
}

// TestLookupBoundary places a range start exactly on a key's hash.
func TestLookupBoundary(t *testing.T) {
	const addr = "alice@mail.example"
	h := Hash56(addr)
	tests := []struct {
		name     string
		start    uint64 // of the second range
		wantCell string
	}{
		{"key at start", h, "eu-2"},
		{"key at start-1", h + 1, "eu-1"},
		{"key at start+1", h - 1, "eu-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranges := []Range{
				{Jurisdiction: eu, Start: 0, Cell: "eu-1"},
				{Jurisdiction: eu, Start: tt.start, Cell: "eu-2"},
			}
			m, err := NewMap(1, testCells(), testDomains(), ranges, nil)
			if err != nil {
				t.Fatal(err)
			}
			rt, err := m.Lookup(addr)
			if err != nil {
				t.Fatal(err)
			}
			if rt.Cell != tt.wantCell {
				t.Errorf("Cell = %q, want %q (hash %#x, start %#x)", rt.Cell, tt.wantCell, h, tt.start)
			}
		})
	}
}

func TestRangeOf(t *testing.T) {
	ranges := []Range{
		{Jurisdiction: eu, Start: 100, Cell: "eu-1"},
		{Jurisdiction: eu, Start: 200, Cell: "eu-2"},
		{Jurisdiction: eu, Start: SpaceEnd - 1, Cell: "eu-3"},
	}
	m, err := NewMap(1, testCells(), testDomains(), ranges, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		h        uint64
		wantCell string // "" for no range
	}{
		{0, ""},
		{99, ""},
		{100, "eu-1"},
		{101, "eu-1"},
		{199, "eu-1"},
		{200, "eu-2"},
		{SpaceEnd - 2, "eu-2"},
		{SpaceEnd - 1, "eu-3"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.h), func(t *testing.T) {
			r, ok := m.RangeOf(eu, tt.h)
			if ok != (tt.wantCell != "") || r.Cell != tt.wantCell {
				t.Fatalf("RangeOf(eu, %#x) = %+v, %v; want cell %q", tt.h, r, ok, tt.wantCell)
			}
			if ok && (tt.h < r.Start || tt.h >= r.End) {
				t.Errorf("%#x outside [%#x, %#x)", tt.h, r.Start, r.End)
			}
		})
	}
	if _, ok := m.RangeOf(us, 0); ok {
		t.Errorf("RangeOf(us, 0) found a range in an empty jurisdiction")
	}

	// A key below the first start has no owner: ErrNoRange.
	m, err = NewMap(1, testCells(), testDomains(), []Range{{Jurisdiction: eu, Start: SpaceEnd - 1, Cell: "eu-1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup("alice@mail.example"); !errors.Is(err, ErrNoRange) {
		t.Errorf("Lookup below the first start: %v, want ErrNoRange", err)
	}
}

func TestKeyspaceID(t *testing.T) {
	for _, j := range []Jurisdiction{0, eu, us, uk, 255} {
		for _, key := range []string{"", "acme.example", "bob@mail.example"} {
			id := KeyspaceID(j, key)
			if got := Jurisdiction(id >> KeyBits); got != j {
				t.Errorf("KeyspaceID(%d, %q) >> 56 = %d", j, key, got)
			}
			if got := id & (SpaceEnd - 1); got != Hash56(key) {
				t.Errorf("KeyspaceID(%d, %q) low bits = %#x, want Hash56 %#x", j, key, got, Hash56(key))
			}
		}
	}
}

func TestHash56(t *testing.T) {
	// Golden values: the keyspace id of every stored subject depends on them.
	tests := []struct {
		key  string
		want uint64
	}{
		{"", 0xe3b0c44298fc1c}, // SHA-256("") = e3b0c44298fc1c14…
		{"bob@example.com", 0x5ff860bf119059},
		{"example.com", 0xa379a6f6eeafb9},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := Hash56(tt.key); got != tt.want {
				t.Errorf("Hash56(%q) = %#x, want %#x", tt.key, got, tt.want)
			}
		})
	}
	for i := range 1000 {
		key := fmt.Sprintf("user%d@example.com", i)
		h := Hash56(key)
		if h >= SpaceEnd {
			t.Fatalf("Hash56(%q) = %#x ≥ SpaceEnd", key, h)
		}
		sum := sha256.Sum256([]byte(key))
		if want := binary.BigEndian.Uint64(sum[:8]) >> 8; h != want {
			t.Fatalf("Hash56(%q) = %#x, want %#x", key, h, want)
		}
		if Hash56(key) != h {
			t.Fatalf("Hash56(%q) is not stable", key)
		}
	}
}

func TestParseJurisdiction(t *testing.T) {
	tests := []struct {
		name string
		want Jurisdiction
	}{
		{"eu", 1}, {"us", 2}, {"uk", 3}, {"ch", 4}, {"ca", 5}, {"au", 6}, {"jp", 7},
		{"in", 8}, {"br", 9}, {"sg", 10}, {"kr", 11}, {"za", 12}, {"test", 255},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := ParseJurisdiction(tt.name)
			if err != nil || j != tt.want {
				t.Fatalf("ParseJurisdiction(%q) = %d, %v; want %d", tt.name, j, err, tt.want)
			}
			if got := j.String(); got != tt.name {
				t.Errorf("%d.String() = %q, want %q", j, got, tt.name)
			}
			if j2, err := ParseJurisdiction(j.String()); err != nil || j2 != j {
				t.Errorf("round trip of %d: %d, %v", j, j2, err)
			}
		})
	}
	if j, err := ParseJurisdiction("EU"); err != nil || j != eu {
		t.Errorf(`ParseJurisdiction("EU") = %d, %v; want eu`, j, err)
	}
	for _, name := range []string{"", "xx", "europe"} {
		if _, err := ParseJurisdiction(name); !errors.Is(err, ErrUnknownJurisdiction) {
			t.Errorf("ParseJurisdiction(%q): %v, want ErrUnknownJurisdiction", name, err)
		}
	}
	if got := Jurisdiction(0).String(); got != "jurisdiction(0)" {
		t.Errorf("Jurisdiction(0).String() = %q", got)
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[Mode]string{ModeTenant: "tenant", ModeConsumer: "consumer", 0: "unknown"} {
		if got := m.String(); got != want {
			t.Errorf("Mode(%d).String() = %q, want %q", m, got, want)
		}
	}
}
