package message

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strconv"
	"strings"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // legacy charsets for bodies and encoded words
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Parse reads a message and returns its header fields, text and sanitised
// HTML bodies and attachment list. It reads r to the end.
//
// Exceeding lim fails with an error wrapping ErrLimit. A header section that
// cannot be read fails with one wrapping ErrMalformed. A broken or truncated
// body is not an error: Parse returns what it could read.
func Parse(r io.Reader, lim Limits) (*Parsed, error) {
	lim = lim.withDefaults()
	size := newSizeGuard(r, lim.MaxSize)
	root, err := readRoot(size, lim)
	if err != nil {
		return nil, err
	}
	p := &Parsed{}
	p.readHeader(root.header)

	var haveText, haveHTML bool
	w := &walker{lim: lim, size: size}
	w.visit = func(e *entity) (bool, error) {
		if e.isMultipart() {
			return true, nil
		}
		a := e.attachment()
		body := a.Disposition != "attachment" && !(a.Disposition == "" && a.Filename != "")
		switch {
		case body && e.mediaType == "text/plain" && !haveText:
			haveText = true
			text, err := w.readText(e)
			p.Text = strings.ReplaceAll(strings.ReplaceAll(text, "\r\n", "\n"), "\r", "\n")
			return false, err
		case body && e.mediaType == "text/html" && !haveHTML:
			haveHTML = true
			html, err := w.readText(e)
			p.HTML = sanitizeHTML(html)
			return false, err
		}
		n, err := io.Copy(io.Discard, decodeTransfer(e.header.Get("Content-Transfer-Encoding"), e.body))
		if err != nil && size.tripped {
			return false, size.err
		}
		a.Size = n
		p.Attachments = append(p.Attachments, a)
		return false, nil
	}
	if err := w.walk(root); err != nil {
		return nil, err
	}
	// Read to the end, so that a message over MaxSize is reported as such
	// whatever its structure.
	if _, err := io.Copy(io.Discard, root.body); err != nil && size.tripped {
		return nil, size.err
	}

	// The text's snippet, or the HTML's when the text part is missing (or
	// blank, as some senders make it).
	p.Snippet = snippet(p.Text)
	if p.Snippet == "" && p.HTML != "" {
		p.Snippet = snippet(htmlText(p.HTML, maxSnippetRune+1))
	}
	for _, a := range p.Attachments {
		if a.ContentID == "" || a.Disposition == "attachment" {
			p.HasAttachments = true
		}
	}
	return p, nil
}

// OpenPart streams the content of the part numbered partID (RFC 3501
// §6.4.5), its transfer encoding removed but its charset untouched, for
// download. The returned Attachment has Size -1. The reader is valid while r
// is; its errors wrap ErrLimit or ErrMalformed. A part number that names no
// part (including parts inside a message/rfc822 attachment, which are not
// walked) is ErrNoSuchPart.
func OpenPart(r io.Reader, partID string, lim Limits) (Attachment, io.Reader, error) {
	if !validPartID(partID) {
		return Attachment{}, nil, fmt.Errorf("%w: %q", ErrNoSuchPart, partID)
	}
	lim = lim.withDefaults()
	size := newSizeGuard(r, lim.MaxSize)
	root, err := readRoot(size, lim)
	if err != nil {
		return Attachment{}, nil, err
	}
	var found *entity
	w := &walker{lim: lim, size: size}
	w.visit = func(e *entity) (bool, error) {
		if e.id == partID {
			found = e
			return false, errStop
		}
		return e.id == "" || strings.HasPrefix(partID, e.id+"."), nil
	}
	if err := w.walk(root); err != nil && err != errStop {
		return Attachment{}, nil, err
	}
	if found == nil {
		return Attachment{}, nil, fmt.Errorf("%w: %q", ErrNoSuchPart, partID)
	}
	body := found.body
	if !found.isMultipart() {
		body = decodeTransfer(found.header.Get("Content-Transfer-Encoding"), body)
	}
	return found.attachment(), &partReader{r: body, size: size}, nil
}

