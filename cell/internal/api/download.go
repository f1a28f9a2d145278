package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// ServeDownload serves GET /v1/messages/{id}/raw and
// /v1/messages/{id}/attachments/{part} with the access token; Range
// requests work (large files in ranges). The content is always served as
// an attachment with nosniff and a sandboxing CSP, so a hostile attachment
// cannot run in the API's origin.
func (m *MailServer) ServeDownload(w http.ResponseWriter, r *http.Request) {
	epoch := routing.EpochOf(r.Header)
	c, err := m.session(r.Context(), bearer(r.Header), epoch, 1)
	if err != nil {
		m.httpError(w, r, err)
		return
	}
	id := r.PathValue("id")
	msg, atts, err := m.store.Message(r.Context(), c.account.ID, id)
	if err != nil {
		m.httpError(w, r, err)
		return
	}
	name, ctype, etag := "message-"+msg.ID+".eml", "message/rfc822", "m-"+msg.ID
	var blob blobstore.Blob
	if part := r.PathValue("part"); part != "" {
		i := slices.IndexFunc(atts, func(a mail.AttachmentMeta) bool { return a.PartID == part })
		if i < 0 {
			m.httpError(w, r, fmt.Errorf("%w: attachment", mail.ErrNotFound))
			return
		}
		a := atts[i]
		name, ctype, etag = a.Filename, a.ContentType, etag+"-"+part
		if a.BlobRef != "" { // stored decoded, before attachments were read from the message
			blob, err = m.blobs.Open(r.Context(), a.BlobRef)
		} else {
			blob = &partBlob{open: func() (io.ReadCloser, error) { return m.openPart(r.Context(), msg, part) }, size: a.Size, mod: msg.ReceivedAt}
		}
	} else {
		blob, err = blobstore.OpenMessage(r.Context(), m.blobs, msg.BlobRef, msg.Prefix)
	}
	if err != nil {
		m.httpError(w, r, err)
		return
	}
	defer blob.Close()
	if name == "" {
		name = "attachment"
	}
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(name)}))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "sandbox; default-src 'none'")
	w.Header().Set("Cache-Control", "private, max-age=3600")
	w.Header().Set("ETag", `"`+etag+`"`)
	size, err := blob.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = blob.Seek(0, io.SeekStart)
	}
	if err != nil {
		m.httpError(w, r, fmt.Errorf("download: %w", err))
		return
	}
	if !limitRanges(w, r, size) {
		return
	}
	http.ServeContent(w, r, "", blob.ModTime(), blob)
}

// openPart opens the decoded content of one part of a stored message.
func (m *MailServer) openPart(ctx context.Context, msg mail.Message, part string) (io.ReadCloser, error) {
	b, err := blobstore.OpenMessage(ctx, m.blobs, msg.BlobRef, msg.Prefix)
	if err != nil {
		return nil, err
	}
	_, body, err := message.OpenPart(b, part, m.readLimits())
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: attachment %s: %v", mail.ErrNotFound, part, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{body, b}, nil
}

// partBlob is an attachment decoded from its message as it is read: it
// seeks (for Range requests) by reading on, or from the start again.
type partBlob struct {
	open func() (io.ReadCloser, error)
	size int64
	mod  time.Time
	r    io.ReadCloser
	pos  int64 // where r is
	want int64 // where the next Read starts
}

func (p *partBlob) Size() int64        { return p.size }
func (p *partBlob) ModTime() time.Time { return p.mod }

func (p *partBlob) Close() error {
	if p.r == nil {
		return nil
	}
	return p.r.Close()
}

func (p *partBlob) Seek(offset int64, whence int) (int64, error) {
	abs, err := blobstore.SeekOffset(p.want, p.size, offset, whence)
	if err != nil {
		return 0, fmt.Errorf("attachment: %w", err)
	}
	p.want = abs
	return abs, nil
}

func (p *partBlob) Read(b []byte) (int, error) {
	if p.r == nil || p.want < p.pos {
		if p.r != nil {
			p.r.Close()
		}
		r, err := p.open()
		if err != nil {
			return 0, err
		}
		p.r, p.pos = r, 0
	}
	if p.want > p.pos {
		n, err := io.CopyN(io.Discard, p.r, p.want-p.pos)
		p.pos += n
		if err != nil {
			return 0, err
		}
	}
	n, err := p.r.Read(b)
	p.pos += int64(n)
	p.want = p.pos
	return n, err
}

// MaxRanges is the most byte ranges one download request may ask for; a
// request for more is served whole (RFC 9110 §14.2 lets a server ignore
// Range), so that many small ranges cannot turn a small file into a large
// multipart answer.
const MaxRanges = 8

// limitRanges prepares r's Range header for http.ServeContent (RFC 9110
// §14.1.2): more than MaxRanges ranges, or overlapping ones, make it drop
// the header (the whole content, 200); a suffix range of length 0 is
// unsatisfiable and is left out, and when nothing is left it answers 416
// with "Content-Range: bytes */size" itself and returns false.
func limitRanges(w http.ResponseWriter, r *http.Request, size int64) bool {
	h := r.Header.Get("Range")
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return true // not a byte range, or none: ServeContent's answer
	}
	var keep []string
	type span struct{ start, end int64 } // end exclusive; -1: to the end
	var spans []span
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		first, last, ok := strings.Cut(part, "-")
		if !ok {
			return true // malformed: ServeContent answers it
		}
		if first == "" {
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil {
				return true
			}
			if n == 0 {
				continue // suffix-length 0: unsatisfiable
			}
			spans = append(spans, span{max(size-n, 0), size})
		} else {
			a, err := strconv.ParseInt(first, 10, 64)
			if err != nil {
				return true
			}
			b := size
			if last != "" {
				if b, err = strconv.ParseInt(last, 10, 64); err != nil {
					return true
				}
				b = min(b+1, size)
			}
			spans = append(spans, span{a, b})
		}
		keep = append(keep, part)
	}
	if len(keep) == 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return false
	}
	// Overlaps are looked for among at most MaxRanges spans: the check is
	// quadratic, and more spans are refused anyway.
	overlap := false
	for i := 0; i < len(spans) && len(spans) <= MaxRanges; i++ {
		for j := range i {
			if spans[i].start < spans[j].end && spans[j].start < spans[i].end {
				overlap = true
			}
		}
	}
	if len(keep) > MaxRanges || overlap {
		r.Header.Del("Range")
		return true
	}
	r.Header.Set("Range", "bytes="+strings.Join(keep, ","))
	return true
}

// httpError answers a download with the status the Connect code maps to.
func (m *MailServer) httpError(w http.ResponseWriter, r *http.Request, err error) {
	cerr := m.srv.toConnect(r.URL.Path, err)
	var ce *connect.Error
	code := connect.CodeInternal
	if errors.As(cerr, &ce) {
		code = ce.Code()
		for k, v := range ce.Meta() {
			w.Header()[k] = v
		}
	}
	status := map[connect.Code]int{
		connect.CodeNotFound: http.StatusNotFound, connect.CodeUnauthenticated: http.StatusUnauthorized,
		connect.CodeFailedPrecondition: http.StatusPreconditionFailed, connect.CodeUnavailable: http.StatusServiceUnavailable,
		connect.CodeInvalidArgument: http.StatusBadRequest,
	}[code]
	if status == 0 {
		status = http.StatusInternalServerError
	}
	http.Error(w, strings.ReplaceAll(code.String(), "_", " "), status)
}
