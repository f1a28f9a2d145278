package imapd_test

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/imapd"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
)

// APPEND is held to the account's bound of distinct labels
// (mail.MaxAccountLabels), as STORE is: keywords spread over several
// mailboxes, each within its own bound, must not take the account past it.
func TestAppendKeywordsAccountBound(t *testing.T) {
	store, blobs, acct := mailstoretest.New(t, pg, "append-labels@demo.example")
	srv := imapd.New(imapd.Config{Store: store, Blobs: blobs, Append: delivery.New(blobs, store, message.DefaultLimits()),
		Hasher: password{}, Fence: fence{}, Hub: imapd.NewHub(), Logger: slog.New(slog.DiscardHandler),
		Logins: auth.NewLoginLimits(noLimits{}, nil, nil)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	br := bufio.NewReader(c)
	n := 0
	// cmd sends a command (a literal is sent non-synchronizing) and
	// returns its tagged answer.
	cmd := func(format string, args ...any) string {
		t.Helper()
		n++
		tag := fmt.Sprintf("t%d", n)
		if _, err := fmt.Fprintf(c, tag+" "+format+"\r\n", args...); err != nil {
			t.Fatal(err)
		}
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v", tag, err)
			}
			if strings.HasPrefix(line, tag+" ") {
				return strings.TrimSpace(line[len(tag)+1:])
			}
		}
	}
	if _, err := br.ReadString('\n'); err != nil { // greeting
		t.Fatal(err)
	}
	if got := cmd("LOGIN %s p", acct.Address); !strings.HasPrefix(got, "OK") {
		t.Fatalf("LOGIN: %s", got)
	}
	msg := "Subject: x\r\n\r\nx\r\n"
	appendKW := func(box string, kws []string) string {
		return cmd("APPEND %s (%s) {%d+}\r\n%s", box, strings.Join(kws, " "), len(msg), msg)
	}
	kws := func(prefix string, k int) []string {
		out := make([]string, k)
		for i := range out {
			out[i] = fmt.Sprintf("%s%03d", prefix, i)
		}
		return out
	}
	// 5 mailboxes of 200 keywords (under the 256 of a mailbox): the
	// account's 1,000.
	per := mail.MaxMessageLabels
	for b := range mail.MaxAccountLabels / (2 * per) {
		box := fmt.Sprintf("Box%d", b)
		if got := cmd("CREATE %s", box); !strings.HasPrefix(got, "OK") {
			t.Fatalf("CREATE %s: %s", box, got)
		}
		for half := range 2 {
			if got := appendKW(box, kws(fmt.Sprintf("b%dh%d-", b, half), per)); !strings.HasPrefix(got, "OK") {
				t.Fatalf("APPEND to %s: %s", box, got)
			}
		}
	}
	if got := cmd("CREATE Last"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("CREATE Last: %s", got)
	}
	if got := appendKW("Last", []string{"one-too-many"}); !strings.HasPrefix(got, "NO [LIMIT]") {
		t.Fatalf("APPEND of label %d of the account: %s, want NO [LIMIT]", mail.MaxAccountLabels+1, got)
	}
	// Keywords the account has already are no new labels.
	if got := appendKW("Last", []string{"b0h0-000", "b4h1-099"}); !strings.HasPrefix(got, "OK") {
		t.Fatalf("APPEND with labels the account has: %s", got)
	}
	// Nor is a message without keywords refused.
	if got := cmd("APPEND Last {%d+}\r\n%s", len(msg), msg); !strings.HasPrefix(got, "OK") {
		t.Fatalf("APPEND without keywords: %s", got)
	}
}
