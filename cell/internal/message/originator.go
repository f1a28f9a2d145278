package message

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

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
