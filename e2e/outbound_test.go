package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// remoteServer is the mail exchanger of remote.test: a real SMTP server
// (go-smtp) that refuses perm@ with 550 and keeps the rest.
type remoteServer struct {
	mu   sync.Mutex
	got  map[string][]byte
	port int
}

func startRemoteServer() (*remoteServer, error) {
	r := &remoteServer{got: map[string][]byte{}}
	srv := smtp.NewServer(r)
	srv.Domain = "mx.remote.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.port = ln.Addr().(*net.TCPAddr).Port
	go srv.Serve(ln)
	return r, nil
}

func (r *remoteServer) message(rcpt string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[rcpt]
}

func (r *remoteServer) NewSession(*smtp.Conn) (smtp.Session, error) { return &remoteSession{r: r}, nil }

type remoteSession struct {
	r     *remoteServer
	rcpts []string
}

func (s *remoteSession) Reset()                               { s.rcpts = nil }
func (s *remoteSession) Logout() error                        { return nil }
func (s *remoteSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *remoteSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(to, "perm@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *remoteSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	for _, rc := range s.rcpts {
		s.r.got[rc] = b
	}
	return nil
}

// Sending from the webmail API to a remote domain: queued, delivered by MX
// with a DKIM signature that verifies; a recipient the remote refuses
// comes back as a bounce in the sender's INBOX.
func TestSendToRemoteDomain(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	ctx := context.Background()
	resp, err := alice.c.SendMessage(ctx, withToken(alice.access, &mailv1.SendMessageRequest{
		To:      []*mailv1.EmailAddress{{Email: "ann@remote.test"}, {Email: "perm@remote.test"}},
		Subject: "to the world", Text: "Hello, remote.\n.dot line\n"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Msg.Recipients {
		if r.Status != "queued" {
			t.Fatalf("recipient %s: %s (%s), want queued", r.Address, r.Status, r.Detail)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	var got []byte
	for got == nil {
		if time.Now().After(deadline) {
			t.Fatal("remote.test's MX never got the message")
		}
		time.Sleep(20 * time.Millisecond)
		got = remoteMX.message("ann@remote.test")
	}
	if !bytes.Contains(got, []byte("Subject: to the world")) || !bytes.Contains(got, []byte("DKIM-Signature:")) {
		t.Fatalf("arrived: %q", got)
	}
	// The signature names the sender's domain (its verification against the
	// published key is tested in cell/internal/outbound).
	verifs, _ := dkim.VerifyWithOptions(bytes.NewReader(got), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		return testDNS.Resolver().LookupTXT(ctx, name)
	}})
	if len(verifs) != 1 || verifs[0].Domain != "eu.example" {
		t.Fatalf("DKIM signature for %+v", verifs)
	}
	msgs := waitInbox(t, alice, 1)
	if len(msgs) != 1 || msgs[0].Subject != "Undelivered Mail Returned to Sender" {
		t.Fatalf("alice's INBOX: %v", msgs)
	}
}

// A recipient of ours whose cell is down is queued, not lost: the sender
// retries it through the routing when the cell is back. (The cell that
// comes back here has a fresh database, so the retry finds no such user
// and bounces: the test sees both the queueing and the final outcome.)
func TestLocalRecipientQueuedWhileItsCellIsDown(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	alice := s.user(t, url, "alice@eu.example")
	s.user(t, url, "bob@us.example")
	s.stops["us-1"]()
	resp, err := alice.c.SendMessage(context.Background(), withToken(alice.access, &mailv1.SendMessageRequest{
		To: []*mailv1.EmailAddress{{Email: "bob@us.example"}}, Subject: "while you were down", Text: "hi"}))
	if err != nil {
		t.Fatal(err)
	}
	if st := resp.Msg.Recipients[0]; st.Status != "queued" {
		t.Fatalf("bob's status %s (%s), want queued", st.Status, st.Detail)
	}
	s.startCell("us-1", "us")
	msgs := waitInbox(t, alice, 1)
	if msgs[0].Subject != "Undelivered Mail Returned to Sender" {
		t.Fatalf("alice's INBOX: %v", msgs)
	}
}
