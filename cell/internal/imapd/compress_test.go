package imapd_test

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// zlibClient speaks COMPRESS=DEFLATE as zlib-based clients do (mbsync):
// each command ends with Z_PARTIAL_FLUSH, whose last bits wait for the
// next write, or with Z_SYNC_FLUSH. The server must answer both at once.
const zlibClient = `
import socket, sys, zlib
host, port = sys.argv[1].split(':')
s = socket.create_connection((host, int(port)), timeout=10)
buf = b""
def line():
    global buf
    while b"\r\n" not in buf:
        d = s.recv(4096)
        if not d: raise SystemExit("eof")
        buf += d
    l, buf = buf.split(b"\r\n", 1)
    return l
line()
s.sendall(b"a LOGIN u p\r\n"); assert line().startswith(b"a OK"), "login"
s.sendall(b"b COMPRESS DEFLATE\r\n"); assert line() == b"b OK DEFLATE active", "compress"
co, de = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
def cmd(tag, text, flush):
    s.sendall(co.compress(tag + b" " + text + b"\r\n") + co.flush(flush))
    got = b""
    while not (b"\r\n" + tag + b" ") in (b"\r\n" + got):
        d = s.recv(65536)
        if not d: raise SystemExit("eof")
        got += de.decompress(d)
    print(got.decode())
cmd(b"c", b"SELECT INBOX", zlib.Z_PARTIAL_FLUSH)
cmd(b"d", b"NOOP", zlib.Z_SYNC_FLUSH)
cmd(b"e", b"CAPABILITY", zlib.Z_PARTIAL_FLUSH)
`

func TestCompressZlibClient(t *testing.T) {
	mem := imapmemserver.New()
	user := imapmemserver.NewUser("u", "p")
	if err := user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(user)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapCompressDeflate: {}},
		InsecureAuth: true,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	out, err := exec.Command("python3", "-c", zlibClient, ln.Addr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("zlib client: %v\n%s", err, out)
	}
	for _, want := range []string{"c OK [READ-WRITE]", "d OK NOOP", "e OK CAPABILITY"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "COMPRESS=DEFLATE") {
		t.Errorf("COMPRESS=DEFLATE still offered once active:\n%s", out)
	}
}