// validPartID accepts RFC 3501 section-part numbers: nz-number *("." nz-number).
func validPartID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, n := range strings.Split(id, ".") {
		if n == "" || len(n) > 4 || n[0] == '0' {
			return false
		}
		for _, c := range n {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// readRoot reads the message header section and returns the root entity.
func readRoot(size *sizeGuard, lim Limits) (*entity, error) {
	br := bufio.NewReader(size)
	hdr, rest, err := readHeaderBlock(br, lim.MaxHeaderBytes)
	if err != nil {
		if size.tripped {
			return nil, size.err
		}
		if errors.Is(err, ErrLimit) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: reading header: %v", ErrMalformed, err)
	}
	if len(hdr) == 0 && len(rest) == 0 {
		if _, err := br.Peek(1); err != nil {
			return nil, fmt.Errorf("%w: empty message", ErrMalformed)
		}
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(hdr)))
	if err != nil {
		return nil, fmt.Errorf("%w: reading header: %v", ErrMalformed, err)
	}
	var body io.Reader = br
	if len(rest) > 0 {
		body = io.MultiReader(bytes.NewReader(rest), br)
	}
	e := newEntity("", h, body, "text/plain")
	if !e.isMultipart() {
		e.id = "1" // RFC 3501 §6.4.5: a non-multipart message has part 1
	}
	return e, nil
}

// entity is one node of the MIME tree as a walk meets it.
type entity struct {
	id          string // IMAP section number; "" for a multipart root
	header      textproto.Header
	body        io.Reader // raw: still transfer-encoded
	mediaType   string    // lower-case type/subtype
	params      map[string]string
	disposition string // "", "inline" or "attachment"
	dispParams  map[string]string
}

// newEntity interprets a part's header. defaultType applies without a
// Content-Type: text/plain (RFC 2045 §5.2), or message/rfc822 in a
// multipart/digest (RFC 2046 §5.1.5).
func newEntity(id string, h textproto.Header, body io.Reader, defaultType string) *entity {
	e := &entity{id: id, header: h, body: body}
	ct := h.Get("Content-Type")
	e.mediaType, e.params = parseParams(ct)
	switch {
	case strings.TrimSpace(ct) == "":
		e.mediaType = defaultType
	case !validMediaType(e.mediaType):
		// RFC 2045 §5.2: a syntactically invalid Content-Type is taken as
		// the default.
		e.mediaType, e.params = "text/plain", map[string]string{}
	case strings.HasPrefix(e.mediaType, "multipart/") && !validBoundary(e.params["boundary"]):
		// RFC 2046 §5.1.1: the boundary parameter is required.
		e.mediaType, e.params = "text/plain", map[string]string{}
	}
	if v := h.Get("Content-Disposition"); strings.TrimSpace(v) != "" {
		e.disposition, e.dispParams = parseParams(v)
		switch e.disposition {
		case "inline", "attachment":
		default:
			// RFC 2183 §2.8: unrecognised types are treated as attachment.
			e.disposition = "attachment"
		}
	}
	return e
}

func (e *entity) isMultipart() bool { return strings.HasPrefix(e.mediaType, "multipart/") }

// attachment describes the entity, its Size unknown.
func (e *entity) attachment() Attachment {
	name, ok := e.dispParams["filename"] // RFC 2183 §2.3
	if !ok {
		name = e.params["name"] // RFC 2046 §4.5.1 (deprecated there, common)
	}
	ct := e.mediaType
	if cs := e.params["charset"]; cs != "" && strings.HasPrefix(ct, "text/") {
		if f := mime.FormatMediaType(ct, map[string]string{"charset": strings.ToLower(cs)}); f != "" {
			ct = f
		}
	}
	cid := strings.TrimSpace(e.header.Get("Content-Id"))
	cid = strings.TrimSuffix(strings.TrimPrefix(cid, "<"), ">")
	return Attachment{
		PartID:      e.id,
		Filename:    cleanFilename(name),
		ContentType: ct,
		Size:        -1,
		Disposition: e.disposition,
		ContentID:   cleanText(strings.TrimSpace(cid)),
	}
}

// validMediaType checks type "/" subtype (RFC 2045 §5.1).
func validMediaType(t string) bool {
	typ, sub, ok := strings.Cut(t, "/")
	return ok && isToken(typ) && isToken(sub)
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// validBoundary checks a boundary (RFC 2046 §5.1.1 allows 1 to 70
// characters; we allow up to 200 of anything but line breaks).
func validBoundary(b string) bool {
	return b != "" && len(b) <= 200 && !strings.ContainsAny(b, "\r\n")
}

// walker visits a MIME tree depth first, numbering parts and enforcing the
// depth, part count and header size limits.
type walker struct {
	lim   Limits
	size  *sizeGuard
	parts int
	// visit is called for each entity in order. For a multipart it says
	// whether to walk its children; a non-multipart's body may be read.
	visit func(e *entity) (descend bool, err error)
}

// errStop ends a walk early (OpenPart found its part).
var errStop = errors.New("stop walk")

// walk visits e and, when asked, its children. It returns only limit
// errors, errStop and errors from visit: a malformed or truncated multipart
// ends the walk of that multipart, keeping what was visited.
func (w *walker) walk(e *entity) error {
	descend, err := w.visit(e)
	if err != nil || !descend || !e.isMultipart() {
		return err
	}
	return w.walkChildren(e, 1)
}

func (w *walker) walkChildren(e *entity, depth int) error {
	if depth > w.lim.MaxDepth {
		return fmt.Errorf("%w: MIME nesting deeper than %d", ErrLimit, w.lim.MaxDepth)
	}
	boundary := e.params["boundary"]
	body, found, err := skipPreamble(e.body, boundary)
	if err != nil || !found {
		if w.size.tripped {
			return w.size.err
		}
		return nil // no part at all: nothing to show
	}
	// go-message reads a part's header inside NextPart without a bound:
	// the guard keeps it to the header budget plus the delimiter line and
	// the reader's 4 KiB read-ahead.
	g := &headerGuard{r: body, budget: int64(w.lim.MaxHeaderBytes) + 8<<10}
	mr := textproto.NewMultipartReader(g, boundary)
	childType := "text/plain"
	if e.mediaType == "multipart/digest" {
		childType = "message/rfc822"
	}
	for i := 1; ; i++ {
		id := strconv.Itoa(i)
		if e.id != "" {
			id = e.id + "." + id
		}
		g.arm()
		p, err := mr.NextPart()
		g.disarm()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if w.size.tripped {
				return w.size.err
			}
			if g.tripped {
				return fmt.Errorf("%w: header block of part %s over %d bytes", ErrLimit, id, w.lim.MaxHeaderBytes)
			}
			return nil
		}
		w.parts++
		if w.parts > w.lim.MaxParts {
			return fmt.Errorf("%w: more than %d parts", ErrLimit, w.lim.MaxParts)
		}
		if n := headerSize(p.Header); n > w.lim.MaxHeaderBytes {
			return fmt.Errorf("%w: header block of part %s over %d bytes", ErrLimit, id, w.lim.MaxHeaderBytes)
		}
		child := newEntity(id, p.Header, p, childType)
		descend, err := w.visit(child)
		if err != nil {
			return err
		}
		if descend && child.isMultipart() {
			if err := w.walkChildren(child, depth+1); err != nil {
				return err
			}
		}
		// Skip what the visit left (an epilogue, an undecodable tail), so
		// that NextPart only reads the next delimiter and header.
		if _, err := io.Copy(io.Discard, p); err != nil {
			if w.size.tripped {
				return w.size.err
			}
			return nil
		}
	}
}

// skipPreamble discards a multipart body's preamble (RFC 2046 §5.1.1) up to
// the first line starting with the dash-boundary, and returns the body from
// that line on. Only one line at a time is held, at most 4 KiB.
func skipPreamble(r io.Reader, boundary string) (io.Reader, bool, error) {
	br := bufio.NewReaderSize(r, 4096)
	dash := []byte("--" + boundary)
	lineStart := true
	for {
		frag, err := br.ReadSlice('\n')
		if lineStart && err != bufio.ErrBufferFull && isDelimiterLine(frag, dash) {
			first := bytes.Clone(frag)
			return io.MultiReader(bytes.NewReader(first), br), true, nil
		}
		if err == bufio.ErrBufferFull {
			lineStart = false
			continue
		}
		if err == io.EOF {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		lineStart = true
	}
}

// isDelimiterLine reports a dash-boundary line (RFC 2046 §5.1.1): the
// dash-boundary, "--" for the close delimiter, then only blanks up to the end
// of the line. "--b1" does not match a "--b10" line.
func isDelimiterLine(line, dash []byte) bool {
	rest, ok := bytes.CutPrefix(line, dash)
	if !ok {
		return false
	}
	rest, _ = bytes.CutPrefix(rest, []byte("--"))
	return len(bytes.TrimRight(rest, " \t\r\n")) == 0
}

// headerSize is the size of a header section as read: its fields and the
// empty line ending it.
func headerSize(h textproto.Header) int {
	n := 2
	for f := h.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil {
			n += len(f.Key()) + len(f.Value()) + 4
			continue
		}
		n += len(raw)
	}
	return n
}

// readText reads a text body, decoded to UTF-8, at most maxTextBytes.
func (w *walker) readText(e *entity) (string, error) {
	r := decodeCharset(e.params["charset"], decodeTransfer(e.header.Get("Content-Transfer-Encoding"), e.body))
	b, err := io.ReadAll(io.LimitReader(r, maxTextBytes))
	if err != nil && w.size.tripped {
		return "", w.size.err
	}
	if len(b) == maxTextBytes {
		// Cut inside a rune: drop the incomplete tail.
		for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
			if r, n := utf8.DecodeLastRune(b); r != utf8.RuneError || n != 1 {
				break
			}
			b = b[:len(b)-1]
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), nil
}

// readHeader fills the header-derived fields (RFC 5322 §3.6).
func (p *Parsed) readHeader(h textproto.Header) {
	mh := gomail.Header{Header: gomessage.Header{Header: h}}

	subject, _ := mh.Subject() // the raw value when it cannot be decoded
	p.Subject = strings.TrimSpace(cleanText(subject))
	p.From = addressList(mh, "From")
	p.To = addressList(mh, "To")
	p.Cc = addressList(mh, "Cc")
	p.ReplyTo = addressList(mh, "Reply-To")
	if d, err := mh.Date(); err == nil {
		p.Date = d
	}
	// Message ids are read by looseMsgIDs, not go-message, whose msg-id
	// parser is quadratic in the length of a comment.
	if ids := looseMsgIDs(mh.Get("Message-Id")); len(ids) > 0 {
		p.MessageID = ids[0]
	}
	if ids := looseMsgIDs(mh.Get("In-Reply-To")); len(ids) > 0 {
		p.InReplyTo = ids[0]
	}
	p.References = looseMsgIDs(mh.Get("References"))
	if n := len(p.References); n > maxReferences {
		// Keep the thread's root and its latest ancestors (as RFC 5537
		// §3.4.4 trims them).
		p.References = append(p.References[:1], p.References[n-maxReferences+1:]...)
	}

	for f := mh.Fields(); f.Next() && len(p.Headers) < maxHeaders; {
		key := f.Key()
		if raw, err := f.Raw(); err == nil {
			if i := bytes.IndexByte(raw, ':'); i > 0 {
				key = string(bytes.TrimRight(raw[:i], " \t"))
			}
		}
		v, _ := f.Text()
		p.Headers = append(p.Headers, Header{Key: key, Value: cleanText(v)})
	}
}

// addressList parses an address-list field (RFC 5322 §3.4); when the
// field does not parse as a whole, each comma-separated piece is tried alone
// and, failing that, taken apart loosely.
func addressList(mh gomail.Header, key string) []Address {
	v := mh.Get(key)
	if strings.TrimSpace(v) == "" {
		return nil
	}
	list, err := gomail.ParseAddressList(v)
	if err != nil {
		list = list[:0]
		for _, piece := range splitAddressList(v) {
			if a, err := gomail.ParseAddress(piece); err == nil {
				list = append(list, a)
			} else if a := looseAddress(piece); a != nil {
				list = append(list, a)
			}
		}
	}
	out := make([]Address, 0, len(list))
	for _, a := range list {
		out = append(out, Address{Name: strings.TrimSpace(cleanText(a.Name)), Email: strings.TrimSpace(cleanText(a.Address))})
	}
	return out
}

// splitAddressList splits at commas outside quoted strings, comments and
// angle brackets.
func splitAddressList(v string) []string {
	var out []string
	depth, quoted, angle, start := 0, false, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && (quoted || depth > 0):
			i++
		case c == '"' && depth == 0:
			quoted = !quoted
		case quoted:
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		case c == '<':
			angle = true
		case c == '>':
			angle = false
		case c == ',' && !angle:
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// looseAddress takes "Name <addr>" or a bare addr apart without judging it.
func looseAddress(s string) *mail.Address {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			email := strings.TrimSpace(s[i+1 : i+j])
			if email == "" {
				return nil
			}
			name := strings.Trim(strings.TrimSpace(s[:i]), `"`)
			return &mail.Address{Name: decodeWords(name), Address: email}
		}
	}
	if strings.Contains(s, "@") && !strings.ContainsAny(s, " \t<>") {
		return &mail.Address{Address: s}
	}
	return nil
}

