package imapd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/cache"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/imapd"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/internal/pgserver"
)

var pg *pgserver.Server

func TestMain(m *testing.M) { os.Exit(pgserver.TestMain(m, "imapd", &pg)) }

// fence owns every address.
type fence struct{}

func (fence) Check(_ context.Context, address string, _ uint64) (placement.Route, error) {
	a, err := placement.ParseAddress(address)
	return placement.Route{Address: a}, err
}

// noLimits lets every login through: the login limits have tests of their
// own (auth, router), and a fuzzed session must not be slowed by them.
type noLimits struct{}

func (noLimits) Take(context.Context, time.Time, []cache.Bucket) (time.Duration, error) {
	return 0, nil
}
func (noLimits) Give(context.Context, time.Time, []cache.Bucket) error { return nil }
func (noLimits) Levels(_ context.Context, _ time.Time, b []cache.Bucket) ([]float64, error) {
	return make([]float64, len(b)), nil
}
func (noLimits) Forget(context.Context, ...string) error { return nil }

// password accepts "p".
type password struct{}

func (password) Verify(_ context.Context, _, pw string) error {
	if pw != "p" {
		return errors.New("wrong password")
	}
	return nil
}

// errorLog keeps the server's error and warning logs (an internal error
// or a recovered panic).
type errorLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }
func (l *errorLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.msgs
	l.msgs = nil
	return m
}

// sessionSeeds are the malformed commands of issue 13 and their
// neighbours: each must get BAD (or NO) at once.
var sessionSeeds = []string{
	`A SELECT "INBOX`,
	`A STATUS "INBOX\`,
	"A STATUS {5000}",
	"A STATUS {5000+}\r\n" + strings.Repeat("x", 4990) + "\r\nB DELETE Trash\r\n (MESSAGES)",
	"A APPEND INBOX {99999999999+}",
	"A APPEND INBOX {60000000}",
	"A LOGIN {99999999999999999999999+}",
	"A STATUS &Jjo (MESSAGES)",
	`A CREATE "&AGE-&AGE-"`,
	"A FETCH 4294967296 FLAGS",
	"A UID FETCH 1:99999999999 FLAGS",
	"A UID SEARCH UID 4294967296",
	"A SEARCH " + strings.Repeat("(", 200) + "ALL" + strings.Repeat(")", 200),
	"A SEARCH " + strings.Repeat("(", 3000),
	"A SEARCH SINCE 31-Foo-2020",
	`A APPEND INBOX "99-Jan-2020 10:00:00 +0000" {3+}` + "\r\nabc",
	"A SEARCH TEXT " + strings.Repeat("a", 60000) + " B DELETE Trash",
	"",
	" ",
	"(",
	`A LIST "" ""`,
	`A LIST "" "*"`,
	"A STORE 1 +FLAGS (kw1 kw2)",
	"A FETCH 1:* (FLAGS UID)",
	"A STATUS INBOX (RECENT MESSAGES UIDNEXT)",
	"A EXAMINE INBOX",
	"A CREATE \"a\x00b\"",
	"A CREATE {3+}\r\na\x00b",
	"A RENAME INBOX \"x\ty\"",
	"A SELECT \"\xff\xfe\"",
	"A APPEND INBOX (\\Seen kw) {5+}\r\nhello",
	"A COPY 1:* Trash",
	"A UID MOVE 1 Archive",
	"A SEARCH HEADER \"\x00\" x",
	"A STORE 1 FLAGS (\\Recent \\Bogus)",
}

// FuzzSession drives the cell's own IMAP session (the store on
// PostgreSQL) over a socket: after LOGIN and SELECT, arbitrary input, then
// a probe command. The probe must be answered within a few seconds (no
// command waits for input that was never promised), nothing may answer
// SERVERBUG or log an internal error, and the session must end at LOGOUT.
// Input that legitimately holds the line (IDLE, AUTHENTICATE's exchange,
// COMPRESS, STARTTLS, a synchronizing literal's promised bytes) is only
// held to "no SERVERBUG, and the session ends when the client does".
func FuzzSession(f *testing.F) {
	for _, s := range sessionSeeds {
		f.Add(s)
	}
	store, blobs, acct := mailstoretest.New(f, pg, "fuzz@demo.example")
	logs := &errorLog{}
	srv := imapd.New(imapd.Config{Store: store, Blobs: blobs, Append: delivery.New(blobs, store, message.DefaultLimits()),
		Hasher: password{}, Fence: fence{}, Hub: imapd.NewHub(), Logger: slog.New(logs),
		Logins: auth.NewLoginLimits(noLimits{}, nil, nil)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Close() })
	login := "a LOGIN " + acct.Address + " p\r\nb SELECT INBOX\r\n"

	f.Fuzz(func(t *testing.T, in string) {
		if len(in) > 1<<17 {
			return
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		up := strings.ToUpper(in)
		holds := strings.ContainsAny(in, "{") || strings.Contains(up, "IDLE") || strings.Contains(up, "AUTHENTICATE") ||
			strings.Contains(up, "COMPRESS") || strings.Contains(up, "STARTTLS") || strings.Contains(up, "LOGOUT")
		var out []byte
		if holds {
			go func() {
				_, _ = io.WriteString(c, login+in+"\r\nz LOGOUT\r\n")
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			out, err = io.ReadAll(c)
			if err != nil {
				t.Fatalf("the session did not end with the client: %v (after %q)", err, tail(out))
			}
		} else {
			go func() { _, _ = io.WriteString(c, login+in+"\r\nzz NOOP\r\n") }()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 64<<10)
			for !bytes.Contains(out, []byte("\r\nzz ")) {
				n, err := c.Read(buf)
				out = append(out, buf[:n]...)
				if err != nil {
					t.Fatalf("no answer to the command after the input: %v (got %q)", err, tail(out))
				}
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(c, "z LOGOUT\r\n")
			rest, err := io.ReadAll(c)
			out = append(out, rest...)
			if err != nil {
				t.Fatalf("the session did not end at LOGOUT: %v (got %q)", err, tail(out))
			}
		}
		if !bytes.Contains(out, []byte("a OK")) || !bytes.Contains(out, []byte("b OK")) {
			t.Fatalf("no login or select: %q", tail(out))
		}
		if bytes.Contains(out, []byte("SERVERBUG")) {
			t.Fatalf("SERVERBUG: %q", tail(out))
		}
		if l := logs.take(); len(l) > 0 {
			t.Fatalf("the server logged: %q", l)
		}
	})
}

// tail is the last part of a long answer, for messages.
func tail(b []byte) string {
	if len(b) > 2000 {
		return "…" + string(b[len(b)-2000:])
	}
	return string(b)
}
