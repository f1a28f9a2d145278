// Package trace writes and reads the one trace header field the router's
// SMTP edge prepends to every inbound message (RFC 5321 §4.4 "Received"),
// which is how a cell's pipeline learns the client's IP address and HELO
// name for SPF (RFC 7208 §2.3–2.4) without trusting anything the sender
// wrote: only the topmost field is read, and the edge always adds one.
//
// The field also is what the cell leaves out of a delivery's idempotency
// key, so a sender's retry (new time, new id) is recognised as the same
// message.
package trace

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Info is what the edge knew about the SMTP transaction.
type Info struct {
	Helo     string
	IP       netip.Addr
	By       string // the edge's host name
	Protocol string // ESMTP, ESMTPS (RFC 3848)
	ID       string
	Time     time.Time
}

// Field renders the header field, folded, CRLF-terminated.
func Field(in Info) string {
	return fmt.Sprintf("Received: from %s ([%s])\r\n\tby %s (cellmail) with %s id %s;\r\n\t%s\r\n",
		clean(in.Helo), in.IP.Unmap().String(), clean(in.By), clean(in.Protocol), clean(in.ID),
		in.Time.UTC().Format(time.RFC1123Z))
}

// clean keeps a token safe inside the field: printable ASCII without
// spaces, parentheses, semicolons or brackets, at most 255 octets.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("()[];\\\"", r) {
			return -1
		}
		return r
	}, s)
	if len(s) > 255 {
		s = s[:255]
	}
	if s == "" {
		return "unknown"
	}
	return s
}

var fieldRE = regexp.MustCompile(`^from (\S+) \(\[([0-9A-Fa-f.:]+)\]\) by (\S+) \(cellmail\) with (\S+) id (\S+); (.+)$`)

// Split finds the edge's field at the very top of raw and returns what it
// says and the message after it. ok is false when raw does not start with
// such a field (then rest is raw).
func Split(raw []byte) (in Info, rest []byte, ok bool) {
	const name = "Received:"
	if len(raw) < len(name) || !bytes.EqualFold(raw[:len(name)], []byte(name)) {
		return Info{}, raw, false
	}
	// The field ends at the first line break not followed by white space.
	end := -1
	for i := 0; i < len(raw) && i < 4096; i++ {
		if raw[i] != '\n' {
			continue
		}
		if i+1 >= len(raw) || (raw[i+1] != ' ' && raw[i+1] != '\t') {
			end = i + 1
			break
		}
	}
	if end < 0 {
		return Info{}, raw, false
	}
	value := strings.Join(strings.Fields(string(raw[len(name):end])), " ")
	m := fieldRE.FindStringSubmatch(value)
	if m == nil {
		return Info{}, raw, false
	}
	ip, err := netip.ParseAddr(m[2])
	if err != nil {
		return Info{}, raw, false
	}
	t, _ := time.Parse(time.RFC1123Z, m[6])
	return Info{Helo: m[1], IP: ip, By: m[3], Protocol: m[4], ID: m[5], Time: t}, raw[end:], true
}
