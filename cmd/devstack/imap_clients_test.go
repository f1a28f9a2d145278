package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
)

// pyLogin starts the Python scripts below: an imaplib session, logged in
// through the router's TLS port (argv: address, user, password).
const pyLogin = `
import imaplib, ssl, sys
ctx = ssl._create_unverified_context()
host, port = sys.argv[1].rsplit(":", 1)
c = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
c.login(sys.argv[2], sys.argv[3])
`

// Real IMAP clients through the dev stack's router: Python's imaplib sees
// a message delivered by SMTP and one sent through the API, and a flag it
// sets shows in the API; mbsync (isync) syncs a 1,000-message mailbox both
// ways, three times, with no change lost or duplicated.
func TestRealIMAPClients(t *testing.T) {
	bin, dir := buildAndDir(t)
	st, stop := startStack(t, bin, dir)
	defer stop()
	acct := map[string]account{}
	for _, a := range st.Accounts {
		acct[a.Address] = a
	}
	alice, bob := acct["alice@demo-eu.example"], acct["bob@demo-us.example"]
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("swaks", "--to", alice.Address, "--from", "ann@example.org", "--server", st.Router.SMTP,
		"--header", "Subject: imap-smtp", "--body", "delivered by SMTP")
	ctx := context.Background()
	c := mailv1connect.NewMailServiceClient(http.DefaultClient, st.Router.URL)
	login, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: bob.Address, Password: bob.Password}))
	if err != nil {
		t.Fatal(err)
	}
	send := connect.NewRequest(&mailv1.SendMessageRequest{To: []*mailv1.EmailAddress{{Email: alice.Address}},
		Subject: "api-sent", Text: "sent through the API"})
	send.Header().Set("Authorization", "Bearer "+login.Msg.AccessToken)
	if _, err := c.SendMessage(ctx, send); err != nil {
		t.Fatal(err)
	}

	py := `
import imaplib, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
host, port = sys.argv[1].rsplit(":", 1)
c = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
c.login(sys.argv[3], sys.argv[4])
typ, data = c.select("INBOX")
assert typ == "OK", data
deadline = time.time() + 30
while True:
    _, smtp = c.uid("SEARCH", None, 'SUBJECT "imap-smtp"')
    _, api = c.uid("SEARCH", None, 'SUBJECT "api-sent"')
    if smtp[0] and api[0]:
        break
    assert time.time() < deadline, "messages never showed"
    c.noop()
    time.sleep(0.1)
typ, data = c.uid("FETCH", api[0].decode(), "(BODY.PEEK[TEXT] FLAGS)")
assert b"sent through the API" in data[0][1], data
typ, data = c.uid("STORE", api[0].decode(), "+FLAGS", "(\\Flagged)")
assert typ == "OK", data
c.logout()
print("ok")
`
	if out := run("python3", "-c", py, st.Router.IMAPS, st.TLSCert, alice.Address, alice.Password); !strings.Contains(out, "ok") {
		t.Fatalf("imaplib: %s", out)
	}
	// The flag set over IMAP is the API's flag.
	auth, inbox := apiInbox(t, c, alice)
	lreq := connect.NewRequest(&mailv1.ListMessagesRequest{MailboxId: inbox})
	auth(lreq)
	list, err := c.ListMessages(ctx, lreq)
	if err != nil {
		t.Fatal(err)
	}
	flagged := false
	for _, m := range list.Msg.Messages {
		if m.Subject == "api-sent" {
			flagged = m.Flagged
		}
	}
	if !flagged {
		t.Fatalf("the flag set over IMAP does not show in the API: %v", list.Msg.Messages)
	}

	// mbsync: 1,000 messages on the server, synced down, changed on both
	// sides, synced both ways, then synced again with nothing to do.
	fill := pyLogin + `c.create("Sync")
for i in range(1000):
    msg = ("From: ann@example.org\r\nTo: %s\r\nSubject: sync %d\r\nMessage-ID: <sync%d@example.org>\r\n\r\nbody %d\r\n" % (sys.argv[2], i, i, i)).encode()
    typ, data = c.append("Sync", None, None, msg)
    assert typ == "OK", data
print("ok")
`
	run("python3", "-c", fill, st.Router.IMAPS, alice.Address, alice.Password)
	maildir := filepath.Join(dir, "Mail")
	if err := os.MkdirAll(maildir, 0o700); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(st.Router.IMAPS, ":")
	rc := filepath.Join(dir, "mbsyncrc")
	conf := fmt.Sprintf(`IMAPAccount demo
Host %s
Port %s
User %s
Pass "%s"
SSLType IMAPS
CertificateFile %s

IMAPStore remote
Account demo

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns Sync
Create Both
Expunge Both
SyncState *
`, host, port, alice.Address, alice.Password, st.TLSCert, maildir, maildir)
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	mbsync := func() string { return run("mbsync", "-c", rc, "-a") }
	mbsync()
	local := func() (n int, seen, flagged int) {
		for _, sub := range []string{"cur", "new"} {
			entries, err := os.ReadDir(filepath.Join(maildir, "Sync", sub))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				n++
				_, info, _ := strings.Cut(e.Name(), ":2,")
				if strings.Contains(info, "S") {
					seen++
				}
				if strings.Contains(info, "F") {
					flagged++
				}
			}
		}
		return
	}
	if n, _, _ := local(); n != 1000 {
		t.Fatalf("after the first sync the maildir holds %d messages, want 1000", n)
	}
	// Local changes: 10 new messages, 7 marked seen, 3 deleted.
	cur := filepath.Join(maildir, "Sync", "cur")
	entries, err := os.ReadDir(cur)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 10 {
		entries, _ = os.ReadDir(filepath.Join(maildir, "Sync", "new"))
		cur = filepath.Join(maildir, "Sync", "new")
	}
	// Only messages the server side leaves alone (UIDs below 900).
	var pick []os.DirEntry
	for _, e := range entries {
		_, u, _ := strings.Cut(e.Name(), ",U=")
		u, _, _ = strings.Cut(u, ":")
		if n, err := strconv.Atoi(u); err == nil && n < 900 && len(pick) < 10 {
			pick = append(pick, e)
		}
	}
	if len(pick) < 10 {
		t.Fatalf("maildir names without UIDs: %v", entries[:3])
	}
	for i, e := range pick {
		old := filepath.Join(cur, e.Name())
		base, _, _ := strings.Cut(e.Name(), ":2,")
		switch {
		case i < 7:
			if err := os.Rename(old, filepath.Join(maildir, "Sync", "cur", base+":2,S")); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.Remove(old); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 10; i++ {
		name := filepath.Join(maildir, "Sync", "new", fmt.Sprintf("%d.local%d.test", time.Now().Unix(), i))
		body := fmt.Sprintf("From: alice@demo-eu.example\r\nSubject: local %d\r\nMessage-ID: <local%d@demo-eu.example>\r\n\r\nwritten offline\r\n", i, i)
		if err := os.WriteFile(name, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Server changes: 5 flagged, 4 expunged (other messages than the local ones).
	remote := pyLogin + `c.select("Sync")
typ, data = c.uid("STORE", "990:994", "+FLAGS", "(\\Flagged)")
assert typ == "OK", data
typ, data = c.uid("STORE", "995:998", "+FLAGS", "(\\Deleted)")
assert typ == "OK", data
typ, data = c.expunge()
assert typ == "OK", data
print("ok")
`
	run("python3", "-c", remote, st.Router.IMAPS, alice.Address, alice.Password)
	mbsync()
	count := pyLogin + `typ, data = c.select("Sync")
n = int(data[0])
_, seen = c.search(None, "SEEN")
_, flagged = c.search(None, "FLAGGED")
_, local = c.search(None, 'SUBJECT "local"')
_, ids = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
mids = [x[1].strip() for x in ids if isinstance(x, tuple)]
print(n, len(seen[0].split()), len(flagged[0].split()), len(local[0].split()), len(mids) - len(set(mids)))
`
	out := strings.TrimSpace(run("python3", "-c", count, st.Router.IMAPS, alice.Address, alice.Password))
	// 1000 - 3 deleted locally - 4 expunged remotely + 10 new = 1003; 7
	// seen, 5 flagged, 10 local, 0 duplicate Message-IDs.
	if out != "1003 7 5 10 0" {
		t.Fatalf("server after the two-way sync (count seen flagged local duplicates): %q, want \"1003 7 5 10 0\"", out)
	}
	if n, seen, fl := local(); n != 1003 || seen != 7 || fl != 5 {
		t.Fatalf("maildir after the two-way sync: %d messages, %d seen, %d flagged; want 1003, 7, 5", n, seen, fl)
	}
	mbsync()
	if again := strings.TrimSpace(run("python3", "-c", count, st.Router.IMAPS, alice.Address, alice.Password)); again != out {
		t.Fatalf("a third sync changed the server: %q then %q", out, again)
	}
	if n, _, _ := local(); n != 1003 {
		t.Fatalf("a third sync changed the maildir: %d messages", n)
	}
}
