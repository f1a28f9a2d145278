package message

import (
	"fmt"
	"io"
	"mime"
	"strconv"
	"strings"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
)

// parseParams parses a header field value of the form
// value *(";" attribute "=" value), as Content-Type (RFC 2045 §5.1) and
// Content-Disposition (RFC 2183 §2), leniently:
//
//   - parameter values may be quoted strings or bare text up to the next ";";
//   - RFC 2231 extended parameters (name*=charset'lang'pct-encoded) and
//     continuations (name*0, name*1*, …; RFC 2231 §3, §4) are reassembled and
//     converted from any charset go-message knows;
//   - an extended parameter wins over a plain one of the same name, and the
//     first of duplicate parameters wins.
//
// The value and parameter names are lower-cased; parameter values are not
// (boundaries are case-sensitive). name and filename values that are RFC
// 2047 encoded words (not allowed by RFC 2047 §5, but common) are decoded.
func parseParams(s string) (string, map[string]string) {
	v, rest, _ := strings.Cut(s, ";")
	v = strings.ToLower(strings.TrimSpace(v))
	raw := map[string]string{}
	for {
		rest = strings.TrimLeft(rest, " \t\r\n;")
		if rest == "" {
			break
		}
		eq := strings.IndexAny(rest, "=;")
		if eq < 0 {
			break
		}
		if rest[eq] == ';' { // an attribute without a value
			rest = rest[eq+1:]
			continue
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t\r\n")
		var val string
		if strings.HasPrefix(rest, `"`) {
			val, rest = readQuoted(rest[1:])
			if i := strings.IndexByte(rest, ';'); i >= 0 {
				rest = rest[i:]
			} else {
				rest = ""
			}
		} else {
			i := strings.IndexByte(rest, ';')
			if i < 0 {
				i = len(rest)
			}
			val, rest = strings.TrimSpace(rest[:i]), rest[i:]
		}
		if key == "" {
			continue
		}
		if _, dup := raw[key]; !dup {
			raw[key] = val
		}
	}
	return v, assembleParams(raw)
}

// readQuoted reads a quoted-string's content (RFC 5322 §3.2.4) after the
// opening quote, undoing quoted-pairs; an unterminated string runs to the end.
func readQuoted(s string) (val, rest string) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '"':
			return b.String(), s[i+1:]
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), ""
}

type paramSegment struct {
	val string
	ext bool // percent-encoded (RFC 2231 §4)
}

func assembleParams(raw map[string]string) map[string]string {
	out := make(map[string]string, len(raw))
	plain := map[string]string{}
	conts := map[string]map[int]paramSegment{}
	for k, v := range raw {
		name, section, ext := splitParamKey(k)
		switch {
		case section >= 0:
			if conts[name] == nil {
				conts[name] = map[int]paramSegment{}
			}
			conts[name][section] = paramSegment{v, ext}
		case ext:
			charset, val := splitCharset(v)
			out[name] = decodeCharsetBytes(charset, percentDecode(val))
		default:
			plain[name] = v
		}
	}
	for name, segs := range conts {
		if _, done := out[name]; done {
			continue
		}
		var b []byte
		charset := ""
		for i := 0; ; i++ {
			sg, ok := segs[i]
			if !ok {
				break
			}
			if !sg.ext {
				b = append(b, sg.val...)
				continue
			}
			val := sg.val
			if i == 0 {
				charset, val = splitCharset(val)
			}
			b = append(b, percentDecode(val)...)
		}
		if _, ok := segs[0]; ok {
			out[name] = decodeCharsetBytes(charset, b)
		}
	}
	for name, v := range plain {
		if _, done := out[name]; done {
			continue
		}
		if name == "name" || name == "filename" {
			v = decodeWords(v)
		}
		out[name] = v
	}
	return out
}

// splitParamKey splits an RFC 2231 parameter name: "filename*1*" is section
// 1, percent-encoded; "filename*" is the whole value, percent-encoded.
func splitParamKey(k string) (name string, section int, ext bool) {
	if strings.HasSuffix(k, "*") {
		ext = true
		k = k[:len(k)-1]
	}
	if i := strings.LastIndexByte(k, '*'); i >= 0 {
		num := k[i+1:]
		if n, err := strconv.Atoi(num); err == nil && n >= 0 && len(num) <= 4 && (num == "0" || num[0] != '0') {
			return k[:i], n, ext
		}
	}
	return k, -1, ext
}

// splitCharset splits charset'language'value (RFC 2231 §4). Without the two
// quotes the whole string is the value.
func splitCharset(s string) (charset, val string) {
	cs, rest, ok := strings.Cut(s, "'")
	if !ok {
		return "", s
	}
	_, val, ok = strings.Cut(rest, "'")
	if !ok {
		return "", s
	}
	return cs, val
}

func percentDecode(s string) []byte {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			n, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b = append(b, byte(n))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return b
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// wordCharsetReader lets mime.WordDecoder use go-message's charset tables.
func wordCharsetReader(charset string, input io.Reader) (io.Reader, error) {
	if gomessage.CharsetReader == nil {
		return nil, fmt.Errorf("unknown charset %q", charset)
	}
	return gomessage.CharsetReader(strings.ToLower(charset), input)
}

// decodeWords decodes RFC 2047 encoded words (RFC 2047 §6), leaving the text
// as it is when they are malformed.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	wd := mime.WordDecoder{CharsetReader: wordCharsetReader}
	d, err := wd.DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}

// cleanText makes a header-derived string safe to show and to reuse in a
// header: valid UTF-8, control characters (tab excepted) turned to spaces.
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.IndexFunc(s, isControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, s)
}

func isControl(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }

// cleanFilename strips what a filename must not carry to a download: path
// components, control characters, bidirectional overrides (which disguise
// extensions), surrounding blanks; "." and ".." become "". At most 255 runes.
func cleanFilename(s string) string {
	s = strings.ToValidUTF8(s, "")
	if i := strings.LastIndexAny(s, `/\`); i >= 0 {
		s = s[i+1:]
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if s == "." || s == ".." {
		return ""
	}
	if utf8.RuneCountInString(s) > 255 {
		s = string([]rune(s)[:255])
	}
	return s
}
