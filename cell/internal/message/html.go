package message

import (
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/microcosm-cc/bluemonday"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// htmlPolicy is built once and only read afterwards (bluemonday policies are
// safe for concurrent use once built).
var htmlPolicy = sync.OnceValue(func() *bluemonday.Policy {
	p := bluemonday.UGCPolicy()
	p.AllowURLSchemes("cid") // RFC 2392: references to parts of this message
	p.AllowDataURIImages()
	p.RequireNoReferrerOnLinks(true)
	p.AddTargetBlankToFullyQualifiedLinks(true)
	return p
})

// sanitizeHTML sanitises an HTML body for display in the webmail: the UGC
// policy first, then, on its output, every img src other than cid: and
// data:image/ is removed (UGC allows http(s) and relative URLs, which would
// load on display and reveal the reader), and every link gets
// rel="nofollow noopener noreferrer" and target="_blank".
func sanitizeHTML(s string) string {
	clean := htmlPolicy().Sanitize(s)
	z := html.NewTokenizer(strings.NewReader(clean))
	var b strings.Builder
	b.Grow(len(clean) + len(clean)/8)
	for {
		switch z.Next() {
		case html.ErrorToken:
			return b.String()
		case html.StartTagToken, html.SelfClosingTagToken:
			t := z.Token()
			switch t.DataAtom {
			case atom.Img:
				t.Attr = imgAttrs(t.Attr)
			case atom.A, atom.Area:
				t.Attr = linkAttrs(t.Attr)
			}
			b.WriteString(t.String())
		default:
			b.Write(z.Raw())
		}
	}
}

func imgAttrs(attrs []html.Attribute) []html.Attribute {
	out := attrs[:0]
	for _, a := range attrs {
		if a.Key == "src" || a.Key == "srcset" {
			v := strings.ToLower(strings.TrimSpace(a.Val))
			if a.Key == "srcset" || !strings.HasPrefix(v, "cid:") && !strings.HasPrefix(v, "data:image/") {
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

func linkAttrs(attrs []html.Attribute) []html.Attribute {
	out := attrs[:0]
	href := false
	for _, a := range attrs {
		switch a.Key {
		case "rel", "target":
			continue
		case "href":
			href = true
		}
		out = append(out, a)
	}
	if href {
		out = append(out,
			html.Attribute{Key: "rel", Val: "nofollow noopener noreferrer"},
			html.Attribute{Key: "target", Val: "_blank"})
	}
	return out
}

// htmlText returns the text of (sanitised) HTML, a space for each block
// boundary, stopping once it holds maxRunes non-blank runes.
func htmlText(s string, maxRunes int) string {
	z := html.NewTokenizer(strings.NewReader(s))
	var b strings.Builder
	n := 0
	for n < maxRunes {
		switch z.Next() {
		case html.ErrorToken:
			return b.String()
		case html.TextToken:
			t := z.Text()
			b.Write(t)
			for len(t) > 0 {
				r, size := utf8.DecodeRune(t)
				if !isSpaceRune(r) && !isInvisible(r) {
					n++
				}
				t = t[size:]
			}
		case html.StartTagToken, html.EndTagToken, html.SelfClosingTagToken:
			name, _ := z.TagName()
			if !isInline(atom.Lookup(name)) {
				b.WriteByte(' ')
			}
		}
	}
	return b.String()
}

// isInline reports the phrasing elements that do not separate words.
func isInline(a atom.Atom) bool {
	switch a {
	case atom.A, atom.Abbr, atom.Acronym, atom.B, atom.Bdi, atom.Bdo, atom.Cite,
		atom.Code, atom.Del, atom.Dfn, atom.Em, atom.Font, atom.I, atom.Ins,
		atom.Kbd, atom.Mark, atom.Q, atom.S, atom.Samp, atom.Small, atom.Span,
		atom.Strike, atom.Strong, atom.Sub, atom.Sup, atom.Time, atom.Tt, atom.U,
		atom.Var, atom.Wbr:
		return true
	}
	return false
}
