package mail

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Mailbox name rules, the same for the API and IMAP.
const (
	// MailboxDelim separates the levels of a mailbox name.
	MailboxDelim = '/'
	// MaxMailboxName bounds a mailbox name, in bytes of UTF-8.
	MaxMailboxName = 200
	// MaxMailboxDepth bounds how many levels a name has.
	MaxMailboxDepth = 16
)

// MailboxName checks a name for a new or renamed mailbox and returns it in
// Unicode Normalization Form C, the form it is stored and looked up in:
// "é" typed as one code point or as e + U+0301 names one mailbox (RFC 9051
// §5.1 asks names to follow RFC 5198 Net-Unicode, which asks for NFC).
// Refused, with an error wrapping ErrInvalid that says why: an empty name
// or level, one over MaxMailboxName bytes or MaxMailboxDepth levels, a
// name under INBOX, invalid UTF-8, C0 and C1 controls and DEL (RFC 5198
// §2), the bidirectional controls that make a name display as another
// (Unicode UAX #9: U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069),
// line and paragraph separators, the other invisible format characters
// (Unicode category Cf: U+200B zero width space, U+00AD soft hyphen, U+FEFF,
// ...; ZWNJ and ZWJ, which some scripts and emoji need, are kept), Unicode
// noncharacters, white space at either end of a level (" Work" beside
// "Work"), and IMAP's wildcards * and % (RFC 9051 §6.3.9), which a LIST
// could not name.
func MailboxName(name string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: mailbox name %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if !utf8.ValidString(name) {
		return bad("is not valid UTF-8")
	}
	name = norm.NFC.String(name)
	switch {
	case name == "":
		return bad("is empty")
	case len(name) > MaxMailboxName:
		return bad("is over %d bytes", MaxMailboxName)
	case strings.Count(name, string(MailboxDelim)) >= MaxMailboxDepth:
		return bad("is nested deeper than %d levels", MaxMailboxDepth)
	case strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//"):
		return bad("has an empty level")
	case strings.EqualFold(strings.Split(name, string(MailboxDelim))[0], "INBOX"):
		return bad("cannot be INBOX or under it")
	}
	for _, r := range name {
		switch {
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return bad("has a control character (U+%04X)", r)
		case isBidiControl(r) || r == 0x2028 || r == 0x2029:
			return bad("has a bidirectional control or separator (U+%04X)", r)
		case unicode.Is(unicode.Cf, r) && r != 0x200c && r != 0x200d:
			return bad("has an invisible format character (U+%04X)", r)
		case isNoncharacter(r):
			return bad("has a Unicode noncharacter (U+%04X)", r)
		case r == '*' || r == '%':
			return bad("has %q, which IMAP cannot name", r)
		}
	}
	for _, level := range strings.Split(name, string(MailboxDelim)) {
		if strings.TrimSpace(level) != level {
			return bad("has a level that begins or ends with white space")
		}
	}
	return name, nil
}

// NormalizeMailboxName is the form a name is looked up in (see
// MailboxName); it checks nothing.
func NormalizeMailboxName(name string) string { return norm.NFC.String(name) }

func isBidiControl(r rune) bool {
	return r == 0x061c || r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// isNoncharacter: U+FDD0–U+FDEF and the last two code points of each plane.
func isNoncharacter(r rune) bool {
	return (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe
}
