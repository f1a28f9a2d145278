package imapd_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/cellmail/cellmail/cell/internal/imapd"
)

// FuzzCommands feeds arbitrary commands, after a login, a SELECT and
// ENABLE QRESYNC, to the command reader of the IMAP server the cells run
// (the vendored go-imap with cellmail's CONDSTORE, QRESYNC and ID
// patches), with the capabilities the cells offer. The backend is the
// library's in-memory one: the store needs PostgreSQL, and what is fuzzed
// here is the reading of the wire. The server must answer and end the
// session when the client stops, whatever it was sent; a panic fails.
func FuzzCommands(f *testing.F) {
	for _, s := range []string{
		"A SELECT INBOX (CONDSTORE)",
		"A EXAMINE INBOX (QRESYNC (1 2 1:5 (1:3 1:3)))",
		"A SELECT INBOX (QRESYNC (1 2 (1 1)))",
		"A SELECT INBOX (QRESYNC (0 0))",
		"A SELECT INBOX (QRESYNC (1 1 ($ 1:2)))",
		"A SELECT INBOX (QRESYNC (1 1 $ (1 $)))",
		"A STORE 1 (UNCHANGEDSINCE 0) FLAGS ()",
		"A UID FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 5 VANISHED)",
		"A FETCH 1 (UID) (CHANGEDSINCE 18446744073709551615)",
		"A FETCH 1 FAST (VANISHED)",
		"A STORE 1 (UNCHANGEDSINCE 3) +FLAGS (\\Seen)",
		"A UID STORE 1:2 (UNCHANGEDSINCE 3 UNCHANGEDSINCE 4) FLAGS.SILENT ()",
		`A ID ("name" "x" "version" NIL)`,
		"A ID NIL",
		`A ID ({4+}` + "\r\nname {1+}\r\nx)",
		`A SEARCH MODSEQ "/flags/\\draft" all 5`,
		"A UID SEARCH RETURN (COUNT MIN) OR MODSEQ 4 NOT MODSEQ 9",
		"A STATUS INBOX (HIGHESTMODSEQ MESSAGES)",
		"A ENABLE QRESYNC CONDSTORE IMAP4rev2",
		"A APPEND INBOX {5+}\r\nhello",
		"A UID EXPUNGE 1:*",
		"A UID MOVE 1 INBOX",
		`A GETQUOTAROOT INBOX`,
		"A COMPRESS DEFLATE",
		"A COMPRESS DEFLATE\r\nB NOOP",
		`A GETQUOTA ""`,
		`A SETQUOTA "" (STORAGE 512 MESSAGE 10)`,
	} {
		f.Add(s)
	}
	for _, s := range sessionSeeds { // issue 13's malformed commands
		f.Add(s)
	}
	mem := imapmemserver.New()
	user := imapmemserver.NewUser("u", "p")
	if err := user.Create("INBOX", nil); err != nil {
		f.Fatal(err)
	}
	mem.AddUser(user)
	// The cells' capabilities, less those the in-memory backend lacks.
	caps := imap.CapSet{}
	sess := mem.NewSession()
	for c := range imapd.Caps {
		var ok bool
		switch c {
		case imap.CapIMAP4rev2:
			_, ok = sess.(imapserver.SessionIMAP4rev2)
		case imap.CapNamespace:
			_, ok = sess.(imapserver.SessionNamespace)
		case imap.CapMove:
			_, ok = sess.(imapserver.SessionMove)
		case imap.CapUnauthenticate:
			_, ok = sess.(imapserver.SessionUnauthenticate)
		default:
			ok = true
		}
		if ok {
			caps[c] = struct{}{}
		}
	}
	var panics atomic.Value // the server recovers a panic and logs it
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         caps,
		InsecureAuth: true,
		Logger:       panicLog{&panics},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Close() })

	f.Fuzz(func(t *testing.T, in string) {
		if len(in) > 1<<16 {
			return
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			_, _ = io.WriteString(c, "a LOGIN u p\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\n"+in+"\r\nz LOGOUT\r\n")
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(io.LimitReader(c, 1<<24))
		if err != nil {
			t.Fatalf("the server did not end the session: %v (after %d bytes)", err, len(out))
		}
		if p := panics.Load(); p != nil {
			t.Fatalf("the server panicked: %s", p)
		}
		if !strings.HasPrefix(string(out), "* OK") || !strings.Contains(string(out), "a OK") {
			t.Fatalf("no greeting or login: %q", out)
		}
	})
}

// panicLog keeps the server's report of a recovered panic.
type panicLog struct{ v *atomic.Value }

func (l panicLog) Printf(format string, args ...any) {
	if msg := fmt.Sprintf(format, args...); strings.Contains(msg, "panic") {
		l.v.Store(msg)
	}
}
