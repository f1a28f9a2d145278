package placement

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseAddress(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // canonical form; "" means the address is refused
	}{
		// Accepted, canonicalised.
		{"plain", "bob@example.com", "bob@example.com"},
		{"fold local", "BoB@example.com", "bob@example.com"},
		{"fold domain", "bob@Example.COM", "bob@example.com"},
		{"strip tag", "Bob+news@Example.COM", "bob@example.com"},
		{"strip empty tag", "bob+@example.com", "bob@example.com"},
		{"strip tag at first plus", "bob+a+b@example.com", "bob@example.com"},
		{"dot before tag", "bob.+news@example.com", "bob@example.com"},
		{"dots kept", "bob.smith@example.com", "bob.smith@example.com"},
		{"atext specials", "o'brien_x-y=z{}~@example.com", "o'brien_x-y=z{}~@example.com"},
		{"angle brackets", "<bob@example.com>", "bob@example.com"},
		{"angle brackets folded", "<Bob+x@EXAMPLE.com>", "bob@example.com"},
		{"trailing root dot", "bob@example.com.", "bob@example.com"},
		{"quoted dot-string", `"bob"@example.com`, "bob@example.com"},
		{"quoted dot-string folded", `"Bob.Smith"@example.com`, "bob.smith@example.com"},
		{"quoted pair", `"bob\.smith"@example.com`, "bob.smith@example.com"},
		{"quoted with tag", `"bob+news"@example.com`, "bob@example.com"},
		{"idn domain", "user@bücher.example", "user@xn--bcher-kva.example"},
		{"idn domain upper", "user@BÜCHER.example", "user@xn--bcher-kva.example"},
		{"a-label domain", "user@xn--bcher-kva.example", "user@xn--bcher-kva.example"},
		{"a-label domain upper", "user@XN--BCHER-KVA.EXAMPLE", "user@xn--bcher-kva.example"},
		{"ideographic full stop", "user@example\u3002com", "user@example.com"},
		{"utf8 local", "δοκιμή@example.com", "δοκιμή@example.com"},
		{"utf8 local folded", "ΔΟΚΙΜΉ@example.com", "δοκιμή@example.com"},
		{"utf8 local and idn", "用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"},
		{"digits in domain", "a@123.example.com", "a@123.example.com"},
		{"local 64 octets", strings.Repeat("a", 64) + "@example.com", strings.Repeat("a", 64) + "@example.com"},
		{"label 63 octets", "a@" + strings.Repeat("b", 63) + ".com", "a@" + strings.Repeat("b", 63) + ".com"},
		{"total 254 octets", longAddress(254), longAddress(254)},

		// Refused.
		{"empty", "", ""},
		{"empty brackets", "<>", ""},
		{"open bracket", "<", ""},
		{"unbalanced brackets", "<bob@example.com", ""},
		{"no at", "bob.example.com", ""},
		{"empty local", "@example.com", ""},
		{"empty domain", "bob@", ""},
		{"source route", "@a.com:b@c.com", ""},
		{"source route in brackets", "<@a.com,@b.com:c@d.com>", ""},
		{"address literal", "a@[192.0.2.1]", ""},
		{"ipv6 literal", "a@[IPv6:2001:db8::1]", ""},
		{"percent hack", "a%b@c.com", ""},
		{"percent hack quoted", `"a%b"@c.com`, ""},
		{"bang path", "c.com!a@b.com", ""},
		{"double dot", "a..b@c.com", ""},
		{"leading dot", ".a@c.com", ""},
		{"trailing dot", "a.@c.com", ""},
		{"quoted space", `"a b"@example.com`, ""},
		{"quoted at", `"a@b"@example.com`, ""},
		{"quoted empty", `""@example.com`, ""},
		{"quoted unterminated", `"bob@example.com`, ""},
		{"quoted double dot", `"a..b"@example.com`, ""},
		{"quoted bad pair", "\"a\\\x01\"@example.com", ""},
		{"unquoted space", "a b@example.com", ""},
		{"two ats", "a@b@example.com", ""},
		{"local 65 octets", strings.Repeat("a", 65) + "@example.com", ""},
		{"local 65 octets before tag", strings.Repeat("a", 60) + "+" + strings.Repeat("b", 4) + "@example.com", ""},
		{"label 64 octets", "a@" + strings.Repeat("b", 64) + ".com", ""},
		{"total 255 octets", longAddress(255), ""},
		{"huge", strings.Repeat("a", 2000) + "@example.com", ""},
		{"single label", "a@localhost", ""},
		{"all-digit tld", "a@example.123", ""},
		{"all-digit domain", "a@192.0.2.1", ""},
		{"empty label", "a@example..com", ""},
		{"leading dot domain", "a@.example.com", ""},
		{"two root dots", "a@example.com..", ""},
		{"hyphen label", "a@-example.com", ""},
		{"underscore label", "a@ex_ample.com", ""},
		{"nul local", "a\x00b@example.com", ""},
		{"nul domain", "a@exa\x00mple.com", ""},
		{"tab local", "a\tb@example.com", ""},
		{"del local", "a\x7fb@example.com", ""},
		{"newline", "a@example.com\n", ""},
		{"c1 control", "a\u0085b@example.com", ""},
		{"invalid utf8 local", "a\xffb@example.com", ""},
		{"invalid utf8 domain", "a@exa\xc3mple.com", ""},
		{"empty before tag", "+tag@x.com", ""},
		{"quoted empty before tag", `"+tag"@x.com`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAddress(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("ParseAddress(%q) = %q, want error", tt.in, got)
				}
				checkAddressError(t, err)
				return
			}
			if err != nil {
				t.Fatalf("ParseAddress(%q): %v", tt.in, err)
			}
			if got.String() != tt.want {
				t.Errorf("ParseAddress(%q) = %q, want %q", tt.in, got, tt.want)
			}
			again, err := ParseAddress(got.String())
			if err != nil || again != got {
				t.Errorf("ParseAddress(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}

// longAddress returns a valid address of exactly n octets: a 64-octet local
// part and a domain of 63-octet labels padded to length.
func longAddress(n int) string {
	local := strings.Repeat("l", MaxLocalPartOctets)
	dlen := n - len(local) - 1
	var labels []string
	for dlen > 0 {
		l := min(dlen, maxLabelOctets)
		if rest := dlen - l; rest > 0 && rest < 5 {
			l -= 5 // leave room for a final label of at least four octets
		}
		labels = append(labels, strings.Repeat("d", l))
		dlen -= l + 1
	}
	return local + "@" + strings.Join(labels, ".")
}

func TestLongAddress(t *testing.T) {
	for _, n := range []int{100, 200, 254, 255} {
		if got := len(longAddress(n)); got != n {
			t.Errorf("len(longAddress(%d)) = %d", n, got)
		}
	}
}

func checkAddressError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("error %v does not wrap ErrInvalidAddress", err)
	}
	var ae *AddressError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *AddressError", err, err)
	}
	if ae.Reason == "" {
		t.Errorf("error %v has an empty Reason", err)
	}
}

