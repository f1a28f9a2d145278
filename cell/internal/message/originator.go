package message

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Originators returns the addresses of a message's originator fields
// (RFC 5322 §3.6.2): every mailbox of From and the mailbox of Sender, as
// written (not canonicalised). It is strict where a receiver could read the
// header differently from us, because what it returns decides whether the
// message may be signed with our domain: a header section that ends at a
// line that is neither a field nor the empty line, more than one From or
// Sender field (RFC 5322 §3.6 allows one of each), a field that does not
// parse as an address list, or a group (which names no sender) fail with an
// error wrapping ErrMalformed. A message without From returns no address.
func Originators(raw []byte) ([]string, error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	hdr, rest, err := readHeaderBlock(br, DefaultLimits().MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: header section: %v", ErrMalformed, err)
	}
	if rest != nil {
		return nil, fmt.Errorf("%w: a line of the header section is not a header field", ErrMalformed)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(hdr, '\r', '\n'))))
	if err != nil {
		return nil, fmt.Errorf("%w: header section: %v", ErrMalformed, err)
	}
	var out []string
	seen := map[string]bool{}
	for f := h.Fields(); f.Next(); {
		// Obsolete syntax allows white space before the colon (RFC 5322
		// §4.5.6); a receiver may read "From :" as From.
		key := strings.ToLower(strings.TrimSpace(f.Key()))
		if key != "from" && key != "sender" {
			continue
		}
		if seen[key] {
			return nil, fmt.Errorf("%w: more than one %s field", ErrMalformed, key)
		}
		seen[key] = true
		v, err := gomail.ParseAddressList(f.Value())
		if err != nil || len(v) == 0 || (key == "sender" && len(v) != 1) {
			return nil, fmt.Errorf("%w: %s field is not a mailbox list", ErrMalformed, key)
		}
		for _, a := range v {
			out = append(out, a.Address)
		}
	}
	return out, nil
}

// CompleteHeader returns raw with the header fields RFC 5322 §3.6 requires
// that it lacks, added at the top of its header as a message submission
// agent may (RFC 6409 §8.2 Date, §8.3 Message-ID; a From naming the
// submitter, from, when the client wrote none, so that what we sign says
// who sent it). raw is returned unchanged when it has all three. Its header
// must read as Originators reads it.
func CompleteHeader(raw []byte, from string, now time.Time) ([]byte, error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	hdr, rest, err := readHeaderBlock(br, DefaultLimits().MaxHeaderBytes)
	if err != nil || rest != nil {
		return nil, fmt.Errorf("%w: header section", ErrMalformed)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(hdr, '\r', '\n'))))
	if err != nil {
		return nil, fmt.Errorf("%w: header section: %v", ErrMalformed, err)
	}
	have := map[string]bool{}
	for f := h.Fields(); f.Next(); {
		have[strings.ToLower(strings.TrimSpace(f.Key()))] = true
	}
	var add bytes.Buffer
	if !have["from"] {
		fmt.Fprintf(&add, "From: %s\r\n", from)
	}
	if !have["date"] {
		fmt.Fprintf(&add, "Date: %s\r\n", now.Format(time.RFC1123Z))
	}
	if !have["message-id"] {
		addr, err := gomail.ParseAddress(from)
		if err != nil {
			return nil, fmt.Errorf("%w: from %q: %v", ErrMalformed, from, err)
		}
		id, err := newMessageID(addr.Address)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&add, "Message-ID: <%s>\r\n", id)
	}
	if add.Len() == 0 {
		return raw, nil
	}
	return append(add.Bytes(), raw...), nil
}
