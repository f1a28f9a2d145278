package imapd

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"mime"
	stdmail "net/mail"
	stdtextproto "net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	gocharset "github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/message"
)

// searchable is one message as a search sees it; the header and body are
// read from the blob only when a criterion asks for them.
type searchable struct {
	m      mail.Message
	seq    uint32
	se     *session
	ctx    context.Context
	raw    []byte
	hdr    *textproto.Header
	failed error
	// envelope: the search's header criteria are all ENVELOPE fields, so
	// the kept EnvelopeHeader answers them.
	envelope bool
}

func (c *searchable) header() textproto.Header {
	if c.hdr == nil {
		var h textproto.Header
		switch {
		case c.raw != nil:
			h, _ = textproto.ReadHeader(bufio.NewReader(bytes.NewReader(c.raw)))
		case c.envelope && c.m.EnvelopeHeader != nil:
			h, _ = textproto.ReadHeader(bufio.NewReader(bytes.NewReader(c.m.EnvelopeHeader)))
		default:
			var err error
			h, err = c.se.readHeader(c.ctx, c.m)
			if err != nil {
				c.failed = err
			}
		}
		c.hdr = &h
	}
	return *c.hdr
}

func (c *searchable) body() []byte {
	if c.raw == nil && c.failed == nil {
		c.raw, c.failed = c.se.readBlob(c.ctx, c.m)
	}
	return c.raw
}

