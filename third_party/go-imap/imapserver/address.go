package imapserver

// (cellmail patch) An RFC 5322 §3.4 address-list parser for ENVELOPE
// (RFC 3501 §7.4.2, RFC 9051 §7.5.2): groups become a start entry (NIL
// mailbox name... in IMAP terms: NIL host, the group's name as mailbox) and
// an end entry (all NIL), an obs-route (RFC 5322 §4.4) becomes the address's
// route (the "adl" field), comments are passed over (a comment after a bare
// addr-spec is taken as its name, as "user@domain (Real Name)" means), and
// obsolete forms are read leniently. go-message's parser, used before,
// dropped groups and gave nothing for a source-routed address.

import (
	"fmt"
	"io"
	"mime"
	"strings"

	gomessage "github.com/emersion/go-message"

	"github.com/emersion/go-imap/v2"
)

// addressWordDecoder decodes encoded words in names with go-message's
// charsets (those of github.com/emersion/go-message/charset, when the
// program imports it), as go-message's own address parser did.
var addressWordDecoder = mime.WordDecoder{CharsetReader: func(cs string, r io.Reader) (io.Reader, error) {
	if gomessage.CharsetReader == nil {
		return nil, fmt.Errorf("unhandled charset %q", cs)
	}
	return gomessage.CharsetReader(cs, r)
}}

// ParseAddressList parses the value of an address header field (From, To,
// Cc...) as ENVELOPE gives it: group start and end markers included, and
// addresses without a domain left out.
func ParseAddressList(value string) []imap.Address {
	p := &addrParser{s: value}
	var out []imap.Address
	for guard := 0; guard < len(value)+1; guard++ {
		p.skipCFWS()
		for p.peek() == ',' || p.peek() == ';' {
			p.i++
			p.skipCFWS()
		}
		if p.eof() {
			break
		}
		start := p.i
		out = p.address(out, false)
		if p.i == start {
			p.i++ // a character no rule takes: pass it over
		}
	}
	return out
}

type addrParser struct {
	s string
	i int
	// comment is the text of the last comment skipped.
	comment string
	// closeFrom, closeAt: the first "]" at or after closeFrom is at
	// closeAt (len(s) when none). A domain literal where no address
	// can take it is passed over one byte at a time; without this, each
	// byte would scan on to its "]" again (quadratic in the field).
	closeFrom, closeAt int
}

// literalEnd is the index of the first "]" at or after p.i, len(p.s)
// when none.
func (p *addrParser) literalEnd() int {
	if p.closeFrom == 0 && p.closeAt == 0 || p.i < p.closeFrom || p.i > p.closeAt {
		p.closeFrom, p.closeAt = p.i, len(p.s)
		if j := strings.IndexByte(p.s[p.i:], ']'); j >= 0 {
			p.closeAt = p.i + j
		}
	}
	return p.closeAt
}

func (p *addrParser) eof() bool { return p.i >= len(p.s) }

func (p *addrParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.i]
}

// skipCFWS passes over white space and comments (nested, with quoted
// pairs), keeping the last comment's text.
func (p *addrParser) skipCFWS() {
	for !p.eof() {
		switch c := p.s[p.i]; {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			p.i++
		case c == '(':
			depth := 0
			var b strings.Builder
			for ; !p.eof(); p.i++ {
				c := p.s[p.i]
				if c == '\\' && p.i+1 < len(p.s) {
					p.i++
					b.WriteByte(p.s[p.i])
					continue
				}
				if c == '(' {
					depth++
					if depth == 1 {
						continue
					}
				}
				if c == ')' {
					depth--
					if depth == 0 {
						p.i++
						break
					}
				}
				b.WriteByte(c)
			}
			p.comment = strings.TrimSpace(b.String())
		default:
			return
		}
	}
}

