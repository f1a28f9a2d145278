// Package clamd is a client of ClamAV's daemon: the message is streamed
// with the INSTREAM command (clamd(8): "zINSTREAM\0", then chunks each
// prefixed with its length as a 4-byte big-endian integer, ended by a
// zero-length chunk) and clamd answers "stream: OK" or
// "stream: <signature> FOUND". clamd decodes MIME itself, so the raw
// message is what is scanned.
package clamd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Client talks to one clamd.
type Client struct {
	// Addr is host:port of clamd's TCPSocket, or a path of its LocalSocket.
	Addr string
	// Timeout bounds one scan (default 30 s).
	Timeout time.Duration
}

// Verdict is a scan's result.
type Verdict struct {
	Infected  bool
	Signature string
}

const chunk = 64 << 10

// Scan streams r to clamd.
func (c *Client) Scan(ctx context.Context, r io.Reader) (Verdict, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	network := "tcp"
	if strings.HasPrefix(c.Addr, "/") {
		network = "unix"
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, c.Addr)
	if err != nil {
		return Verdict{}, fmt.Errorf("clamd: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	w := bufio.NewWriterSize(conn, chunk+4)
	if _, err := w.WriteString("zINSTREAM\x00"); err != nil {
		return Verdict{}, fmt.Errorf("clamd: %w", err)
	}
	buf := make([]byte, chunk)
	var size [4]byte
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			binary.BigEndian.PutUint32(size[:], uint32(n))
			w.Write(size[:])
			if _, err := w.Write(buf[:n]); err != nil {
				return Verdict{}, fmt.Errorf("clamd: send: %w", err)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return Verdict{}, fmt.Errorf("clamd: read message: %w", rerr)
		}
	}
	binary.BigEndian.PutUint32(size[:], 0)
	w.Write(size[:])
	if err := w.Flush(); err != nil {
		return Verdict{}, fmt.Errorf("clamd: send: %w", err)
	}
	reply, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadString(0)
	if err != nil {
		return Verdict{}, fmt.Errorf("clamd: reply: %w", err)
	}
	return parse(strings.TrimSuffix(reply, "\x00"))
}

func parse(reply string) (Verdict, error) {
	rest, ok := strings.CutPrefix(reply, "stream: ")
	switch {
	case !ok:
		return Verdict{}, fmt.Errorf("clamd: unexpected reply %q", reply)
	case rest == "OK":
		return Verdict{}, nil
	case strings.HasSuffix(rest, " FOUND"):
		return Verdict{Infected: true, Signature: strings.TrimSuffix(rest, " FOUND")}, nil
	}
	// "INSTREAM size limit exceeded. ERROR" and the like.
	return Verdict{}, fmt.Errorf("clamd: %s", rest)
}