// Search answers SEARCH and UID SEARCH (RFC 9051 §6.4.4), with ESEARCH's
// MIN, MAX, COUNT and ALL (RFC 4731) and CONDSTORE's MODSEQ (RFC 7162
// §3.1.5). Text criteria match case-insensitively in decoded text parts.
func (se *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	all := make([]int, len(s.uids))
	for i := range all {
		all[i] = i
	}
	data := &imap.SearchData{}
	var seqs imap.SeqSet
	var uids imap.UIDSet
	var modseq, minModseq, maxModseq uint64
	envelope := envelopeOnly(criteria)
	err := se.messages(ctx, s.uidsAt(all), envelope, func(msgs []mail.Message) error {
		for _, m := range msgs {
			c := &searchable{m: m, seq: s.seqOf(m.UID), se: se, ctx: ctx, envelope: envelope}
			ok := match(c, criteria)
			if c.failed != nil {
				return se.toIMAPError("search", c.failed)
			}
			if !ok {
				continue
			}
			seqs.AddNum(c.seq)
			uids.AddNum(imap.UID(m.UID))
			num := c.seq
			if kind == imapserver.NumKindUID {
				num = m.UID
			}
			if data.Count == 0 || num < data.Min {
				data.Min, minModseq = num, m.Modseq
			}
			if num > data.Max {
				data.Max, maxModseq = num, m.Modseq
			}
			data.Count++
			modseq = max(modseq, m.Modseq)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if kind == imapserver.NumKindUID {
		data.All = uids
	} else {
		data.All = seqs
	}
	if hasModSeq(criteria) {
		data.ModSeq = searchModSeq(options, modseq, minModseq, maxModseq)
	}
	return data, nil
}

// searchModSeq is the MODSEQ a search with the MODSEQ criterion answers
// (RFC 7162 §3.1.5, §3.1.6 for ESEARCH): with MIN or MAX (or both) as the
// only return options, the highest mod-sequence of the messages MIN and
// MAX name; otherwise the highest of all the messages found.
func searchModSeq(o *imap.SearchOptions, all, minModseq, maxModseq uint64) uint64 {
	if o == nil || o.ReturnAll || o.ReturnCount || !o.ReturnMin && !o.ReturnMax {
		return all
	}
	var m uint64
	if o.ReturnMin {
		m = minModseq
	}
	if o.ReturnMax {
		m = max(m, maxModseq)
	}
	return m
}

func hasModSeq(c *imap.SearchCriteria) bool {
	if c.ModSeq != nil {
		return true
	}
	for i := range c.Not {
		if hasModSeq(&c.Not[i]) {
			return true
		}
	}
	for i := range c.Or {
		if hasModSeq(&c.Or[i][0]) || hasModSeq(&c.Or[i][1]) {
			return true
		}
	}
	return false
}

func match(c *searchable, cr *imap.SearchCriteria) bool {
	m := c.m
	for _, set := range cr.SeqNum {
		if !set.Contains(c.seq) && !(containsStar(set) && c.seq == uint32(len(c.se.sel.uids))) {
			return false
		}
	}
	for _, set := range cr.UID {
		if !set.Contains(imap.UID(m.UID)) && !(containsStarUID(set) && m.UID == c.se.sel.uids[len(c.se.sel.uids)-1]) {
			return false
		}
	}
	if !matchDate(m.ReceivedAt, cr.Since, cr.Before) {
		return false
	}
	if (!cr.SentSince.IsZero() || !cr.SentBefore.IsZero()) && !matchDate(c.sentDay(), cr.SentSince, cr.SentBefore) {
		return false
	}
	flags := c.se.flags(m)
	has := func(f imap.Flag) bool {
		for _, x := range flags {
			if strings.EqualFold(string(x), string(f)) {
				return true
			}
		}
		return false
	}
	for _, f := range cr.Flag {
		if !has(f) {
			return false
		}
	}
	for _, f := range cr.NotFlag {
		if has(f) {
			return false
		}
	}
	if cr.Larger != 0 && m.Size <= cr.Larger || cr.Smaller != 0 && m.Size >= cr.Smaller {
		return false
	}
	if cr.ModSeq != nil && m.Modseq < cr.ModSeq.ModSeq {
		return false
	}
	for _, h := range cr.Header {
		if !matchHeader(c.header(), h.Key, h.Value) {
			return false
		}
	}
	for _, t := range cr.Body {
		if !matchEntity(c.body(), t, false) {
			return false
		}
	}
	for _, t := range cr.Text {
		if !matchEntity(c.body(), t, true) {
			return false
		}
	}
	for i := range cr.Not {
		if match(c, &cr.Not[i]) {
			return false
		}
	}
	for i := range cr.Or {
		if !match(c, &cr.Or[i][0]) && !match(c, &cr.Or[i][1]) {
			return false
		}
	}
	return true
}

func containsStar(set imap.SeqSet) bool {
	for _, r := range set {
		if r.Start == 0 || r.Stop == 0 {
			return true
		}
	}
	return false
}

func containsStarUID(set imap.UIDSet) bool {
	for _, r := range set {
		if r.Start == 0 || r.Stop == 0 {
			return true
		}
	}
	return false
}

// sentDay is the day of the message's Date field as written, in its own
// time zone (SENTBEFORE, SENTON, SENTSINCE compare it "disregarding time
// and timezone", RFC 3501 §6.4.4): 00:30 +0200 on the 25th is the 25th,
// though UTC says the 24th, and 23:00 -0500 on the 25th is the 25th, though
// UTC says the 26th. Without a readable Date field, the stored sent time
// (in UTC) is used.
func (c *searchable) sentDay() time.Time {
	h := c.header()
	if v := h.Get("Date"); v != "" {
		if t, err := stdmail.ParseDate(v); err == nil {
			return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		}
	}
	return c.m.SentAt.UTC()
}

// matchDate compares dates only, ignoring time and zone (RFC 9051 §6.4.4):
// t's day as written in its own location.
func matchDate(t, since, before time.Time) bool {
	d := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if !since.IsZero() && d.Before(since) {
		return false
	}
	if !before.IsZero() && !d.Before(before) {
		return false
	}
	return true
}

func matchHeader(h textproto.Header, key, pattern string) bool {
	fields := h.FieldsByKey(key)
	if pattern == "" {
		return fields.Len() > 0
	}
	pattern = strings.ToLower(pattern)
	address := addressField(key)
	for fields.Next() {
		v := fields.Value()
		if address {
			// FROM, TO, CC, BCC search the address as ENVELOPE has it
			// (RFC 3501 §6.4.4): comments, quoting and route left out.
			if addrs := imapserver.ParseAddressList(v); len(addrs) > 0 {
				if slices.ContainsFunc(addrs, func(a imap.Address) bool {
					return strings.Contains(strings.ToLower(addressText(a)), pattern)
				}) {
					return true
				}
				continue
			}
		}
		if d, err := wordDecoder.DecodeHeader(v); err == nil {
			v = d
		}
		if strings.Contains(strings.ToLower(v), pattern) {
			return true
		}
	}
	return false
}

// addressField: a header field holding an address list.
func addressField(key string) bool {
	switch strings.ToLower(key) {
	case "from", "to", "cc", "bcc", "sender", "reply-to":
		return true
	}
	return false
}

// addressText is what an address search matches: "Name <local@domain>",
// or a group's name.
func addressText(a imap.Address) string {
	switch {
	case a.IsGroupStart():
		return a.Mailbox
	case a.IsGroupEnd():
		return ""
	case a.Name != "":
		return a.Name + " <" + a.Addr() + ">"
	}
	return a.Addr()
}

var wordDecoder = mime.WordDecoder{CharsetReader: gocharset.Reader}

// matchEntity looks for pattern in the text parts of a raw message (and
// in its header fields with includeHeader).
func matchEntity(raw []byte, pattern string, includeHeader bool) bool {
	if pattern == "" {
		return true
	}
	if raw == nil {
		return false
	}
	e, err := gomessage.Read(bytes.NewReader(raw))
	if e == nil {
		return false
	}
	_ = err // an unknown charset still gives the raw text
	return entityContains(e, strings.ToLower(pattern), includeHeader, 0)
}

func entityContains(e *gomessage.Entity, pattern string, includeHeader bool, depth int) bool {
	if depth > 20 {
		return false
	}
	if includeHeader {
		fields := e.Header.Fields()
		for fields.Next() {
			v, err := fields.Text()
			if err != nil {
				v = fields.Value()
			}
			if strings.Contains(strings.ToLower(v), pattern) {
				return true
			}
		}
	}
	if mr := e.MultipartReader(); mr != nil {
		for {
			part, err := mr.NextPart()
			if err != nil {
				return false
			}
			if entityContains(part, pattern, includeHeader, depth+1) {
				return true
			}
		}
	}
	t, _, _ := e.Header.ContentType()
	if t != "" && !strings.HasPrefix(t, "text/") && !strings.HasPrefix(t, "message/") {
		return false
	}
	buf, err := io.ReadAll(io.LimitReader(e.Body, MaxAppend))
	if err != nil && len(buf) == 0 {
		return false
	}
	return bytes.Contains(bytes.ToLower(buf), []byte(pattern))
}

// envelopeOnly reports whether every header criterion of a search (FROM,
// TO, CC, BCC, SUBJECT, HEADER, SENTBEFORE... at any depth) names an
// ENVELOPE field: then the kept ENVELOPE header fields answer it.
func envelopeOnly(c *imap.SearchCriteria) bool {
	for _, h := range c.Header {
		if !message.EnvelopeField(stdtextproto.CanonicalMIMEHeaderKey(h.Key)) {
			return false
		}
	}
	for i := range c.Not {
		if !envelopeOnly(&c.Not[i]) {
			return false
		}
	}
	for i := range c.Or {
		if !envelopeOnly(&c.Or[i][0]) || !envelopeOnly(&c.Or[i][1]) {
			return false
		}
	}
	return true
}
