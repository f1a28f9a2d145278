package blobstore

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Opener opens blobs (Store.Open, Tiered.Open).
type Opener interface {
	Open(ctx context.Context, ref string) (Blob, error)
}

// OpenMessage opens a stored message: prefix — the header fields the cell
// added when it filed the message (trace, Authentication-Results, spam
// verdict), kept with the message's row — followed by the blob ref, the
// message as it was accepted. The message's bytes are stored once
// however many mailboxes hold it (each with its own prefix). The result
// reads and seeks over both as one content.
func OpenMessage(ctx context.Context, o Opener, ref string, prefix []byte) (Blob, error) {
	b, err := o.Open(ctx, ref)
	if err != nil || len(prefix) == 0 {
		return b, err
	}
	return &prefixed{prefix: prefix, body: b}, nil
}

// prefixed is prefix then body, read and seeked as one.
type prefixed struct {
	prefix []byte
	body   Blob
	off    int64
}

func (p *prefixed) Size() int64        { return int64(len(p.prefix)) + p.body.Size() }
func (p *prefixed) ModTime() time.Time { return p.body.ModTime() }
func (p *prefixed) Close() error       { return p.body.Close() }

func (p *prefixed) Read(b []byte) (int, error) {
	n := 0
	if pl := int64(len(p.prefix)); p.off < pl {
		n = copy(b, p.prefix[p.off:])
		p.off += int64(n)
		if n == len(b) {
			return n, nil
		}
		if _, err := p.body.Seek(0, io.SeekStart); err != nil {
			return n, fmt.Errorf("message blob: %w", err)
		}
	}
	m, err := p.body.Read(b[n:])
	p.off += int64(m)
	return n + m, err
}

func (p *prefixed) Seek(offset int64, whence int) (int64, error) {
	abs, err := SeekOffset(p.off, p.Size(), offset, whence)
	if err != nil {
		return 0, err
	}
	if _, err := p.body.Seek(max(abs-int64(len(p.prefix)), 0), io.SeekStart); err != nil {
		return 0, err
	}
	p.off = abs
	return abs, nil
}
