// Package oneline makes any text one line fit for a protocol reply: an SMTP
// reply or DSN diagnostic (printable US-ASCII, RFC 5321 §4.2, RFC 3464
// §2.3.6), an IMAP resp-text (RFC 9051 §9: no CR or LF), or a line of a
// notice. No caller-supplied text can break a reply into two.
package oneline

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text is s on one line: every run of white space and control characters
// (line breaks included) becomes one space, the ends are trimmed, and the
// result is cut to at most max bytes on a character boundary.
func Text(s string, max int) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return cut(b.String(), max)
}

// ASCII is Text with every character outside printable US-ASCII written
// as '?', for SMTP replies and DSN fields.
func ASCII(s string, max int) string {
	return Text(strings.Map(func(r rune) rune {
		if r > 0x7e && !unicode.IsSpace(r) && !unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s), max)
}

func cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
