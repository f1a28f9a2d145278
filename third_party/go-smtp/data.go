package smtp

import (
	"bufio"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

// ErrDataLineTooLong is the reply to DATA whose text has a line longer
// than the server's MaxLineLength (cellmail patch; RFC 5321 §4.5.3.1.6:
// 1000 octets with the CRLF, not counting a dot added for transparency).
// It is 554 5.6.0 rather than 500: it is sent once, after the end of the
// data (§4.2.5: the reply comes after <CRLF>.<CRLF>), and 500 is not among
// the replies §4.3.2 allows there.
var ErrDataLineTooLong = &SMTPError{
	Code:         554,
	EnhancedCode: EnhancedCode{5, 6, 0},
	Message:      "Message has a line over the length limit (RFC 5321 section 4.5.3.1.6)",
}

// dataReader reads DATA's text (RFC 5321 §4.1.1.4, §4.5.2): it removes the
// dot added for transparency, ends at the line that is a single dot, and
// holds the text to the size and line limits. Lines end only at CRLF; a
// bare CR or LF is text and passed on as it came, for the backend to
// refuse or repair.
type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining

	// cellmail patch: lineLimit (0: none) bounds a line's octets with its
	// CRLF; lineLen counts the current line's.
	lineLimit int
	lineLen   int
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r:         c.text.R,
		lineLimit: c.server.MaxLineLength,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// drain reads the rest of the data, past any limit, so that the reply
// comes after its end and the next command is read from after it
// (cellmail patch: a limit error does not end the reading of the data).
func (r *dataReader) drain() error {
	r.limited = false
	r.lineLimit = 0
	_, err := io.Copy(io.Discard, r)
	return err
}

// States of dataReader.
const (
	stateBeginLine = iota // beginning of line; initial state; must be zero
	stateDot              // read . at beginning of line
	stateDotCR            // read .\r at beginning of line
	stateCR               // read \r (possibly at end of line)
	stateData             // reading data in middle of line
	stateEOF              // reached .\r\n end marker line
)

func (r *dataReader) Read(b []byte) (n int, err error) {
	// The state machine of net/textproto's dotReader, without its CRLF to
	// LF rewriting. cellmail patch: a CR that is not followed by LF is
	// emitted and the byte after it looked at again, so that "x\r\r\n.\r\n"
	// ends the data and ".\rx" keeps its CR (upstream lost track of the
	// line there: the data never ended, or a CR was dropped); the size
	// limit counts the octets emitted, so a message of exactly
	// MaxMessageBytes is accepted.
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			switch c {
			case '.':
				r.state = stateDot
				continue
			case '\r':
				r.state = stateCR
			default:
				r.state = stateData
			}
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			// The leading dot of a line with more on it is removed.
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			// ".\r" then not LF: the dot is removed, the CR is text; the
			// byte after it is looked at again.
			r.r.UnreadByte()
			c = '\r'
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			// A CR not followed by LF: look at this byte again as the
			// first after a line's text.
			r.r.UnreadByte()
			r.state = stateData
			continue
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		if r.limited && r.n <= 0 {
			return n, ErrDataTooLarge
		}
		if r.lineLimit > 0 {
			r.lineLen++
			if r.lineLen > r.lineLimit {
				return n, ErrDataLineTooLong
			}
			if r.state == stateBeginLine {
				r.lineLen = 0
			}
		}
		b[n] = c
		n++
		if r.limited {
			r.n--
		}
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	return
}