// looseMsgIDs reads a msg-id list (RFC 5322 §3.6.4) leniently, in linear
// time: the <…> tokens of the field, or else its words with an @.
func looseMsgIDs(v string) []string {
	var ids []string
	for rest := v; ; {
		i := strings.IndexByte(rest, '<')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i+1:], '>')
		if j < 0 {
			break
		}
		if id := strings.TrimSpace(rest[i+1 : i+1+j]); id != "" && !strings.ContainsAny(id, " \t<") {
			ids = append(ids, cleanText(id))
		}
		rest = rest[i+2+j:]
	}
	if len(ids) == 0 {
		for _, f := range strings.Fields(v) {
			if f = strings.Trim(f, "<>,;"); strings.Contains(f, "@") {
				ids = append(ids, cleanText(f))
			}
		}
	}
	return ids
}

// snippet collapses whitespace and keeps at most maxSnippetRune runes.
func snippet(s string) string {
	var b strings.Builder
	n := 0
	space := false
	for _, r := range s {
		if n >= maxSnippetRune {
			break
		}
		switch {
		case isInvisible(r):
			continue
		case isSpaceRune(r):
			space = b.Len() > 0
			continue
		}
		if space {
			if n+1 >= maxSnippetRune {
				break
			}
			b.WriteByte(' ')
			n++
			space = false
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

func isSpaceRune(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0x85, 0xa0, 0x2028, 0x2029, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a || isControl(r)
}

// isInvisible reports format characters that pad marketing preheaders.
func isInvisible(r rune) bool {
	switch r {
	case 0xad, 0x34f, 0x200b, 0x200c, 0x200d, 0x2060, 0xfeff:
		return true
	}
	return false
}

// CheckLimits walks the MIME structure of a message as Parse does — part
// count, nesting depth, header sizes, total size — without decoding or
// keeping any body, so that mail Parse would refuse is refused when it is
// offered (before an SMTP 250 or an IMAP APPEND's OK) rather than stored
// and then unreadable. It returns an error wrapping ErrLimit, or nil: a
// malformed message is not its business (Parse shows what it can).
func CheckLimits(r io.Reader, lim Limits) error {
	lim = lim.withDefaults()
	size := newSizeGuard(r, lim.MaxSize)
	root, err := readRoot(size, lim)
	if err != nil {
		if errors.Is(err, ErrLimit) {
			return err
		}
		return nil
	}
	w := &walker{lim: lim, size: size}
	w.visit = func(e *entity) (bool, error) { return true, nil } // leaf bodies are skipped by the walk
	if err := w.walk(root); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, root.body); err != nil && size.tripped {
		return size.err
	}
	return nil
}

// ParseHeader reads only the message's header section: the Parsed fields
// that come from it (addresses, subject, date, ids, Headers), no body. It
// is what a reader can still be shown of a message Parse refuses.
func ParseHeader(r io.Reader, lim Limits) (*Parsed, error) {
	lim = lim.withDefaults()
	root, err := readRoot(newSizeGuard(r, lim.MaxSize), lim)
	if err != nil {
		return nil, err
	}
	p := &Parsed{}
	p.readHeader(root.header)
	return p, nil
}
