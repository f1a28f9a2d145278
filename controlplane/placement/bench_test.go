package placement

import (
	"fmt"
	"sync"
	"testing"
)

// benchFixture is a map of the size of a large deployment: 10,000 ranges
// over two jurisdictions of 50 cells each, 100,000 pins, and addresses to
// look up, about one in eight of them pinned.
type benchFixture struct {
	cells   []Cell
	domains []Domain
	ranges  []Range
	pins    []Pin
	m       *Map

	addrs  []string  // as received: mixed case, some +tags
	parsed []Address // the same, canonical
	keys   []string
}

const (
	benchRanges   = 10_000
	benchPins     = 100_000
	benchCells    = 50 // per jurisdiction
	benchAddrs    = 4096
	benchPinEvery = 8
)

var benchOnce = sync.OnceValue(newBenchFixture)

func newBenchFixture() *benchFixture {
	fx := &benchFixture{}
	type jur struct {
		j      Jurisdiction
		domain string
	}
	jurs := []jur{{eu, "mail.example"}, {us, "post.example"}}
	perJur := benchRanges / len(jurs)
	for _, jd := range jurs {
		fx.domains = append(fx.domains, Domain{Name: jd.domain, Jurisdiction: jd.j, Mode: ModeConsumer})
		for c := range benchCells {
			fx.cells = append(fx.cells, Cell{Name: fmt.Sprintf("%s-%d", jd.j, c), Jurisdiction: jd.j})
		}
		step := SpaceEnd / uint64(perJur)
		for i := range perJur {
			fx.ranges = append(fx.ranges, Range{
				Jurisdiction: jd.j,
				Start:        uint64(i) * step,
				Cell:         fmt.Sprintf("%s-%d", jd.j, i%benchCells),
				Epoch:        uint64(i),
			})
		}
	}
	for i := range benchPins {
		jd := jurs[i%len(jurs)]
		fx.pins = append(fx.pins, Pin{
			Key:  fmt.Sprintf("pinned%d@%s", i, jd.domain),
			Cell: fmt.Sprintf("%s-%d", jd.j, i%benchCells),
		})
	}
	for i := range benchAddrs {
		jd := jurs[i%len(jurs)]
		var a string
		switch {
		case i%benchPinEvery == 0:
			a = fmt.Sprintf("Pinned%d@%s", i*7%benchPins, jd.domain)
		case i%3 == 0:
			a = fmt.Sprintf("User.%d+list@%s", i, jd.domain)
		default:
			a = fmt.Sprintf("user%d@%s", i, jd.domain)
		}
		fx.addrs = append(fx.addrs, a)
	}
	m, err := NewMap(1, fx.cells, fx.domains, fx.ranges, fx.pins)
	if err != nil {
		panic(err)
	}
	fx.m = m
	for _, s := range fx.addrs {
		a, err := ParseAddress(s)
		if err != nil {
			panic(err)
		}
		fx.parsed = append(fx.parsed, a)
		fx.keys = append(fx.keys, a.String())
	}
	return fx
}

func BenchmarkLookup(b *testing.B) {
	fx := benchOnce()
	b.ReportAllocs()
	pinned := 0
	for i := 0; b.Loop(); i++ {
		rt, err := fx.m.Lookup(fx.addrs[i%len(fx.addrs)])
		if err != nil {
			b.Fatal(err)
		}
		if rt.Pinned {
			pinned++
		}
	}
	if pinned == 0 {
		b.Fatal("no lookup was pinned")
	}
}

func BenchmarkLookupAddress(b *testing.B) {
	fx := benchOnce()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := fx.m.LookupAddress(fx.parsed[i%len(fx.parsed)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseAddress(b *testing.B) {
	fx := benchOnce()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := ParseAddress(fx.addrs[i%len(fx.addrs)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHash56(b *testing.B) {
	fx := benchOnce()
	b.ReportAllocs()
	var sink uint64
	for i := 0; b.Loop(); i++ {
		sink ^= Hash56(fx.keys[i%len(fx.keys)])
	}
	_ = sink
}

func BenchmarkNewMap(b *testing.B) {
	fx := benchOnce()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewMap(1, fx.cells, fx.domains, fx.ranges, fx.pins); err != nil {
			b.Fatal(err)
		}
	}
}
