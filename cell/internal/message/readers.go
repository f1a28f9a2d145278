package message

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"

	gomessage "github.com/emersion/go-message"
)

// sizeGuard fails reads once more than max bytes of the message are read.
// go-message wraps read errors with %v in places, so callers check tripped
// rather than the error they get back.
type sizeGuard struct {
	r       io.Reader
	left    int64
	tripped bool
	err     error
}

func newSizeGuard(r io.Reader, max int64) *sizeGuard {
	return &sizeGuard{r: r, left: max, err: fmt.Errorf("%w: message over %d bytes", ErrLimit, max)}
}

func (g *sizeGuard) Read(p []byte) (int, error) {
	if g.tripped {
		return 0, g.err
	}
	if int64(len(p)) > g.left+1 {
		p = p[:g.left+1]
	}
	n, err := g.r.Read(p)
	if int64(n) > g.left {
		g.tripped = true
		return 0, g.err
	}
	g.left -= int64(n)
	return n, err
}

// headerGuard bounds the bytes a multipart reader may pull while it reads a
// part's header section (go-message reads it inside NextPart, unbounded).
// Armed around NextPart, it allows budget bytes: the header itself is then
// measured exactly, this only keeps memory bounded meanwhile.
type headerGuard struct {
	r       io.Reader
	budget  int64
	left    int64
	armed   bool
	tripped bool
}

func (g *headerGuard) arm()    { g.armed, g.left = true, g.budget }
func (g *headerGuard) disarm() { g.armed = false }

var errHeaderBudget = errors.New("header budget exhausted")

func (g *headerGuard) Read(p []byte) (int, error) {
	if !g.armed {
		return g.r.Read(p)
	}
	if g.left <= 0 {
		g.tripped = true
		return 0, errHeaderBudget
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= int64(n)
	return n, err
}

// decodeTransfer removes a Content-Transfer-Encoding (RFC 2045 §6). Unknown
// encodings (RFC 2045 §6.4) are passed through undecoded.
func decodeTransfer(cte string, r io.Reader) io.Reader {
	cte = strings.ToLower(strings.TrimSpace(cte))
	if i := strings.IndexAny(cte, " \t;("); i >= 0 {
		cte = cte[:i]
	}
	switch cte {
	case "base64":
		// RFC 2045 §6.8: characters outside the alphabet are ignored.
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	default:
		return r
	}
}

// base64Filter drops the bytes that are not in the base64 alphabet.
type base64Filter struct{ r io.Reader }

func (f *base64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil || n == 0 {
			return j, err
		}
	}
}

// decodeCharset converts text in charset to UTF-8 (RFC 2046 §4.1.2) using
// go-message's charset tables. Unknown charsets are passed through; callers
// replace invalid UTF-8.
func decodeCharset(charset string, r io.Reader) io.Reader {
	charset = strings.ToLower(strings.TrimSpace(charset))
	switch charset {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return r
	}
	if gomessage.CharsetReader == nil {
		return r
	}
	cr, err := gomessage.CharsetReader(charset, r)
	if err != nil || cr == nil {
		return r
	}
	return cr
}

// decodeCharsetBytes converts a short value (a parameter, an encoded word).
func decodeCharsetBytes(charset string, b []byte) string {
	r := decodeCharset(charset, bytes.NewReader(b))
	out, err := io.ReadAll(io.LimitReader(r, int64(4*len(b)+16)))
	if err != nil {
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return strings.ToValidUTF8(string(out), "\uFFFD")
}

// partReader is the stream OpenPart returns: errors other than EOF come out
// wrapping ErrLimit or ErrMalformed.
type partReader struct {
	r    io.Reader
	size *sizeGuard
}

func (p *partReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err == nil || err == io.EOF {
		return n, err
	}
	if p.size.tripped {
		return n, p.size.err
	}
	return n, fmt.Errorf("%w: reading part: %v", ErrMalformed, err)
}

// readHeaderBlock reads the message's header section (RFC 5322 §2.2, §3.5):
// field lines and their folded continuations (RFC 5322 §2.2.3), up to the
// empty line. Like common MTAs, it ends the header at the first line that is
// neither a field nor a continuation, which is then the first body line
// (returned as rest). A leading mbox "From " line is skipped. More than max
// bytes of header is ErrLimit.
func readHeaderBlock(br *bufio.Reader, max int) (hdr, rest []byte, err error) {
	var buf []byte
	for first := true; ; first = false {
		line, err := readLine(br, max-len(buf))
		if err == errLineTooLong {
			return nil, nil, fmt.Errorf("%w: header block over %d bytes", ErrLimit, max)
		}
		if err != nil && err != io.EOF {
			return nil, nil, err
		}
		if len(line) == 0 {
			return buf, nil, err // EOF: a message without body
		}
		switch {
		case bytes.Equal(line, []byte("\n")) || bytes.Equal(line, []byte("\r\n")):
			return buf, nil, nil
		case line[0] == ' ' || line[0] == '\t':
			if first {
				return buf, line, nil
			}
		case !isFieldLine(line):
			if first && bytes.HasPrefix(line, []byte("From ")) {
				continue
			}
			return buf, line, nil
		}
		buf = append(buf, line...)
		if err != nil {
			return buf, nil, nil
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads one line including its LF (or the last bytes before EOF),
// failing with errLineTooLong when it is longer than max.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil && err != io.EOF {
			return line, err
		}
		if err == io.EOF && len(line) == 0 {
			return nil, io.EOF
		}
		return line, err
	}
}

// isFieldLine reports whether line starts a header field: a field name of
// printable US-ASCII other than colon (RFC 5322 §2.2, §3.6.8), then a colon.
// Blanks before the colon are tolerated (obs-optional, RFC 5322 §4.5.8).
func isFieldLine(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}
