package imapd_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

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