func TestCanonicalDomain(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"example.com", "example.com", false},
		{"Example.COM", "example.com", false},
		{"example.com.", "example.com", false},
		{"a.b.c.example.com", "a.b.c.example.com", false},
		{"bücher.example", "xn--bcher-kva.example", false},
		{"BÜCHER.Example", "xn--bcher-kva.example", false},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", false},
		{"XN--BCHER-KVA.example", "xn--bcher-kva.example", false},
		{"例子.广告", "xn--fsqu00a.xn--4rr70v", false},
		{"münchen.de", "xn--mnchen-3ya.de", false},
		{"faß.de", "xn--fa-hia.de", false}, // IDNA2008, not transitional "fass.de"
		{"1example.com", "1example.com", false},
		{"ex-ample.com", "ex-ample.com", false},
		{strings.Repeat("a", 63) + ".com", strings.Repeat("a", 63) + ".com", false},

		{"", "", true},
		{".", "", true},
		{"com", "", true},
		{"localhost.", "", true},
		{"[192.0.2.1]", "", true},
		{"192.0.2.1", "", true},
		{"example.123", "", true},
		{"example..com", "", true},
		{".example.com", "", true},
		{"example.com..", "", true},
		{"-example.com", "", true},
		{"example-.com", "", true},
		{"ex_ample.com", "", true},
		{"ex ample.com", "", true},
		{"exa\x00mple.com", "", true},
		{"exa\x7fmple.com", "", true},
		{"xn--zz.example", "", true}, // bad punycode
		{strings.Repeat("a", 64) + ".com", "", true},
		{strings.Repeat(strings.Repeat("a", 63)+".", 4) + "com", "", true}, // 259 octets
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := CanonicalDomain(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("CanonicalDomain(%q) = %q, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("CanonicalDomain(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("CanonicalDomain(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestAddressErrorInput(t *testing.T) {
	// 81 octets of local part; octet 80 is in the middle of an "é".
	in := "<a" + strings.Repeat("é", 40) + "@example.com>"
	_, err := ParseAddress(in)
	var ae *AddressError
	if !errors.As(err, &ae) {
		t.Fatalf("ParseAddress: %v, want an *AddressError", err)
	}
	if !strings.HasSuffix(ae.Input, "…") || !strings.HasPrefix(in, strings.TrimSuffix(ae.Input, "…")) {
		t.Errorf("Input %q is not a truncated prefix of the input", ae.Input)
	}
	if !utf8.ValidString(ae.Input) {
		t.Errorf("Input %q is not valid UTF-8", ae.Input)
	}
	if len(ae.Input) > 80+len("…") {
		t.Errorf("Input is %d octets long, want it truncated", len(ae.Input))
	}
	if !strings.Contains(ae.Error(), ae.Reason) {
		t.Errorf("Error() %q does not say the reason %q", ae.Error(), ae.Reason)
	}

	// A short input is reported whole, as given.
	_, err = ParseAddress("<a..b@example.com>")
	if !errors.As(err, &ae) || ae.Input != "<a..b@example.com>" {
		t.Errorf("ParseAddress: %v, want an *AddressError with the input as given", err)
	}
}
