package message

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"
)

// Draft is an outgoing message.
type Draft struct {
	From        Address
	To, Cc, Bcc []Address // Bcc is for the caller's envelope: never written
	Subject     string
	Text, HTML  string
	InReplyTo   string   // a message id, with or without angle brackets
	References  []string // message ids, with or without angle brackets
	Attachments []DraftAttachment
	Date        time.Time // the current time when zero
	MessageID   string    // generated as <random@domain of From> when empty
}

// DraftAttachment is a file to attach. ContentType defaults to
// application/octet-stream; a charset other than UTF-8 or US-ASCII is
// dropped (go-message's writer refuses them). A nil Content is empty.
type DraftAttachment struct {
	Filename    string
	ContentType string
	Content     io.Reader
}

// Compose writes d as an RFC 5322 message with MIME (RFC 2045) structure:
// a single text/plain or text/html part, multipart/alternative (RFC 2046
// §5.1.4) when both are given, inside multipart/mixed (RFC 2046 §5.1.3) when
// there are attachments. Text is quoted-printable, attachments base64; the
// subject and display names are RFC 2047 encoded words when not ASCII,
// filenames RFC 2231 parameters; lines end in CRLF. Bcc is not written.
//
// A draft that could inject header fields — CR, LF or other control
// characters in the subject, a name or a filename; a malformed address or
// message id — fails with an error wrapping ErrMalformed before anything is
// written. Errors from w or from an attachment's Content leave a partial
// message in w.
func Compose(w io.Writer, d Draft) error {
	h, err := d.header()
	if err != nil {
		return err
	}
	atts := make([]gomail.AttachmentHeader, len(d.Attachments))
	for i, a := range d.Attachments {
		if atts[i], err = attachmentHeader(a); err != nil {
			return err
		}
	}

	if len(atts) == 0 {
		if d.Text != "" && d.HTML != "" {
			iw, err := gomail.CreateInlineWriter(w, h)
			if err != nil {
				return fmt.Errorf("compose: %w", err)
			}
			if err := writeAlternatives(iw, d); err != nil {
				return err
			}
			return iw.Close()
		}
		ct, body := "text/plain", d.Text
		if d.Text == "" && d.HTML != "" {
			ct, body = "text/html", d.HTML
		}
		h.SetContentType(ct, map[string]string{"charset": "utf-8"})
		bw, err := gomail.CreateSingleInlineWriter(w, h)
		if err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if _, err := io.WriteString(bw, body); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		return bw.Close()
	}

	mw, err := gomail.CreateWriter(w, h)
	if err != nil {
		return fmt.Errorf("compose: %w", err)
	}
	switch {
	case d.Text != "" && d.HTML != "":
		iw, err := mw.CreateInline()
		if err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if err := writeAlternatives(iw, d); err != nil {
			return err
		}
		if err := iw.Close(); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
	case d.Text != "" || d.HTML != "":
		ct, body := "text/plain", d.Text
		if d.Text == "" {
			ct, body = "text/html", d.HTML
		}
		var ih gomail.InlineHeader
		ih.SetContentType(ct, map[string]string{"charset": "utf-8"})
		bw, err := mw.CreateSingleInline(ih)
		if err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if _, err := io.WriteString(bw, body); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if err := bw.Close(); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
	}
	for i, a := range d.Attachments {
		aw, err := mw.CreateAttachment(atts[i])
		if err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if a.Content != nil {
			if _, err := io.Copy(aw, a.Content); err != nil {
				return fmt.Errorf("compose: attachment %q: %w", a.Filename, err)
			}
		}
		if err := aw.Close(); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
	}
	return mw.Close()
}

