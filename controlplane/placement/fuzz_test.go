package placement

import (
	"errors"
	"strings"
	"testing"
)

// fuzzSeeds are valid and invalid addresses to start the fuzzers from.
var fuzzSeeds = []string{
	"bob@example.com",
	"Bob+news@Example.COM",
	"<alice@mail.example>",
	`"bob.smith"@example.com`,
	`"a b"@example.com`,
	"user@bücher.example",
	"ΔΟΚΙΜΉ@example.com",
	"İ@acme.example",
	"@a.com:b@c.com",
	"a@[192.0.2.1]",
	"a%b@c.com",
	"c.com!a@b.com",
	"a..b@c.com",
	"+tag@x.com",
	"a@example.123",
	"a\x00b@example.com",
	"a\xffb@example.com",
	"vip@mail.example",
	"x@us.example",
	"x@uk.example",
	strings.Repeat("a", 64) + "@" + strings.Repeat("b", 63) + ".com",
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("ParseAddress(%q): %v does not wrap ErrInvalidAddress", s, err)
			}
			var ae *AddressError
			if !errors.As(err, &ae) || ae.Reason == "" {
				t.Fatalf("ParseAddress(%q): %v is not an *AddressError with a Reason", s, err)
			}
			return
		}
		c := a.String()
		if len(c) > maxAddressOctets {
			t.Errorf("ParseAddress(%q) = %q: %d octets", s, c, len(c))
		}
		if len(a.Local) > MaxLocalPartOctets {
			t.Errorf("ParseAddress(%q) = %q: local part of %d octets", s, c, len(a.Local))
		}
		if a.Local == "" || a.Domain == "" {
			t.Errorf("ParseAddress(%q) = %q: empty part", s, c)
		}
		if strings.ContainsAny(c, "ABCDEFGHIJKLMNOPQRSTUVWXYZ+") {
			t.Errorf("ParseAddress(%q) = %q: upper-case ASCII or '+'", s, c)
		}
		again, err := ParseAddress(c)
		if err != nil {
			t.Fatalf("ParseAddress(%q) = %q, which does not parse: %v", s, c, err)
		}
		if again != a {
			t.Fatalf("ParseAddress(%q) = %q, which parses to %q", s, c, again)
		}
		if d, err := CanonicalDomain(a.Domain); err != nil || d != a.Domain {
			t.Fatalf("CanonicalDomain(%q) = %q, %v; want it unchanged", a.Domain, d, err)
		}
	})
}

func FuzzLookup(f *testing.F) {
	m := newTestMap(f)
	cells := map[string]bool{}
	for _, c := range m.Cells() {
		cells[c.Name] = true
	}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rt, err := m.Lookup(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidAddress) && !errors.Is(err, ErrUnknownDomain) && !errors.Is(err, ErrNoRange) {
				t.Fatalf("Lookup(%q): unexpected error %v", s, err)
			}
			return
		}
		if !cells[rt.Cell] {
			t.Fatalf("Lookup(%q): cell %q is not in the map", s, rt.Cell)
		}
		d, ok := m.Domain(rt.Address.Domain)
		if !ok || d != rt.Domain {
			t.Fatalf("Lookup(%q): domain %+v, map has %+v, %v", s, rt.Domain, d, ok)
		}
		if got := Jurisdiction(rt.KeyspaceID >> KeyBits); got != d.Jurisdiction {
			t.Fatalf("Lookup(%q): keyspace id %#x is of jurisdiction %d, domain of %d", s, rt.KeyspaceID, got, d.Jurisdiction)
		}
		if c, _ := m.Cell(rt.Cell); c.Jurisdiction != d.Jurisdiction {
			t.Fatalf("Lookup(%q): cell %q of jurisdiction %s, domain of %s", s, rt.Cell, c.Jurisdiction, d.Jurisdiction)
		}
	})
}
