package imapserver

// (cellmail patch) COMPRESS=DEFLATE (RFC 4978), which upstream's server
// lacks: after the tagged OK, both directions are a raw DEFLATE stream
// (RFC 1951), flushed at the end of every response the server writes.

import (
	"bytes"
	"io"
	"strings"

	"github.com/klauspost/compress/flate"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/internal/imapwire"
	"github.com/emersion/go-imap/v2/internal/inflate"
)

// handleCompress answers COMPRESS DEFLATE (RFC 4978 §3).
func (c *Conn) handleCompress(tag string, dec *imapwire.Decoder) error {
	var mech string
	if !dec.ExpectSP() || !dec.ExpectAtom(&mech) || !dec.ExpectCRLF() {
		return dec.Err()
	}
	if err := c.checkState(imap.ConnStateAuthenticated); err != nil {
		return err
	}
	switch {
	case !c.server.options.caps().Has(imap.CapCompressDeflate):
		return newClientBugError("COMPRESS is not supported")
	case !strings.EqualFold(mech, "DEFLATE"):
		return newClientBugError("Unknown compression mechanism")
	case c.compressed:
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCompressionActive,
			Text: "DEFLATE is already active"}
	}
	n := c.server.compressed.Add(1)
	if max := c.server.options.MaxCompressed; max > 0 && n > int64(max) {
		c.server.compressed.Add(-1)
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit,
			Text: "Too many compressed sessions now; go on without"}
	}
	fw, err := flate.NewWriter(c.conn, flate.BestSpeed)
	if err != nil {
		c.server.compressed.Add(-1)
		return err
	}

	// Nothing uncompressed may be written past the tagged OK: hold the
	// encoder until the streams are swapped.
	enc := newResponseEncoder(c)
	defer enc.end()
	err = writeStatusResp(enc.Encoder, tag, &imap.StatusResponse{
		Type: imap.StatusResponseTypeOK,
		Text: "DEFLATE active",
	})
	if err != nil {
		c.server.compressed.Add(-1)
		return err
	}
	// The client compresses from the end of its command line: what is
	// already buffered is compressed.
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, c.br, int64(c.br.Buffered())); err != nil {
		panic(err) // unreachable
	}
	var in io.Reader = c.conn
	if buf.Len() > 0 {
		in = io.MultiReader(&buf, c.conn)
	}
	rw := c.server.options.wrapReadWriter(struct {
		io.Reader
		io.Writer
	}{inflate.NewReader(in), flushWriter{fw}})
	c.mutex.Lock()
	c.compressed = true
	c.mutex.Unlock()
	c.br.Reset(rw)
	c.bw.Reset(rw)
	return nil
}

// releaseCompress gives back the connection's place among the compressed
// ones when it ends.
func (c *Conn) releaseCompress() {
	c.mutex.Lock()
	on := c.compressed
	c.compressed = false
	c.mutex.Unlock()
	if on {
		c.server.compressed.Add(-1)
	}
}

// flushWriter compresses each write and flushes it (a sync flush), so that
// every response the server sends reaches the client whole.
type flushWriter struct{ w *flate.Writer }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.w.Flush()
}
