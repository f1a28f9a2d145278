// Package message reads stored Internet messages (RFC 5322, MIME RFC
// 2045–2047) into the shape the webmail API shows, and writes outgoing ones.
//
// Implementation notes:
//
//   - Parsing is built on github.com/emersion/go-message: its textproto
//     package reads header sections and splits multipart bodies (RFC 2046
//     §5.1), its mail package parses addresses, dates and message ids, and its
//     charset package decodes legacy charsets. The walk over the MIME tree is
//     ours, so that parts get IMAP section numbers (RFC 3501 §6.4.5) and every
//     step is bounded by Limits.
//   - Everything read goes through a size guard (Limits.MaxSize), every header
//     section through a byte budget (Limits.MaxHeaderBytes), and the text and
//     HTML bodies kept are capped at 2 MiB each, so memory stays bounded
//     whatever the input.
//   - Parsing is lenient: a broken part or a truncated body ends the walk of
//     its multipart, and Parse returns what it read so far. Exceeding a limit
//     is never lenient: it fails with an error wrapping ErrLimit.
//   - Content-Type and Content-Disposition parameters are parsed by our own
//     lenient reader (params.go), which unlike mime.ParseMediaType decodes RFC
//     2231 values in any charset and accepts common malformations.
//   - Composing uses go-message/mail's writer: multipart/mixed when there are
//     attachments (base64), multipart/alternative when there are both text and
//     HTML (quoted-printable), CRLF line endings throughout.
package message

import (
	"errors"
	"time"
)

// Errors. Data-carrying errors wrap them as "%w: detail".
var (
	// ErrLimit reports input that exceeds a Limits bound.
	ErrLimit = errors.New("message limit exceeded")
	// ErrMalformed reports input that cannot be read or written as a
	// message: a broken header section, or a draft that would allow header
	// injection.
	ErrMalformed = errors.New("malformed message")
	// ErrNoSuchPart reports a part number that names no part of the message.
	ErrNoSuchPart = errors.New("no such message part")
)

// Limits bounds the work and memory spent on one message. A zero or negative
// field means the default of DefaultLimits.
type Limits struct {
	MaxSize        int64 // bytes of the whole message
	MaxDepth       int   // multipart nesting levels
	MaxParts       int   // MIME parts, containers included, the root excluded
	MaxHeaderBytes int   // bytes of one header section (the message's or a part's)
}

// DefaultLimits returns the limits used for stored mail: 50 MiB, 10 levels of
// multipart nesting, 500 parts, 256 KiB of header per part.
func DefaultLimits() Limits {
	return Limits{MaxSize: 50 << 20, MaxDepth: 10, MaxParts: 500, MaxHeaderBytes: 256 << 10}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxSize <= 0 {
		l.MaxSize = d.MaxSize
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxParts <= 0 {
		l.MaxParts = d.MaxParts
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	return l
}

const (
	maxTextBytes   = 2 << 20 // decoded bytes kept of the text and of the HTML body
	maxHeaders     = 200     // header fields listed in Parsed.Headers
	maxSnippetRune = 200
	maxReferences  = 100 // message ids kept of References
)

// Address is a mailbox (RFC 5322 §3.4): a display name, decoded from RFC 2047
// encoded words, and an address.
type Address struct {
	Name  string
	Email string
}

// Header is one header field of the message, in the order it appears, its
// value unfolded and decoded from RFC 2047 encoded words.
type Header struct {
	Key   string
	Value string
}

// Attachment describes a part of the message other than the text and HTML
// bodies: attachments, inline images, forwarded messages.
type Attachment struct {
	// PartID is the part's IMAP section number (RFC 3501 §6.4.5): "1" for
	// the body of a single-part message, "2.1" for the first part of the
	// second part of a multipart one.
	PartID string
	// Filename is the RFC 2183 filename parameter (or the Content-Type name
	// parameter), decoded from RFC 2231 or RFC 2047, without path components
	// or control characters. It may be empty.
	Filename string
	// ContentType is the lower-case media type, with the charset parameter
	// for text types, e.g. "image/png", "text/plain; charset=iso-8859-1".
	ContentType string
	// Size is the size of the content once its transfer encoding is removed;
	// -1 when unknown (OpenPart, before the content is read).
	Size int64
	// Disposition is the RFC 2183 disposition type, "attachment" or
	// "inline" ("attachment" for unrecognised types, RFC 2183 §2.8), or ""
	// when the part has no Content-Disposition.
	Disposition string
	// ContentID is the Content-ID (RFC 2045 §7) without angle brackets, the
	// target of cid: URLs in the HTML body (RFC 2392).
	ContentID string
}

// Parsed is a message as the webmail API shows it.
type Parsed struct {
	Subject    string
	From       []Address
	To, Cc     []Address
	ReplyTo    []Address
	Date       time.Time // zero when absent or unparseable
	MessageID  string    // without angle brackets
	InReplyTo  string    // the first message id of In-Reply-To
	References []string  // at most 100: the first and the last 99
	// Text is the first text/plain part that is not an attachment, decoded
	// to UTF-8 with LF line endings, at most 2 MiB.
	Text string
	// HTML is the first text/html part that is not an attachment, at most 2
	// MiB of it, sanitised: bluemonday's UGC policy (no scripts, event
	// handlers, styles, forms or frames), images only from cid: and data:
	// URLs so that nothing remote loads on display, links with
	// rel="nofollow noopener noreferrer" and target="_blank".
	HTML string
	// Snippet is at most 200 runes of the text (or of the HTML's text when
	// there is no text part), whitespace collapsed.
	Snippet     string
	Attachments []Attachment
	// Headers are the message's header fields, at most 200.
	Headers []Header
	// HasAttachments reports an attachment other than an embedded resource
	// (a part with a Content-ID that is not explicitly an attachment).
	HasAttachments bool
}
