package message

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// FuzzParse feeds arbitrary bytes to Parse, and to OpenPart for each part
// Parse lists: neither may panic, errors must wrap ErrLimit or ErrMalformed,
// the snippet stays within 200 runes, strings are valid UTF-8, and a part
// streamed whole has the size Parse reported.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.eml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(nestedMessage(3))
	f.Add(manyParts(3))

	lim := Limits{MaxSize: 1 << 20, MaxDepth: 10, MaxParts: 100, MaxHeaderBytes: 16 << 10}
	classified := func(err error) bool { return errors.Is(err, ErrLimit) || errors.Is(err, ErrMalformed) }
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(bytes.NewReader(data), lim)
		if err != nil {
			if !classified(err) {
				t.Fatalf("Parse error %v wraps neither ErrLimit nor ErrMalformed", err)
			}
			if p != nil {
				t.Fatal("Parse returned a result with an error")
			}
			return
		}
		if n := utf8.RuneCountInString(p.Snippet); n > 200 {
			t.Fatalf("snippet of %d runes", n)
		}
		for _, s := range []string{p.Subject, p.Text, p.HTML, p.Snippet, p.MessageID, p.InReplyTo} {
			if !utf8.ValidString(s) {
				t.Fatalf("invalid UTF-8: %q", s)
			}
		}
		for _, a := range p.Attachments {
			if !utf8.ValidString(a.Filename) || !validPartID(a.PartID) {
				t.Fatalf("attachment %+v", a)
			}
			_, r, err := OpenPart(bytes.NewReader(data), a.PartID, lim)
			if err != nil {
				t.Fatalf("OpenPart(%s) of a listed part: %v", a.PartID, err)
			}
			n, err := io.Copy(io.Discard, r)
			if err != nil {
				if !classified(err) {
					t.Fatalf("reading part %s: %v wraps neither ErrLimit nor ErrMalformed", a.PartID, err)
				}
				continue
			}
			if n != a.Size {
				t.Fatalf("part %s: streamed %d bytes, Parse said %d", a.PartID, n, a.Size)
			}
		}
	})
}
