package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var bccField = regexp.MustCompile(`(?im)^bcc:`)

func mustParse(t *testing.T, raw []byte) *Parsed {
	t.Helper()
	p, err := Parse(bytes.NewReader(raw), DefaultLimits())
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func openPart(t *testing.T, raw []byte, id string) (Attachment, []byte) {
	t.Helper()
	a, r, err := OpenPart(bytes.NewReader(raw), id, DefaultLimits())
	if err != nil {
		t.Fatalf("OpenPart(%s): %v", id, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading part %s: %v", id, err)
	}
	return a, b
}

// checkWire checks RFC 5322 §2.1, §2.1.1 and §2.3 on a composed message:
// CRLF only, lines of at most 998 octets.
func checkWire(t *testing.T, raw []byte) {
	t.Helper()
	for i, line := range bytes.Split(raw, []byte("\r\n")) {
		if bytes.ContainsAny(line, "\r\n") {
			t.Fatalf("line %d has a bare CR or LF: %q", i+1, line)
		}
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets long", i+1, len(line))
		}
	}
}

// headerOf returns the message header section.
func headerOf(raw []byte) string {
	h, _, _ := strings.Cut(string(raw), "\r\n\r\n")
	return h
}

func TestComposeParseRoundTrip(t *testing.T) {
	big := make([]byte, 5<<20)
	rng := rand.New(rand.NewChaCha8([32]byte{1, 2, 3}))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	text := "Hello Bob,\n\nA line long enough to need quoted-printable soft line breaks, because it goes on and on past 76 characters.\nTrailing blanks   \nFrom here on, a line that mbox would mangle.\n.\nGrüße 👋\n"
	date := time.Date(2024, 3, 1, 12, 30, 0, 0, time.FixedZone("", 3600))

	type wantAtt struct {
		filename, contentType string
		content               []byte
	}
	tests := []struct {
		name        string
		draft       Draft
		wantType    string // top-level media type
		wantInRaw   []string
		wantText    string
		wantHTML    string // substring of the sanitised HTML
		wantAtts    []wantAtt
		wantSubject string
	}{
		{
			name: "text only",
			draft: Draft{
				From: Address{Name: "Alice", Email: "alice@example.com"}, To: []Address{{Email: "bob@example.org"}},
				Subject: "Plain", Text: text, Date: date,
			},
			wantType:  "text/plain",
			wantInRaw: []string{"Content-Transfer-Encoding: quoted-printable", "Subject: Plain\r\n"},
			wantText:  text,
		},
		{
			name: "text and html",
			draft: Draft{
				From: Address{Email: "alice@example.com"}, To: []Address{{Name: "Bob", Email: "bob@example.org"}},
				Cc: []Address{{Name: "Carol", Email: "carol@example.net"}}, Subject: "Both",
				Text: text, HTML: "<p>Hello <b>Bob</b></p>", Date: date,
			},
			wantType:  "multipart/alternative",
			wantInRaw: []string{"Content-Type: text/plain; charset=utf-8", "Content-Type: text/html; charset=utf-8"},
			wantText:  text,
			wantHTML:  "<p>Hello <b>Bob</b></p>",
		},
		{
			name: "html only",
			draft: Draft{
				From: Address{Email: "alice@example.com"}, To: []Address{{Email: "bob@example.org"}},
				Subject: "HTML", HTML: "<p>Only <i>HTML</i></p>", Date: date,
			},
			wantType: "text/html",
			wantHTML: "<p>Only <i>HTML</i></p>",
		},
		{
			name: "two attachments, one of 5 MiB",
			draft: Draft{
				From: Address{Email: "alice@example.com"}, To: []Address{{Email: "bob@example.org"}},
				Subject: "Files", Text: "See attached.\n", HTML: "<p>See attached.</p>", Date: date,
				Attachments: []DraftAttachment{
					{Filename: "notes.txt", ContentType: "text/plain; charset=utf-8", Content: strings.NewReader("some notes\n")},
					{Filename: "random.bin", ContentType: "application/octet-stream", Content: bytes.NewReader(big)},
				},
			},
			wantType:  "multipart/mixed",
			wantInRaw: []string{"multipart/alternative", "Content-Transfer-Encoding: base64", `filename="random.bin"`},
			wantText:  "See attached.\n",
			wantHTML:  "<p>See attached.</p>",
			wantAtts: []wantAtt{
				{"notes.txt", "text/plain; charset=utf-8", []byte("some notes\n")},
				{"random.bin", "application/octet-stream", big},
			},
		},
		{
			name: "non-ASCII subject, names and filename",
			draft: Draft{
				From:    Address{Name: "José Müller", Email: "jose@example.com"},
				To:      []Address{{Name: "Zoë, the \"boss\"", Email: "zoe@example.org"}},
				Bcc:     []Address{{Name: "Secret", Email: "secret@example.net"}},
				Subject: "Grüße aus Köln — 日本語の件名もここにあります、とても長い件名です",
				Text:    "Hallo!\n",
				Attachments: []DraftAttachment{
					{Filename: "résumé 履歴書 with a rather long name that needs RFC 2231 continuations.pdf", ContentType: "application/pdf", Content: strings.NewReader("%PDF-1.4\n")},
				},
			},
			wantType:    "multipart/mixed",
			wantInRaw:   []string{"=?utf-8?", "filename*0*=utf-8''r%C3%A9sum%C3%A9"},
			wantText:    "Hallo!\n",
			wantSubject: "Grüße aus Köln — 日本語の件名もここにあります、とても長い件名です",
			wantAtts: []wantAtt{
				{"résumé 履歴書 with a rather long name that needs RFC 2231 continuations.pdf", "application/pdf", []byte("%PDF-1.4\n")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Compose(&buf, tt.draft); err != nil {
				t.Fatalf("Compose: %v", err)
			}
			raw := buf.Bytes()
			checkWire(t, raw)
			hdr := headerOf(raw)
			// Field names are case-insensitive (RFC 5322 §1.2.2); go-message
			// writes them canonicalised, "Mime-Version", "Message-Id".
			for _, want := range []string{"mime-version: 1.0", "message-id: <", "date: ", "content-type: " + tt.wantType} {
				if !strings.Contains(strings.ToLower(hdr), want) {
					t.Errorf("header lacks %q:\n%s", want, hdr)
				}
			}
			for _, want := range tt.wantInRaw {
				if !bytes.Contains(raw, []byte(want)) {
					t.Errorf("message lacks %q", want)
				}
			}
			// A Bcc field, not the letters "bcc" (a random boundary or
			// Message-ID may hold them).
			if bccField.MatchString(hdr) || bytes.Contains(raw, []byte("secret@example.net")) {
				t.Errorf("Bcc written:\n%s", hdr)
			}

			p := mustParse(t, raw)
			wantSubject := tt.wantSubject
			if wantSubject == "" {
				wantSubject = tt.draft.Subject
			}
			if p.Subject != wantSubject {
				t.Errorf("Subject = %q, want %q", p.Subject, wantSubject)
			}
			if want := []Address{tt.draft.From}; !reflect.DeepEqual(p.From, want) {
				t.Errorf("From = %+v, want %+v", p.From, want)
			}
			if !reflect.DeepEqual(p.To, tt.draft.To) {
				t.Errorf("To = %+v, want %+v", p.To, tt.draft.To)
			}
			if !reflect.DeepEqual(p.Cc, tt.draft.Cc) {
				t.Errorf("Cc = %+v, want %+v", p.Cc, tt.draft.Cc)
			}
			if !regexp.MustCompile(`^[0-9a-f]{32}@example\.com$`).MatchString(p.MessageID) {
				t.Errorf("generated MessageID = %q", p.MessageID)
			}
			if !tt.draft.Date.IsZero() && !p.Date.Equal(tt.draft.Date) {
				t.Errorf("Date = %v, want %v", p.Date, tt.draft.Date)
			}
			if p.Date.IsZero() {
				t.Error("no Date")
			}
			if p.Text != tt.wantText {
				t.Errorf("Text = %q, want %q", p.Text, tt.wantText)
			}
			if tt.wantHTML == "" && p.HTML != "" || !strings.Contains(p.HTML, tt.wantHTML) {
				t.Errorf("HTML = %q, want it to contain %q", p.HTML, tt.wantHTML)
			}
			if len(p.Attachments) != len(tt.wantAtts) {
				t.Fatalf("got %d attachments, want %d: %+v", len(p.Attachments), len(tt.wantAtts), p.Attachments)
			}
			if p.HasAttachments != (len(tt.wantAtts) > 0) {
				t.Errorf("HasAttachments = %v", p.HasAttachments)
			}
			for i, want := range tt.wantAtts {
				a := p.Attachments[i]
				if a.Filename != want.filename || a.ContentType != want.contentType || a.Disposition != "attachment" || a.Size != int64(len(want.content)) {
					t.Errorf("attachment %d = %+v, want %s %s of %d bytes", i, a, want.filename, want.contentType, len(want.content))
				}
				oa, content := openPart(t, raw, a.PartID)
				if !bytes.Equal(content, want.content) {
					t.Errorf("attachment %d content differs: %d bytes, want %d", i, len(content), len(want.content))
				}
				if oa.Filename != a.Filename || oa.Size != -1 {
					t.Errorf("OpenPart attachment = %+v", oa)
				}
			}
		})
	}
}

func TestComposeMessageIDAndThreading(t *testing.T) {
	d := Draft{
		From: Address{Email: "a@example.com"}, To: []Address{{Email: "b@example.org"}}, Subject: "Re: x", Text: "x",
		MessageID: "<given@example.com>", InReplyTo: "parent@example.org", References: []string{"<root@example.org>", "parent@example.org"},
	}
	var buf bytes.Buffer
	if err := Compose(&buf, d); err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, buf.Bytes())
	if p.MessageID != "given@example.com" || p.InReplyTo != "parent@example.org" ||
		!reflect.DeepEqual(p.References, []string{"root@example.org", "parent@example.org"}) {
		t.Errorf("MessageID %q, InReplyTo %q, References %q", p.MessageID, p.InReplyTo, p.References)
	}
	if time.Since(p.Date) > time.Minute {
		t.Errorf("default Date = %v", p.Date)
	}
}

func TestComposeRejectsHeaderInjection(t *testing.T) {
	ok := func() Draft {
		return Draft{From: Address{Name: "Alice", Email: "alice@example.com"}, To: []Address{{Name: "Bob", Email: "bob@example.org"}}, Subject: "Hi", Text: "x"}
	}
	tests := []struct {
		name   string
		mutate func(*Draft)
	}{
		{"CRLF in subject", func(d *Draft) { d.Subject = "Hi\r\nBcc: victim@example.net" }},
		{"LF in subject", func(d *Draft) { d.Subject = "Hi\nX-Evil: 1" }},
		{"CR in subject", func(d *Draft) { d.Subject = "Hi\rX-Evil: 1" }},
		{"NUL in subject", func(d *Draft) { d.Subject = "Hi\x00" }},
		{"CRLF in From name", func(d *Draft) { d.From.Name = "Alice\r\nBcc: victim@example.net" }},
		{"LF in To name", func(d *Draft) { d.To[0].Name = "Bob\nX-Evil: 1" }},
		{"CRLF in Cc name", func(d *Draft) { d.Cc = []Address{{Name: "C\r\nX: 1", Email: "c@example.org"}} }},
		{"CRLF in address", func(d *Draft) { d.To[0].Email = "bob@example.org\r\nBcc: victim@example.net" }},
		{"angle bracket in address", func(d *Draft) { d.To[0].Email = "bob@example.org>, <victim@example.net" }},
		{"address without @", func(d *Draft) { d.To[0].Email = "bob" }},
		{"no From", func(d *Draft) { d.From = Address{} }},
		{"CRLF in filename", func(d *Draft) {
			d.Attachments = []DraftAttachment{{Filename: "a.txt\r\nContent-Type: text/html", Content: strings.NewReader("x")}}
		}},
		{"LF in filename", func(d *Draft) {
			d.Attachments = []DraftAttachment{{Filename: "a.txt\n", Content: strings.NewReader("x")}}
		}},
		{"CRLF in Message-ID", func(d *Draft) { d.MessageID = "<a@b>\r\nX-Evil: 1" }},
		{"LF in In-Reply-To", func(d *Draft) { d.InReplyTo = "a@b\nX-Evil: 1" }},
		{"CR in References", func(d *Draft) { d.References = []string{"a@b\rX: 1"} }},
		{"bad content type", func(d *Draft) {
			d.Attachments = []DraftAttachment{{Filename: "a", ContentType: "text/", Content: strings.NewReader("x")}}
		}},
		{"multipart attachment", func(d *Draft) {
			d.Attachments = []DraftAttachment{{Filename: "a", ContentType: "multipart/mixed; boundary=x", Content: strings.NewReader("x")}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ok()
			tt.mutate(&d)
			var buf bytes.Buffer
			err := Compose(&buf, d)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Compose = %v, want ErrMalformed", err)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes before failing", buf.Len())
			}
		})
	}
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFixtures(t *testing.T) {
	pdf := []byte("%PDF-1.4\n% fake pdf for tests\n%%EOF\n")
	tests := []struct {
		file  string
		check func(t *testing.T, p *Parsed, raw []byte)
	}{
		{"alternative.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Subject != "Lunch plans" {
				t.Errorf("Subject = %q", p.Subject)
			}
			checkAddrs(t, "From", p.From, []Address{{"Alice Example", "alice@example.com"}})
			checkAddrs(t, "To", p.To, []Address{{"Bob", "bob@example.org"}, {"", "carol@example.net"}})
			checkAddrs(t, "Cc", p.Cc, []Address{{"Dave, Jr.", "dave@example.com"}})
			checkAddrs(t, "ReplyTo", p.ReplyTo, []Address{{"", "replies@example.com"}})
			if want := time.Date(2024, 1, 2, 9, 0, 0, 0, time.UTC); !p.Date.Equal(want) {
				t.Errorf("Date = %v", p.Date)
			}
			if p.MessageID != "alt-1@example.com" || p.InReplyTo != "orig-0@example.org" ||
				!reflect.DeepEqual(p.References, []string{"root@example.org", "orig-0@example.org"}) {
				t.Errorf("ids: %q %q %q", p.MessageID, p.InReplyTo, p.References)
			}
			wantText := "Hi Bob,\n\nShall we meet at the café at noon? This line is soft wrapped by quoted-printable.\n\nAlice"
			if p.Text != wantText {
				t.Errorf("Text = %q", p.Text)
			}
			if !strings.Contains(p.HTML, "<p>Shall we meet at the <b>café</b> at noon?</p>") || strings.Contains(p.HTML, "color") || strings.Contains(p.HTML, "Lunch") {
				t.Errorf("HTML = %q", p.HTML)
			}
			if want := "Hi Bob, Shall we meet at the café at noon? This line is soft wrapped by quoted-printable. Alice"; p.Snippet != want {
				t.Errorf("Snippet = %q", p.Snippet)
			}
			if len(p.Attachments) != 0 || p.HasAttachments {
				t.Errorf("attachments: %+v", p.Attachments)
			}
			if len(p.Headers) != 13 || p.Headers[0] != (Header{"Return-Path", "<alice@example.com>"}) ||
				p.Headers[1].Value != "from mx.example.com (mx.example.com [192.0.2.1]) by mail.example.org with ESMTPS id 12345 for <bob@example.org>; Tue, 02 Jan 2024 10:00:01 +0100" ||
				p.Headers[8] != (Header{"Message-ID", "<alt-1@example.com>"}) {
				t.Errorf("Headers = %q", p.Headers)
			}
		}},
		{"nested.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Text != "Logo above, report attached." {
				t.Errorf("Text = %q", p.Text)
			}
			if !strings.Contains(p.HTML, `<img src="cid:logo@example.com" alt="logo">`) {
				t.Errorf("HTML = %q", p.HTML)
			}
			want := []Attachment{
				{PartID: "1.2", ContentType: "image/png", Size: 16, Disposition: "inline", ContentID: "logo@example.com"},
				{PartID: "2", Filename: "report.pdf", ContentType: "application/pdf", Size: int64(len(pdf)), Disposition: "attachment"},
			}
			if !reflect.DeepEqual(p.Attachments, want) {
				t.Errorf("Attachments = %+v", p.Attachments)
			}
			if !p.HasAttachments {
				t.Error("HasAttachments = false")
			}
			if _, b := openPart(t, raw, "2"); !bytes.Equal(b, pdf) {
				t.Errorf("part 2 = %q", b)
			}
			if _, b := openPart(t, raw, "1.2"); len(b) != 16 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
				t.Errorf("part 1.2 = %q", b)
			}
			if a, b := openPart(t, raw, "1.1.2"); a.ContentType != "text/html; charset=us-ascii" || !bytes.HasPrefix(b, []byte("<p><img")) {
				t.Errorf("part 1.1.2 = %+v %q", a, b)
			}
			if a, b := openPart(t, raw, "1"); a.ContentType != "multipart/related" || !bytes.Contains(b, []byte("--related--")) {
				t.Errorf("part 1 = %+v %q", a, b)
			}
		}},
		{"rfc2231.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Text != "Four files." {
				t.Errorf("Text = %q", p.Text)
			}
			want := []Attachment{
				{PartID: "2", Filename: "café menu.txt", ContentType: "text/plain; charset=iso-8859-1", Size: 4, Disposition: "attachment"},
				{PartID: "3", Filename: "日本-report.pdf", ContentType: "application/pdf", Size: int64(len(pdf)), Disposition: "attachment"},
				{PartID: "4", Filename: "été.pdf", ContentType: "application/octet-stream", Size: 4},
				{PartID: "5", Filename: "passwd", ContentType: "text/plain", Size: 10, Disposition: "attachment"},
			}
			if !reflect.DeepEqual(p.Attachments, want) {
				t.Errorf("Attachments =\n%+v\nwant\n%+v", p.Attachments, want)
			}
			if _, b := openPart(t, raw, "4"); !bytes.Equal(b, []byte{0, 1, 2, 3}) {
				t.Errorf("part 4 = %q", b)
			}
		}},
		{"latin1.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Subject != "Grüße aus Köln" {
				t.Errorf("Subject = %q", p.Subject)
			}
			checkAddrs(t, "From", p.From, []Address{{"Jörg", "joerg@example.de"}})
			checkAddrs(t, "To", p.To, []Address{{"André", "andre@example.fr"}})
			if want := "Grüße aus Köln,\nund schöne Grüße an André.\n"; p.Text != want {
				t.Errorf("Text = %q, want %q", p.Text, want)
			}
			if len(p.Attachments) != 0 {
				t.Errorf("Attachments = %+v", p.Attachments)
			}
			// The body of a single-part message is part 1, charset untouched.
			if a, b := openPart(t, raw, "1"); a.ContentType != "text/plain; charset=iso-8859-1" || !bytes.HasPrefix(b, []byte("Gr\xfc\xdfe")) {
				t.Errorf("part 1 = %+v %q", a, b)
			}
		}},
		{"rfc822.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Text != "See the forwarded message." || p.HTML != "" {
				t.Errorf("Text = %q, HTML = %q", p.Text, p.HTML)
			}
			if len(p.Attachments) != 1 {
				t.Fatalf("Attachments = %+v", p.Attachments)
			}
			a := p.Attachments[0]
			if a.PartID != "2" || a.ContentType != "message/rfc822" || a.Disposition != "attachment" || a.Size < 100 {
				t.Errorf("attachment = %+v", a)
			}
			if _, b := openPart(t, raw, "2"); !bytes.HasPrefix(b, []byte("From: Original Sender")) || int64(len(b)) != a.Size {
				t.Errorf("part 2 = %q", b)
			}
			if _, _, err := OpenPart(bytes.NewReader(raw), "2.1", DefaultLimits()); !errors.Is(err, ErrNoSuchPart) {
				t.Errorf("OpenPart(2.1) = %v, want ErrNoSuchPart", err)
			}
		}},
		{"html_only.eml", func(t *testing.T, p *Parsed, raw []byte) {
			if p.Text != "" {
				t.Errorf("Text = %q", p.Text)
			}
			if want := "Hello there, Big sale today! bad link good link"; p.Snippet != want {
				t.Errorf("Snippet = %q, want %q", p.Snippet, want)
			}
			checkSanitised(t, p.HTML)
		}},
	}
	for _, tt := range tests {
		for _, crlf := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/crlf=%v", tt.file, crlf), func(t *testing.T) {
				raw := readFixture(t, tt.file)
				if crlf {
					raw = bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
				}
				p := mustParse(t, raw)
				tt.check(t, p, raw)
			})
		}
	}
}