// writeAlternatives writes the text then the HTML (RFC 2046 §5.1.4: the
// preferred alternative last).
func writeAlternatives(iw *gomail.InlineWriter, d Draft) error {
	for _, alt := range []struct{ ct, body string }{{"text/plain", d.Text}, {"text/html", d.HTML}} {
		var ih gomail.InlineHeader
		ih.SetContentType(alt.ct, map[string]string{"charset": "utf-8"})
		pw, err := iw.CreatePart(ih)
		if err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if _, err := io.WriteString(pw, alt.body); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
		if err := pw.Close(); err != nil {
			return fmt.Errorf("compose: %w", err)
		}
	}
	return nil
}

// header validates the draft and builds its header (RFC 5322 §3.6).
func (d Draft) header() (gomail.Header, error) {
	var h gomail.Header
	if d.From.Email == "" {
		return h, fmt.Errorf("%w: no From address", ErrMalformed)
	}
	if err := checkAddresses("From", []Address{d.From}); err != nil {
		return h, err
	}
	for _, f := range []struct {
		name  string
		addrs []Address
	}{{"To", d.To}, {"Cc", d.Cc}, {"Bcc", d.Bcc}} {
		if err := checkAddresses(f.name, f.addrs); err != nil {
			return h, err
		}
	}
	if hasControl(d.Subject) {
		return h, fmt.Errorf("%w: subject contains a control character (CR, LF, …)", ErrMalformed)
	}
	msgID, err := checkMsgID("Message-ID", d.MessageID)
	if err != nil {
		return h, err
	}
	if msgID == "" {
		if msgID, err = newMessageID(d.From.Email); err != nil {
			return h, err
		}
	}
	inReplyTo, err := checkMsgID("In-Reply-To", d.InReplyTo)
	if err != nil {
		return h, err
	}
	var refs []string
	for _, r := range d.References {
		id, err := checkMsgID("References", r)
		if err != nil {
			return h, err
		}
		if id != "" {
			refs = append(refs, id)
		}
	}
	date := d.Date
	if date.IsZero() {
		date = time.Now()
	}

	// go-message inserts new fields at the top: set them in reverse order.
	if len(refs) > 0 {
		h.SetMsgIDList("References", refs)
	}
	if inReplyTo != "" {
		h.SetMsgIDList("In-Reply-To", []string{inReplyTo})
	}
	h.SetMessageID(msgID)
	if d.Subject != "" {
		h.SetSubject(d.Subject) // RFC 2047 encoded words when needed
	}
	setAddresses(&h, "Cc", d.Cc)
	setAddresses(&h, "To", d.To)
	setAddresses(&h, "From", []Address{d.From})
	h.SetDate(date)
	return h, nil
}

func setAddresses(h *gomail.Header, key string, addrs []Address) {
	if len(addrs) == 0 {
		return
	}
	list := make([]*gomail.Address, len(addrs))
	for i, a := range addrs {
		// net/mail quotes the name, or makes it RFC 2047 encoded words.
		list[i] = &mail.Address{Name: a.Name, Address: a.Email}
	}
	h.SetAddressList(key, list)
}

// checkAddresses rejects names with control characters and addresses that
// are not local@domain without blanks, controls or angle brackets.
func checkAddresses(field string, addrs []Address) error {
	for _, a := range addrs {
		if hasControl(a.Name) {
			return fmt.Errorf("%w: %s name contains a control character (CR, LF, …)", ErrMalformed, field)
		}
		at := strings.LastIndexByte(a.Email, '@')
		if at <= 0 || at == len(a.Email)-1 || hasControl(a.Email) || strings.ContainsAny(a.Email, " \t<>,;") {
			return fmt.Errorf("%w: %s address %q", ErrMalformed, field, a.Email)
		}
	}
	return nil
}

// checkMsgID validates a message id (RFC 5322 §3.6.4) given with or without
// its angle brackets and returns it without them.
func checkMsgID(field, id string) (string, error) {
	id = strings.TrimSpace(id)
	if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") {
		id = id[1 : len(id)-1]
	}
	if id == "" {
		return "", nil
	}
	at := strings.LastIndexByte(id, '@')
	if at <= 0 || at == len(id)-1 || hasControl(id) || strings.ContainsAny(id, " \t<>") {
		return "", fmt.Errorf("%w: %s %q", ErrMalformed, field, id)
	}
	return id, nil
}

