package message

import (
	"bufio"
	"bytes"
	"io"

	"github.com/emersion/go-message/textproto"
)

// envelopeFields are the header fields an IMAP ENVELOPE is made of (RFC
// 9051 §7.5.2), in canonical form.
var envelopeFields = map[string]bool{
	"Date": true, "Subject": true, "From": true, "Sender": true, "Reply-To": true,
	"To": true, "Cc": true, "Bcc": true, "In-Reply-To": true, "Message-Id": true,
}

// EnvelopeField reports whether a header field (in canonical form, as
// net/textproto.CanonicalMIMEHeaderKey gives it) is one EnvelopeHeader keeps.
func EnvelopeField(key string) bool { return envelopeFields[key] }

// maxEnvelopeHeader bounds what EnvelopeHeader keeps.
const maxEnvelopeHeader = 16 << 10

// EnvelopeHeader returns the header fields of raw that an IMAP ENVELOPE is
// made of, as they are written (folding and encoded words kept), in their
// order, ending with the empty line: a header block that gives the same
// ENVELOPE as the whole message's. It is nil when the header cannot be read
// or those fields take more than 16 KiB; a reader then goes to the message.
func EnvelopeHeader(raw []byte) []byte {
	h, err := textproto.ReadHeader(bufio.NewReader(io.LimitReader(bytes.NewReader(raw), 256<<10)))
	if err != nil {
		return nil
	}
	var out []byte
	for f := h.Fields(); f.Next(); {
		if !envelopeFields[f.Key()] {
			continue
		}
		b, err := f.Raw()
		if err != nil {
			return nil
		}
		out = append(out, b...)
		if len(out) > maxEnvelopeHeader {
			return nil
		}
	}
	return append(out, '\r', '\n')
}