func checkAddrs(t *testing.T, field string, got, want []Address) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %+v, want %+v", field, got, want)
	}
}

// checkSanitised checks the HTML of testdata/html_only.eml.
func checkSanitised(t *testing.T, html string) {
	t.Helper()
	for _, bad := range []string{"<script", "alert", "onload", "onclick", "steal", "javascript:", "tracker.example.net", "/api/logout", "<iframe", "<form", "<input", "<style"} {
		if strings.Contains(html, bad) {
			t.Errorf("sanitised HTML contains %q:\n%s", bad, html)
		}
	}
	for _, good := range []string{`<img src="cid:part1@example.com" alt="inline">`, `<a href="https://example.com/offer" rel="nofollow noopener noreferrer" target="_blank">good link</a>`} {
		if !strings.Contains(html, good) {
			t.Errorf("sanitised HTML lacks %q:\n%s", good, html)
		}
	}
}

func TestSanitizeHTML(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      []string
		forbidden []string
	}{
		{"script", `<p>hi</p><script>alert(1)</script>`, []string{"<p>hi</p>"}, []string{"script", "alert"}},
		{"event handler", `<p onclick="alert(1)" onmouseover="x()">hi</p>`, []string{"<p>hi</p>"}, []string{"onclick", "onmouseover", "alert"}},
		{"javascript link", `<a href="javascript:alert(1)">x</a><a href="JaVaScRiPt:alert(2)">y</a>`, []string{"x", "y"}, []string{"javascript", "JaVaScRiPt", "href"}},
		{"remote image", `<img src="https://tracker.example/p.gif" alt="a"><img src="http://t.example/q.gif">`, []string{`<img alt="a">`}, []string{"tracker", "t.example"}},
		{"protocol-relative and relative images", `<img src="//t.example/p.gif"><img src="/api/x">`, []string{"<img><img>"}, []string{"t.example", "/api/x"}},
		{"cid image kept", `<img src="cid:img1@example.com" width="10">`, []string{`<img src="cid:img1@example.com" width="10">`}, nil},
		{"data image kept", `<img src="data:image/png;base64,iVBORw0KGgo=">`, []string{`src="data:image/png;base64,iVBORw0KGgo="`}, nil},
		{"links open safely", `<a href="https://example.com/" rel="opener" target="_self">x</a><a href="mailto:a@example.com">m</a>`,
			[]string{`<a href="https://example.com/" rel="nofollow noopener noreferrer" target="_blank">x</a>`, `<a href="mailto:a@example.com" rel="nofollow noopener noreferrer" target="_blank">m</a>`},
			[]string{"opener\"", "_self"}},
		{"style and iframe", `<style>*{}</style><iframe src="https://x.example"></iframe><div style="background:url(https://x.example/a)">d</div>`, []string{"<div>d</div>"}, []string{"style", "iframe", "x.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := sanitizeHTML(tt.in)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("sanitizeHTML(%q) = %q, lacks %q", tt.in, got, w)
				}
			}
			for _, f := range tt.forbidden {
				if strings.Contains(got, f) {
					t.Errorf("sanitizeHTML(%q) = %q, contains %q", tt.in, got, f)
				}
			}
		})
	}
}