// newMessageID makes a unique id on the From address's domain.
func newMessageID(from string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("compose: message id: %w", err)
	}
	domain := strings.ToLower(from[strings.LastIndexByte(from, '@')+1:])
	return hex.EncodeToString(b[:]) + "@" + domain, nil
}

// attachmentHeader builds an attachment part's header: the media type with
// its name (RFC 2047, for old readers), the disposition with the filename
// (RFC 2183 §2.3, RFC 2231 when not ASCII), base64.
func attachmentHeader(a DraftAttachment) (gomail.AttachmentHeader, error) {
	var h gomail.AttachmentHeader
	if hasControl(a.Filename) {
		return h, fmt.Errorf("%w: attachment filename contains a control character (CR, LF, …)", ErrMalformed)
	}
	ct := strings.TrimSpace(a.ContentType)
	params := map[string]string{}
	if ct == "" {
		ct = "application/octet-stream"
	} else {
		var err error
		if ct, params, err = mime.ParseMediaType(ct); err != nil {
			return h, fmt.Errorf("%w: attachment %q content type: %v", ErrMalformed, a.Filename, err)
		}
		if strings.HasPrefix(ct, "multipart/") {
			return h, fmt.Errorf("%w: attachment %q is multipart", ErrMalformed, a.Filename)
		}
		switch strings.ToLower(params["charset"]) {
		case "", "utf-8", "us-ascii":
		default:
			delete(params, "charset")
		}
		delete(params, "boundary")
	}
	disp := "attachment"
	if a.Filename != "" {
		params["name"] = mime.QEncoding.Encode("utf-8", a.Filename)
		disp += "; " + formatParam2231("filename", a.Filename)
	}
	v := mime.FormatMediaType(ct, params)
	if v == "" {
		return h, fmt.Errorf("%w: attachment %q content type %q", ErrMalformed, a.Filename, a.ContentType)
	}
	h.Set("Content-Type", v)
	h.Set("Content-Disposition", disp)
	h.Set("Content-Transfer-Encoding", "base64")
	return h, nil
}

// formatParam2231 formats a parameter for a structured header field: a
// quoted string when the value is printable ASCII, else RFC 2231 UTF-8
// percent-encoding (§4), in continuations of at most 60 characters (§3) so
// that the field folds at their separating blanks.
func formatParam2231(key, val string) string {
	ascii := true
	for i := 0; i < len(val); i++ {
		if val[i] < 0x20 || val[i] >= 0x7f {
			ascii = false
			break
		}
	}
	if ascii {
		return key + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(val) + `"`
	}
	const attrChars = "!#$&+-.^_`|~" // RFC 2231 §7 attribute-char beyond ALPHA / DIGIT
	var segs []string
	var b strings.Builder
	b.WriteString("utf-8''")
	for i := 0; i < len(val); i++ {
		c := val[i]
		enc := string(c)
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(attrChars, c) >= 0) {
			enc = fmt.Sprintf("%%%02X", c)
		}
		if b.Len()+len(enc) > 60 {
			segs = append(segs, b.String())
			b.Reset()
		}
		b.WriteString(enc)
	}
	segs = append(segs, b.String())
	if len(segs) == 1 {
		return key + "*=" + segs[0]
	}
	parts := make([]string, len(segs))
	for i, s := range segs {
		parts[i] = fmt.Sprintf("%s*%d*=%s", key, i, s)
	}
	return strings.Join(parts, "; ")
}

// hasControl reports C0 controls other than tab, and DEL: CR and LF would
// end a header field and start another.
func hasControl(s string) bool { return strings.IndexFunc(s, isControl) >= 0 }