// word reads an atom (dots allowed, as obs-phrase and dot-atom have them),
// a quoted string (unquoted) or a domain literal; ok is false when none
// starts here.
func (p *addrParser) word() (w string, quoted, ok bool) {
	p.skipCFWS()
	if p.eof() {
		return "", false, false
	}
	switch c := p.s[p.i]; {
	case c == '"':
		p.i++
		var b strings.Builder
		for !p.eof() && p.s[p.i] != '"' {
			if p.s[p.i] == '\\' && p.i+1 < len(p.s) {
				p.i++
			}
			if c := p.s[p.i]; c != '\r' && c != '\n' {
				b.WriteByte(c)
			}
			p.i++
		}
		p.i++ // the closing quote
		return b.String(), true, true
	case c == '[':
		end := min(p.literalEnd()+1, len(p.s))
		w, p.i = p.s[p.i:end], end
		return w, false, true
	case isAtext(c):
		j := p.i
		for j < len(p.s) && isAtext(p.s[j]) {
			j++
		}
		w, p.i = p.s[p.i:j], j
		return w, false, true
	}
	return "", false, false
}

// isAtext: RFC 5322 atext, and "." (obs-phrase, dot-atom).
func isAtext(c byte) bool {
	if c <= ' ' || c == 0x7f {
		return false
	}
	return !strings.ContainsRune(`()<>[]:;@\,"`, rune(c))
}

// phrase reads words up to a special, joined with single spaces; raw has
// them as written (quoted strings quoted), for a local part.
func (p *addrParser) phrase() (text string, raw []string) {
	var words []string
	for {
		save := p.i
		w, quoted, ok := p.word()
		if ok && !quoted && strings.HasPrefix(w, "[") {
			p.i, ok = save, false // a domain literal ends a phrase
		}
		if !ok {
			break
		}
		if quoted {
			raw = append(raw, `"`+w+`"`)
		} else {
			raw = append(raw, w)
		}
		words = append(words, w)
	}
	return strings.Join(words, " "), raw
}

func decodeName(s string) string {
	if d, err := addressWordDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

// address reads one mailbox or group (a group only when !inGroup) and
// appends its entries to out.
func (p *addrParser) address(out []imap.Address, inGroup bool) []imap.Address {
	p.comment = ""
	name, raw := p.phrase()
	p.skipCFWS()
	switch p.peek() {
	case ':':
		p.i++
		if inGroup {
			return out // a group in a group: not allowed, passed over
		}
		out = append(out, imap.Address{Mailbox: decodeName(name)})
		for {
			p.skipCFWS()
			for p.peek() == ',' {
				p.i++
				p.skipCFWS()
			}
			if p.eof() || p.peek() == ';' {
				break
			}
			start := p.i
			out = p.address(out, true)
			if p.i == start {
				p.i++
			}
		}
		if p.peek() == ';' {
			p.i++
		}
		return append(out, imap.Address{})
	case '<':
		p.i++
		a := p.angleAddr()
		a.Name = decodeName(name)
		if a.Mailbox != "" && a.Host != "" {
			out = append(out, a)
		}
		return out
	case '@':
		p.i++
		local := strings.Join(raw, "")
		host := p.domain() // leaves p.comment to a comment after it
		p.skipCFWS()
		if local != "" && host != "" {
			out = append(out, imap.Address{Name: decodeName(p.comment), Mailbox: local, Host: host})
		}
		return out
	}
	return out // a local part without a domain, or nothing: left out
}

// domain reads a dot-atom or domain literal (with CFWS between its parts,
// as obs-domain allows); p.comment is then the text of a comment after it,
// or empty.
func (p *addrParser) domain() string {
	var b strings.Builder
	for {
		p.comment = ""
		save := p.i
		w, quoted, ok := p.word()
		if !ok || quoted {
			if ok {
				p.i, p.comment = save, ""
			}
			break
		}
		b.WriteString(w)
	}
	return b.String()
}

// angleAddr reads what follows "<": [obs-route] addr-spec ">".
func (p *addrParser) angleAddr() imap.Address {
	var a imap.Address
	p.skipCFWS()
	if p.peek() == '@' {
		var route []string
		for p.peek() == '@' {
			p.i++
			route = append(route, "@"+p.domain())
			p.skipCFWS()
			for p.peek() == ',' {
				p.i++
				p.skipCFWS()
			}
		}
		if p.peek() == ':' {
			p.i++
		}
		a.Route = strings.Join(route, ",")
	}
	_, raw := p.phrase()
	a.Mailbox = strings.Join(raw, "")
	p.skipCFWS()
	if p.peek() == '@' {
		p.i++
		a.Host = p.domain()
	}
	p.skipCFWS()
	if j := strings.IndexByte(p.s[p.i:], '>'); j >= 0 {
		p.i += j + 1
	} else {
		p.i = len(p.s)
	}
	return a
}
