package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
)

// Real SMTP clients against the dev stack's router: swaks (with STARTTLS,
// and to two jurisdictions at once) and Python's smtplib (STARTTLS, a
// message with an unknown recipient among the good one, an attempt to
// relay). Each accepted message must show through the API in each
// recipient's INBOX, once.
func TestRealSMTPClients(t *testing.T) {
	bin, dir := buildAndDir(t)
	st, stop := startStack(t, bin, dir)
	defer stop()
	acct := map[string]account{}
	for _, a := range st.Accounts {
		acct[a.Address] = a
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	out := run("swaks", "--to", "bob@demo-us.example", "--from", "ann@demo-eu.example", "--server", st.Router.SMTP,
		"--tls", "--header", "Subject: swaks-tls", "--body", "over TLS")
	if !strings.Contains(out, "TLS started") {
		t.Fatalf("swaks did not use STARTTLS:\n%s", out)
	}
	run("swaks", "--to", "alice@demo-eu.example,bob@demo-us.example", "--from", "ann@example.org", "--server", st.Router.SMTP,
		"--header", "Subject: swaks-two-jurisdictions", "--body", "to eu and us")
	py := `
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port), local_hostname="client.example") as s:
    s.starttls(context=ctx)
    s.ehlo("client.example")
    refused = s.sendmail("ann@example.org", ["carol@acme-eu.example", "nobody@acme-eu.example"],
        "From: ann@example.org\r\nTo: carol@acme-eu.example\r\nSubject: smtplib-tls\r\n\r\nhello from Python\r\n")
    assert list(refused) == ["nobody@acme-eu.example"], refused
    try:
        s.sendmail("ann@example.org", ["someone@elsewhere.example"], "Subject: relay\r\n\r\nx\r\n")
        raise SystemExit("relayed")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["someone@elsewhere.example"][0] == 550, e.recipients
print("ok")
`
	if out := run("python3", "-c", py, st.Router.SMTP, st.TLSCert); !strings.Contains(out, "ok") {
		t.Fatalf("python: %s", out)
	}
	// Submission with Python's smtplib (STARTTLS, AUTH LOGIN), a body with
	// bare LF line endings that the router repairs: the remote MX gets it
	// with CRLF, dot-stuffing undone, and DKIM verifying.
	pySubmit := `
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
host, port = sys.argv[1].rsplit(":", 1)
with smtplib.SMTP(host, int(port)) as s:
    s.starttls(context=ctx)
    s.login(sys.argv[3], sys.argv[4])
    body = b"From: carol@acme-eu.example\nTo: ann@remote.example\nSubject: smtplib-submission\n\nline one\n.leading dot\n"
    s.sendmail(sys.argv[3], ["ann@remote.example"], body)
print("ok")
`
	if out := run("python3", "-c", pySubmit, st.Router.Submission, st.TLSCert, "carol@acme-eu.example",
		acct["carol@acme-eu.example"].Password); !strings.Contains(out, "ok") {
		t.Fatalf("python submission: %s", out)
	}
	// Submission (issue 5's done-when): alice on the 587-style port with
	// STARTTLS and AUTH, to bob (another cell), to the test remote domain's
	// sink, and to an address the sink refuses for good.
	out = run("swaks", "--server", st.Router.Submission, "--tls", "--auth", "PLAIN", "--auth-user", "alice@demo-eu.example",
		"--auth-password", acct["alice@demo-eu.example"].Password, "--from", "alice@demo-eu.example",
		"--to", "bob@demo-us.example,ann@remote.example,reject@remote.example", "--header", "Subject: swaks-submission")
	if !strings.Contains(out, "235 2.0.0") {
		t.Fatalf("swaks AUTH:\n%s", out)
	}
	refused, _ := exec.Command("swaks", "--server", st.Router.Submission, "--tls", "--auth", "LOGIN", "--auth-user", "alice@demo-eu.example",
		"--auth-password", acct["alice@demo-eu.example"].Password, "--from", "bob@demo-us.example", "--to", "ann@remote.example",
		"--quit-after", "MAIL").CombinedOutput() // swaks exits non-zero on the refusal
	if out := string(refused); !strings.Contains(out, "553 5.7.1") {
		t.Fatalf("sending as another user was not refused:\n%s", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, _ := os.ReadFile(filepath.Join(st.Logs, "sink.log"))
		if strings.Contains(string(log), `dkim="pass (d=demo-eu.example)"`) && strings.Contains(string(log), `dkim="pass (d=acme-eu.example)"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sink never got a DKIM-signed message that verifies:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Mail to a domain whose MX is down waits in the queue, where an SRE
	// sees it, retries it and drops it.
	run("swaks", "--server", st.Router.Submission, "--tls", "--auth", "PLAIN", "--auth-user", "alice@demo-eu.example",
		"--auth-password", acct["alice@demo-eu.example"].Password, "--from", "alice@demo-eu.example",
		"--to", "someone@down.example", "--header", "Subject: to a dead MX")
	mailctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "mailctl"), args...)
		cmd.Env = append(os.Environ(), "CELLMAIL_CONTROLPLANE="+st.Controlplane, "CELLMAIL_TOKEN="+st.AdminToken)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mailctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	cell := acct["alice@demo-eu.example"].Cell
	var id string
	deadline = time.Now().Add(30 * time.Second)
	for id == "" {
		var q struct {
			Entries []struct{ ID, Rcpt, State string } `json:"entries"`
		}
		if err := json.Unmarshal([]byte(mailctl("queue", "list", "--cell", cell, "-o", "json")), &q); err != nil {
			t.Fatal(err)
		}
		for _, e := range q.Entries {
			if e.Rcpt == "someone@down.example" && e.State == "pending" {
				id = e.ID
			}
		}
		if id == "" && time.Now().After(deadline) {
			t.Fatal("the entry for down.example never showed in the queue")
		}
	}
	if out := mailctl("queue", "show", id, "--cell", cell); !strings.Contains(out, "someone@down.example") {
		t.Fatalf("queue show: %s", out)
	}
	mailctl("queue", "retry", id, "--cell", cell)
	mailctl("queue", "drop", id, "--cell", cell, "--yes")
	if out := mailctl("queue", "show", id, "--cell", cell); !strings.Contains(out, "dropped") {
		t.Fatalf("after drop: %s", out)
	}

	want := map[string][]string{
		"alice@demo-eu.example": {"swaks-two-jurisdictions", "Undelivered Mail Returned to Sender"},
		"bob@demo-us.example":   {"swaks-tls", "swaks-two-jurisdictions", "swaks-submission"},
		"carol@acme-eu.example": {"smtplib-tls"},
	}
	for addr, subjects := range want {
		got := waitSubjects(t, st.Router.URL, acct[addr], len(subjects))
		for _, s := range subjects {
			if got[s] != 1 {
				t.Errorf("%s: %q %d times, want once (have %v)", addr, s, got[s], got)
			}
		}
	}
}

// apiInbox logs a in through the API and finds its INBOX: it returns what
// authorizes a request as a, and the INBOX's id.
func apiInbox(t *testing.T, c mailv1connect.MailServiceClient, a account) (func(connect.AnyRequest), string) {
	t.Helper()
	ctx := context.Background()
	login, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: a.Address, Password: a.Password}))
	if err != nil {
		t.Fatal(err)
	}
	auth := func(r connect.AnyRequest) { r.Header().Set("Authorization", "Bearer "+login.Msg.AccessToken) }
	lreq := connect.NewRequest(&mailv1.ListMailboxesRequest{})
	auth(lreq)
	boxes, err := c.ListMailboxes(ctx, lreq)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range boxes.Msg.Mailboxes {
		if b.SpecialUse == mailv1.SpecialUse_SPECIAL_USE_INBOX {
			return auth, b.Id
		}
	}
	t.Fatalf("%s has no INBOX", a.Address)
	return nil, ""
}

// waitSubjects waits until a's INBOX holds at least n messages and counts
// them by subject.
func waitSubjects(t *testing.T, routerURL string, a account, n int) map[string]int {
	t.Helper()
	c := mailv1connect.NewMailServiceClient(http.DefaultClient, routerURL)
	ctx := context.Background()
	auth, inboxID := apiInbox(t, c, a)
	deadline := time.Now().Add(30 * time.Second)
	for {
		req := connect.NewRequest(&mailv1.ListMessagesRequest{MailboxId: inboxID, PageSize: 200})
		auth(req)
		page, err := c.ListMessages(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Msg.Messages) >= n || time.Now().After(deadline) {
			got := map[string]int{}
			for _, m := range page.Msg.Messages {
				got[m.Subject]++
			}
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}
