package imapd_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"

	"github.com/cellmail/cellmail/cell/internal/message"
)

// The ENVELOPE made from the kept header fields (message.EnvelopeHeader) is
// the one made from the whole message, for every message the parser's
// tests use and for awkward headers.
func TestEnvelopeHeaderSameEnvelope(t *testing.T) {
	msgs := map[string]string{
		"folded and encoded": "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\n" +
			"From: \"Ann, B\" <ann@example.test>\r\nTo: a@x.test,\r\n b@y.test\r\nCc: c@z.test\r\nX-Other: kept out\r\n" +
			"Reply-To: r@x.test\r\nSender: s@x.test\r\nIn-Reply-To: <p@x>\r\nMessage-ID: <m@x>\r\nBcc: hidden@x.test\r\n\r\nbody\r\n",
		"two subjects":   "Subject: first\r\nSubject: second\r\nFrom: a@x.test\r\n\r\nx\r\n",
		"no sender":      "From: a@x.test\r\nTo: undisclosed-recipients:;\r\n\r\nx\r\n",
		"lower case":     "subject: lower\r\nfrom: a@x.test\r\nmessage-id: <l@x>\r\n\r\nx\r\n",
		"header only":    "Subject: no body\r\n",
		"bare LF":        "Subject: lf\nFrom: a@x.test\n\nbody\n",
		"bad address":    "From: not an address <<<\r\nTo: @@@\r\n\r\nx\r\n",
		"non-ascii utf8": "Subject: naïve café\r\nFrom: Zoë <z@x.test>\r\n\r\nx\r\n",
	}
	files, _ := filepath.Glob("../message/testdata/*.eml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		msgs[filepath.Base(f)] = string(b)
	}
	if len(files) == 0 {
		t.Fatal("no .eml files in ../message/testdata")
	}
	for name, raw := range msgs {
		full, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			continue // no header to compare: EnvelopeHeader must say nil
		}
		kept := message.EnvelopeHeader([]byte(raw))
		if kept == nil {
			t.Errorf("%s: no envelope header kept", name)
			continue
		}
		h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(kept)))
		if err != nil {
			t.Errorf("%s: kept fields do not read back: %v\n%q", name, err, kept)
			continue
		}
		if want, got := imapserver.ExtractEnvelope(full), imapserver.ExtractEnvelope(h); !reflect.DeepEqual(want, got) {
			t.Errorf("%s: ENVELOPE differs:\nfrom the message %+v\nfrom kept fields %+v", name, want, got)
		}
		if h.Has("X-Other") {
			t.Errorf("%s: kept a field that is not an ENVELOPE field", name)
		}
	}
	// Too large: nothing kept, readers go to the message.
	big := "Subject: " + strings.Repeat("x", 20<<10) + "\r\n\r\nx\r\n"
	if message.EnvelopeHeader([]byte(big)) != nil {
		t.Error("a 20 KiB Subject was kept")
	}
}

// ENVELOPE's address lists keep groups (a start entry with the group's
// name as mailbox and no host, an end entry of NILs) and source routes,
// pass over comments, and take a comment after a bare address as its name
// (RFC 3501 §7.4.2, RFC 5322 §3.4 and §4.4); the cases of imaptest's
// fetch-envelope and search-addresses tests among them.
func TestEnvelopeAddressList(t *testing.T) {
	type A = imap.Address
	for _, tc := range []struct {
		in   string
		want []A
	}{
		{"user@domain", []A{{Mailbox: "user", Host: "domain"}}},
		{"From Real <fromuser@fromdomain.org>", []A{{Name: "From Real", Mailbox: "fromuser", Host: "fromdomain.org"}}},
		{"user@domain (Real Name)", []A{{Name: "Real Name", Mailbox: "user", Host: "domain"}}},
		{`"Ann, B" <ann@example.test>, c@z.test`, []A{{Name: "Ann, B", Mailbox: "ann", Host: "example.test"}, {Mailbox: "c", Host: "z.test"}}},
		{"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;", []A{{Mailbox: "group"}, {Mailbox: "g1", Host: "d1.org"},
			{Mailbox: "g2", Host: "d2.org"}, {}, {Mailbox: "group2"}, {Mailbox: "g3", Host: "d3.org"}, {}}},
		{"group:;, group2: (foo) ;", []A{{Mailbox: "group"}, {}, {Mailbox: "group2"}, {}}},
		{"undisclosed-recipients:;", []A{{Mailbox: "undisclosed-recipients"}, {}}},
		{"<@route:user@domain>", []A{{Route: "@route", Mailbox: "user", Host: "domain"}}},
		{"Name <@a.example,@b.example:user@domain>", []A{{Name: "Name", Route: "@a.example,@b.example", Mailbox: "user", Host: "domain"}}},
		{"<user-from (comment)@ (comment) domain.org>", []A{{Mailbox: "user-from", Host: "domain.org"}}},
		{"=?utf-8?q?Zo=C3=AB?= <z@x.test>", []A{{Name: "Zoë", Mailbox: "z", Host: "x.test"}}},
		{"John Q. Public <jqp@x.test>", []A{{Name: "John Q. Public", Mailbox: "jqp", Host: "x.test"}}},
		{`"quoted local"@x.test`, []A{{Mailbox: `"quoted local"`, Host: "x.test"}}},
		{"user@[192.0.2.1]", []A{{Mailbox: "user", Host: "[192.0.2.1]"}}},
		{"", nil},
		{"   ", nil},
		{"not an address <<<", nil},
		{"@@@", nil},
		{"nodomain", nil},
		{"a@x.test,,, b@y.test", []A{{Mailbox: "a", Host: "x.test"}, {Mailbox: "b", Host: "y.test"}}},
		{"unclosed: a@x.test", []A{{Mailbox: "unclosed"}, {Mailbox: "a", Host: "x.test"}, {}}},
		{"(comment only)", nil},
		{`"unterminated`, nil},
	} {
		if got := imapserver.ParseAddressList(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseAddressList(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// ParseAddressList is linear in its input: a field of "[" (domain literals
// no address takes, from any sender) is passed over without scanning on to
// a "]" from each of its bytes again, which took seconds for a field as
// large as a header may be (ENVELOPE and SEARCH read it each time).
func TestParseAddressListLinear(t *testing.T) {
	const n = 1 << 20
	done := make(chan []imap.Address, 1)
	go func() {
		out := imapserver.ParseAddressList(strings.Repeat("[", n))
		out = append(out, imapserver.ParseAddressList(strings.Repeat("[", n)+"] a@x.test")...)
		done <- out
	}()
	select {
	case got := <-done:
		if want := []imap.Address{{Mailbox: "a", Host: "x.test"}}; !reflect.DeepEqual(got, want) {
			t.Errorf("ParseAddressList of unclosed literals = %+v, want %+v", got, want)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("ParseAddressList of 1 MiB of \"[\" still working after 3s")
	}
}
