// Package wire holds the one rule for a message's bytes that the router's
// SMTP edge and a cell's LMTP endpoint both apply, so that no trick with
// line endings can make one message into two anywhere along the way
// (SMTP smuggling):
//
//   - DATA ends only at <CRLF>.<CRLF> (RFC 5321 §4.1.1.4); go-smtp's reader
//     does that.
//   - A message containing a bare CR or a bare LF (one not part of a CRLF
//     pair) is refused with 554 5.6.0, not normalised: RFC 5321 §2.3.8
//     forbids them, and refusing keeps what we store, sign and relay
//     byte-identical to what the sender sent.
//   - A NUL octet is refused the same way (RFC 5321 §4.5.2 allows none in
//     text, and many readers truncate at it).
//   - An empty message (DATA ended at once, or BDAT 0 LAST as the only
//     chunk) is refused the same way: RFC 5322 §3.6 requires header
//     fields (Date and From at least), so nothing is stored for it.
package wire

import (
	"bytes"
	"io"

	"github.com/emersion/go-smtp"
)

// Check returns the reply refusing body, or nil when it follows the rule.
func Check(body []byte) *smtp.SMTPError {
	if len(body) == 0 {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "Message is empty; it needs header fields (RFC 5322 section 3.6)"}
	}
	if bytes.IndexByte(body, 0) >= 0 {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "Message contains a NUL octet (RFC 5321 section 4.5.2)"}
	}
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '\r':
			if i+1 >= len(body) || body[i+1] != '\n' {
				return bare("CR")
			}
			i++
		case '\n':
			return bare("LF")
		}
	}
	return nil
}

// MaxLine is the longest line of a message, in octets before its CRLF
// (RFC 5321 §4.5.3.1.6).
const MaxLine = 998

// CheckLines returns the reply refusing body when a line of it is longer
// than MaxLine. DATA's reader enforces the limit as it reads (go-smtp's
// MaxLineLength); a BDAT chunk is read by length, so a message that came
// in chunks is held to the same limit here, at the edge and in the cell
// alike, and answered with the reply go-smtp's DATA reader gives
// (smtp.ErrDataLineTooLong, 554 5.6.0, once, after the end of the
// message). The API's own submissions are not: it encodes what it builds.
func CheckLines(body []byte) *smtp.SMTPError {
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			i = len(body)
		}
		line := body[:i]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) > MaxLine {
			return smtp.ErrDataLineTooLong
		}
		body = body[min(i+1, len(body)):]
	}
	return nil
}

func bare(what string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message contains a bare " + what + "; lines must end with CRLF (RFC 5321 section 2.3.8)"}
}

// Normalize returns body with every bare CR and bare LF made a CRLF: what
// a user's own client submits is repaired rather than refused (RFC 6409
// §8 lets a submission server fix up a message), so that what is stored,
// signed and relayed always follows the rule above. A NUL is still
// refused by Check.
func Normalize(body []byte) []byte {
	if Check(body) == nil {
		return body
	}
	out := make([]byte, 0, len(body)+len(body)/40)
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(body) && body[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}

// ReadAll reads a message's DATA as io.ReadAll does, into a buffer sized
// for typical mail from the start (io.ReadAll grows from 512 bytes,
// allocating about three times the message on the way).
func ReadAll(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(32 << 10)
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}
