package placement

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ErrInvalidAddress is wrapped by every error ParseAddress returns.
var ErrInvalidAddress = errors.New("invalid address")

// AddressError says why an address was rejected.
type AddressError struct {
	Input  string
	Reason string
}

func (e *AddressError) Error() string {
	return fmt.Sprintf("invalid address %q: %s", e.Input, e.Reason)
}

// Unwrap lets errors.Is(err, ErrInvalidAddress) match.
func (e *AddressError) Unwrap() error { return ErrInvalidAddress }

// Limits of RFC 5321 §4.5.3.1.
const (
	MaxLocalPartOctets = 64
	MaxDomainOctets    = 255
	MaxPathOctets      = 256 // "<" + address + ">"
	maxAddressOctets   = MaxPathOctets - 2
	maxLabelOctets     = 63
	maxInputOctets     = 1024
)

// Address is a canonical mailbox address: the local part with its case
// folded and its +tag removed, the domain in lower-case A-label form.
type Address struct {
	Local  string
	Domain string
}

// String returns local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// idnaProfile converts U-labels to A-labels with the registration rules of
// IDNA2008 (RFC 5891 §4) and the transitional mapping of UTS #46 turned off.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(true),
	idna.ValidateLabels(true),
	idna.VerifyDNSLength(true),
	idna.BidiRule(),
)

// ParseAddress validates s as an RFC 5321 §4.1.2 Mailbox, extended to UTF-8
// by RFC 6531 §3.3, and returns its canonical form. It accepts a bare
// address or one in angle brackets; it rejects source routes (RFC 5321
// §4.1.2 "A-d-l"), address literals ([192.0.2.1] domains are not hosted
// mailboxes), percent-hack and bang paths in the local part, and anything
// over the length limits of RFC 5321 §4.5.3.1.
func ParseAddress(s string) (Address, error) {
	input := s
	bad := func(reason string) (Address, error) {
		return Address{}, &AddressError{Input: truncate(input), Reason: reason}
	}
	if len(s) > maxInputOctets {
		return bad("too long")
	}
	if !utf8.ValidString(s) {
		return bad("not valid UTF-8")
	}
	if strings.HasPrefix(s, "<") {
		if !strings.HasSuffix(s, ">") || len(s) < 2 {
			return bad("unbalanced angle brackets")
		}
		s = s[1 : len(s)-1]
	}
	if s == "" {
		return bad("empty")
	}
	if s[0] == '@' {
		return bad("source routes are not accepted")
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return bad("missing @domain")
	}
	local, domain := s[:at], s[at+1:]
	if local == "" {
		return bad("empty local part")
	}
	// The limits hold for the address as given (a +tag or quotes do not
	// make a long local part acceptable) and, below, for its canonical form
	// (case folding can lengthen UTF-8).
	if len(local) > MaxLocalPartOctets {
		return bad(fmt.Sprintf("local part over %d octets", MaxLocalPartOctets))
	}
	if len(s) > maxAddressOctets {
		return bad(fmt.Sprintf("address over %d octets", maxAddressOctets))
	}
	canonLocal, err := canonicalLocal(local)
	if err != nil {
		return bad(err.Error())
	}
	canonDomain, err := CanonicalDomain(domain)
	if err != nil {
		return bad(err.Error())
	}
	if len(canonLocal) > MaxLocalPartOctets {
		return bad(fmt.Sprintf("local part over %d octets", MaxLocalPartOctets))
	}
	if len(canonLocal)+1+len(canonDomain) > maxAddressOctets {
		return bad(fmt.Sprintf("address over %d octets", maxAddressOctets))
	}
	return Address{Local: canonLocal, Domain: canonDomain}, nil
}