func nestedMessage(depth int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n")
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\ndeep text\r\n")
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.Bytes()
}

func manyParts(n int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.com\r\nSubject: many\r\nContent-Type: multipart/mixed; boundary=\"p\"\r\n\r\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "--p\r\nContent-Type: application/octet-stream\r\n\r\npart %d\r\n", i)
	}
	b.WriteString("--p--\r\n")
	return b.Bytes()
}

func TestParseLimits(t *testing.T) {
	bigField := "X-Big: " + strings.Repeat("a", 300<<10) + "\r\n"
	var folded strings.Builder
	folded.WriteString("X-Folded: start\r\n")
	for folded.Len() < 300<<10 {
		folded.WriteString(" continued line of a very long folded header field\r\n")
	}
	tests := []struct {
		name    string
		raw     []byte
		lim     Limits
		wantErr string // "" for success
	}{
		{"depth 10", nestedMessage(10), DefaultLimits(), ""},
		{"depth 11", nestedMessage(11), DefaultLimits(), "MIME nesting deeper than 10"},
		{"500 parts", manyParts(500), DefaultLimits(), ""},
		{"501 parts", manyParts(501), DefaultLimits(), "more than 500 parts"},
		{"huge header field", []byte("From: a@example.com\r\n" + bigField + "\r\nbody\r\n"), DefaultLimits(), "header block over 262144 bytes"},
		{"huge folded header", []byte("From: a@example.com\r\n" + folded.String() + "\r\nbody\r\n"), DefaultLimits(), "header block over 262144 bytes"},
		{"huge part header", []byte("From: a@example.com\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nok\r\n--x\r\n" + bigField + "\r\nbody\r\n--x--\r\n"), DefaultLimits(), "header block of part 2 over 262144 bytes"},
		{"header just under the limit", []byte("From: a@example.com\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\nbody\r\n"), DefaultLimits(), ""},
		{"message over MaxSize", append([]byte("From: a@example.com\r\n\r\n"), bytes.Repeat([]byte("x"), 2000)...), Limits{MaxSize: 1000}, "message over 1000 bytes"},
		{"message at MaxSize", append([]byte("From: a@example.com\r\n\r\n"), bytes.Repeat([]byte("x"), 977)...), Limits{MaxSize: 1000}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(bytes.NewReader(tt.raw), tt.lim)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if strings.HasPrefix(tt.name, "depth") && p.Text != "deep text" {
					t.Errorf("Text = %q", p.Text)
				}
				if strings.HasSuffix(tt.name, "parts") && len(p.Attachments) != 500 {
					t.Errorf("%d attachments", len(p.Attachments))
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse = %v, want ErrLimit with %q", err, tt.wantErr)
			}
			if p != nil {
				t.Errorf("Parse returned %+v with an error", p)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	full := readFixture(t, "nested.eml")
	tests := []struct {
		name    string
		raw     string
		wantErr error
		check   func(t *testing.T, p *Parsed)
	}{
		{name: "empty", raw: "", wantErr: ErrMalformed},
		{name: "truncated inside the attachment", raw: string(full[:bytes.Index(full, []byte("JVBERi"))+10]), check: func(t *testing.T, p *Parsed) {
			if p.Text != "Logo above, report attached." || len(p.Attachments) != 2 || p.Attachments[1].Filename != "report.pdf" {
				t.Errorf("got %q %+v", p.Text, p.Attachments)
			}
		}},
		{name: "truncated in a part header", raw: string(full[:bytes.Index(full, []byte("Content-ID"))]), check: func(t *testing.T, p *Parsed) {
			if p.Text != "Logo above, report attached." || p.Subject != "Nested structure" {
				t.Errorf("got %q %q", p.Subject, p.Text)
			}
		}},
		{name: "no header", raw: "just some text\r\n", check: func(t *testing.T, p *Parsed) {
			if p.Text != "just some text\n" {
				t.Errorf("Text = %q", p.Text)
			}
		}},
		{name: "header ends at a line that is not a field", raw: "Subject: s\r\nthis is not a field\r\nmore\r\n", check: func(t *testing.T, p *Parsed) {
			if p.Subject != "s" || p.Text != "this is not a field\nmore\n" {
				t.Errorf("Subject %q, Text %q", p.Subject, p.Text)
			}
		}},
		{name: "multipart without boundary", raw: "Content-Type: multipart/mixed\r\n\r\nraw\r\n", check: func(t *testing.T, p *Parsed) {
			if p.Text != "raw\n" {
				t.Errorf("Text = %q", p.Text)
			}
		}},
		{name: "boundary never seen", raw: "Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n", check: func(t *testing.T, p *Parsed) {
			if p.Text != "" || len(p.Attachments) != 0 {
				t.Errorf("got %q %+v", p.Text, p.Attachments)
			}
		}},
		{name: "raw 8-bit Latin-1 body and bad addresses", raw: "From: Broken <<a@example.com>, ok@example.org\r\nTo: \"unterminated <b@example.org>\r\nSubject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nK\xf6ln\r\n", check: func(t *testing.T, p *Parsed) {
			if p.Text != "Köln\n" || p.Subject != "=?x-unknown?q?abc?=" {
				t.Errorf("Text %q Subject %q", p.Text, p.Subject)
			}
			if len(p.From) != 2 || p.From[1].Email != "ok@example.org" || len(p.To) != 1 || p.To[0].Email != "b@example.org" {
				t.Errorf("From %+v To %+v", p.From, p.To)
			}
		}},
		{name: "bad base64 attachment", raw: "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64 at all===AAAA\r\n--b--\r\n", check: func(t *testing.T, p *Parsed) {
			if len(p.Attachments) != 1 {
				t.Errorf("Attachments %+v", p.Attachments)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(strings.NewReader(tt.raw), DefaultLimits())
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, p)
		})
	}
}

func TestParseHeaderFields(t *testing.T) {
	var refs []string
	for i := 0; i < 150; i++ {
		refs = append(refs, fmt.Sprintf("<r%d@example.com>", i))
	}
	tests := []struct {
		name   string
		header string
		check  func(t *testing.T, p *Parsed)
	}{
		{"references capped", "References: " + strings.Join(refs, "\r\n "), func(t *testing.T, p *Parsed) {
			if len(p.References) != 100 || p.References[0] != "r0@example.com" || p.References[1] != "r51@example.com" || p.References[99] != "r149@example.com" {
				t.Errorf("References = %d: %q", len(p.References), p.References)
			}
		}},
		{"message id with comments", "Message-ID: (a comment) <id@example.com> (another)", func(t *testing.T, p *Parsed) {
			if p.MessageID != "id@example.com" {
				t.Errorf("MessageID = %q", p.MessageID)
			}
		}},
		{"message id without brackets", "Message-ID: id@example.com", func(t *testing.T, p *Parsed) {
			if p.MessageID != "id@example.com" {
				t.Errorf("MessageID = %q", p.MessageID)
			}
		}},
		{"message id in a deep comment", "Message-ID: " + strings.Repeat("(", 200<<10), func(t *testing.T, p *Parsed) {
			if p.MessageID != "" {
				t.Errorf("MessageID = %q", p.MessageID)
			}
		}},
		{"two in-reply-to ids", "In-Reply-To: <a@example.com> <b@example.com>", func(t *testing.T, p *Parsed) {
			if p.InReplyTo != "a@example.com" {
				t.Errorf("InReplyTo = %q", p.InReplyTo)
			}
		}},
		{"encoded CRLF in subject and name", "Subject: =?utf-8?q?a=0D=0AX-Evil:_1?=\r\nFrom: =?utf-8?q?Eve=0D=0A?= <eve@example.com>", func(t *testing.T, p *Parsed) {
			if p.Subject != "a  X-Evil: 1" || len(p.From) != 1 || p.From[0].Name != "Eve" {
				t.Errorf("Subject %q, From %+v", p.Subject, p.From)
			}
		}},
		{"bidi override and path in filename", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"C:\\\\x\\\\invoice\u202Efdp.exe\"", func(t *testing.T, p *Parsed) {
			if len(p.Attachments) != 1 || p.Attachments[0].Filename != "invoicefdp.exe" {
				t.Errorf("Attachments %+v", p.Attachments)
			}
		}},
		{"201 header fields", strings.TrimSuffix(strings.Repeat("X-A: b\r\n", 201), "\r\n"), func(t *testing.T, p *Parsed) {
			if len(p.Headers) != 200 {
				t.Errorf("%d headers", len(p.Headers))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustParse(t, []byte(tt.header+"\r\n\r\nbody\r\n")))
		})
	}
}

func TestOpenPartErrors(t *testing.T) {
	raw := readFixture(t, "nested.eml")
	for _, id := range []string{"", "0", "3", "1.3", "2.1", "1.1.1.1", "01", "1.", "a", "TEXT", "1.HEADER"} {
		t.Run(id, func(t *testing.T) {
			if _, _, err := OpenPart(bytes.NewReader(raw), id, DefaultLimits()); !errors.Is(err, ErrNoSuchPart) {
				t.Errorf("OpenPart(%q) = %v, want ErrNoSuchPart", id, err)
			}
		})
	}
	t.Run("truncated content", func(t *testing.T) {
		cut := raw[:bytes.Index(raw, []byte("JVBERi"))+8]
		_, r, err := OpenPart(bytes.NewReader(cut), "2", DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(r); !errors.Is(err, ErrMalformed) {
			t.Errorf("reading a truncated part: %v, want ErrMalformed", err)
		}
	})
}

func TestSnippet(t *testing.T) {
	tests := []struct{ in, want string }{
		{"  Hello\n\n\tworld  ", "Hello world"},
		{"a\u00a0\u00a0b\u200c\u200cc", "a bc"},
		{strings.Repeat("word ", 100), strings.TrimSpace(strings.Repeat("word ", 40))},
		{strings.Repeat("é", 300), strings.Repeat("é", 200)},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 12)], func(t *testing.T) {
			got := snippet(tt.in)
			if got != tt.want {
				t.Errorf("snippet = %q, want %q", got, tt.want)
			}
			if n := utf8.RuneCountInString(got); n > 200 {
				t.Errorf("%d runes", n)
			}
		})
	}
}

// CheckLimits refuses exactly what Parse refuses for its limits.
func TestCheckLimitsAgreesWithParse(t *testing.T) {
	lim := DefaultLimits()
	for _, tc := range []struct {
		name string
		raw  []byte
		over bool
	}{
		{"500 parts", manyParts(500), false},
		{"501 parts", manyParts(501), true},
		{"depth 10", nestedMessage(10), false},
		{"depth 11", nestedMessage(11), true},
		{"header over 256 KiB", []byte("X-Big: " + strings.Repeat("a", 300<<10) + "\r\n\r\nbody\r\n"), true},
		{"plain", []byte("Subject: x\r\n\r\nbody\r\n"), false},
		{"malformed", []byte("no header at all"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLimits(bytes.NewReader(tc.raw), lim)
			if tc.over != errors.Is(err, ErrLimit) || (!tc.over && err != nil) {
				t.Fatalf("CheckLimits: %v, want over limit %v", err, tc.over)
			}
			_, perr := Parse(bytes.NewReader(tc.raw), lim)
			if tc.over != errors.Is(perr, ErrLimit) {
				t.Fatalf("Parse: %v, but CheckLimits: %v", perr, err)
			}
		})
	}
}