// truncate shortens s for an error message, on a rune boundary when s is
// valid UTF-8.
func truncate(s string) string {
	const n = 80
	if len(s) <= n {
		return s
	}
	i := n
	for i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// canonicalLocal checks a Local-part (RFC 5321 §4.1.2: Dot-string or
// Quoted-string, with UTF-8 allowed by RFC 6531 §3.3) and folds it: quotes
// that are not needed are removed, case is folded, a +tag is stripped.
func canonicalLocal(local string) (string, error) {
	if len(local) > 2*MaxLocalPartOctets {
		return "", errors.New("local part too long")
	}
	var unquoted string
	if local[0] == '"' {
		if len(local) < 2 || local[len(local)-1] != '"' {
			return "", errors.New("unterminated quoted local part")
		}
		var b strings.Builder
		body := local[1 : len(local)-1]
		for i := 0; i < len(body); i++ {
			c := body[i]
			switch {
			case c == '\\':
				// quoted-pairSMTP = %d92 %d32-126
				if i+1 >= len(body) || body[i+1] < 32 || body[i+1] > 126 {
					return "", errors.New("bad quoted pair in local part")
				}
				i++
				b.WriteByte(body[i])
			case c == '"':
				return "", errors.New("unescaped quote in local part")
			case c < 32 || c == 127:
				return "", errors.New("control character in local part")
			default:
				b.WriteByte(c)
			}
		}
		unquoted = b.String()
		if unquoted == "" {
			return "", errors.New("empty quoted local part")
		}
		// A quoted local part is canonical only as a dot-string: the ones
		// that need quotes (spaces, specials) are refused, as most mail
		// services do, so that no two spellings name one mailbox and no
		// routing trick hides in quotes.
		if !isDotString(unquoted) {
			return "", errors.New("quoted local part with characters outside atext is not accepted")
		}
	} else {
		if !isDotString(local) {
			return "", errors.New("local part is not a dot-atom")
		}
		unquoted = local
	}
	if strings.ContainsAny(unquoted, "%!") {
		return "", errors.New("percent-hack and bang paths are not accepted")
	}
	folded := strings.ToLower(unquoted)
	if i := strings.IndexByte(folded, '+'); i >= 0 {
		folded = folded[:i]
	}
	if folded == "" {
		return "", errors.New("empty local part before +tag")
	}
	folded = strings.TrimRight(folded, ".")
	if folded == "" || strings.HasPrefix(folded, ".") || strings.Contains(folded, "..") {
		return "", errors.New("local part is not a dot-atom")
	}
	return folded, nil
}

// isDotString reports whether s is a Dot-string (RFC 5321 §4.1.2) whose atext
// may include UTF-8 non-ASCII (RFC 6531 §3.3, UTF8-non-ascii).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r >= 0x80 {
			if r == utf8.RuneError || r < 0xA0 {
				return false // C1 controls and broken encoding
			}
			continue
		}
		if !isAtext(byte(r)) && r != '.' {
			return false
		}
	}
	return true
}

// isAtext is RFC 5322 §3.2.3 atext.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// CanonicalDomain returns the lower-case A-label form of a domain name
// (RFC 5321 §4.1.2 Domain; RFC 5890 A-labels for internationalised names),
// without a trailing dot. Address literals are rejected.
func CanonicalDomain(d string) (string, error) {
	if d == "" {
		return "", errors.New("empty domain")
	}
	if d[0] == '[' {
		return "", errors.New("address literals are not accepted")
	}
	d = strings.TrimSuffix(d, ".")
	if len(d) > MaxDomainOctets*2 {
		return "", errors.New("domain too long")
	}
	ascii, err := idnaProfile.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("domain: %v", err)
	}
	ascii = strings.ToLower(ascii)
	if len(ascii) > MaxDomainOctets {
		return "", fmt.Errorf("domain over %d octets", MaxDomainOctets)
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < 2 {
		return "", errors.New("domain needs at least two labels")
	}
	for _, l := range labels {
		if l == "" || len(l) > maxLabelOctets {
			return "", errors.New("bad domain label length")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", errors.New("domain label starts or ends with a hyphen")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return "", errors.New("domain label has a character outside letters, digits and hyphen")
			}
		}
	}
	tld := labels[len(labels)-1]
	allDigits := true
	for i := 0; i < len(tld); i++ {
		if tld[i] < '0' || tld[i] > '9' {
			allDigits = false
		}
	}
	if allDigits {
		return "", errors.New("top-level label is all digits")
	}
	return ascii, nil
}
