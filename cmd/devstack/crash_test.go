package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
)

// Nothing acknowledged is lost, nothing is stored twice: messages go through
// the router's SMTP edge to two cells while a cell's API/LMTP process, its
// pipeline worker or its broker is killed with SIGKILL at random moments and
// started again by a supervisor. The sender retries until it gets 250, as
// an MTA does. Then every message must be in each recipient's INBOX exactly
// once, with the body that was sent.
func TestInboundSurvivesCrashes(t *testing.T) {
	bin, dir := buildAndDir(t)
	st, stop := startStack(t, bin, dir, "-restart-crashed")
	defer stop()
	var rcpts []account
	for _, a := range st.Accounts {
		if a.Address == "alice@demo-eu.example" || a.Address == "bob@demo-us.example" {
			rcpts = append(rcpts, a)
		}
	}
	if len(rcpts) != 2 || rcpts[0].Cell == rcpts[1].Cell {
		t.Fatalf("want two demo recipients in two cells, have %+v", rcpts)
	}

	// The sender sends at least minMsgs messages and goes on (up to maxMsgs)
	// until each kind of process has been killed at least minKills times:
	// a fast pipeline must not end the run before the chaos had its turn.
	const minMsgs, maxMsgs, minKills = 400, 5000, 3
	sending := make(chan struct{})
	var mu sync.Mutex // guards kills
	kills := map[string]int{}
	enoughKills := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return kills["cell"] >= minKills && kills["worker"] >= minKills && kills["broker"] >= minKills
	}
	round := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the chaos: kill -9 a random process of a cell every 100–300 ms
		defer wg.Done()
		for {
			select {
			case <-sending:
				return
			case <-time.After(time.Duration(100+rand.IntN(200)) * time.Millisecond):
			}
			var cur Stack
			b, err := os.ReadFile(filepath.Join(dir, "stack.json"))
			if err != nil || json.Unmarshal(b, &cur) != nil {
				continue
			}
			victim := cur.Cells[rand.IntN(len(cur.Cells))]
			kind, pid := "cell", victim.PID
			round++
			switch round % 3 { // each kind in turn, the victim's cell at random
			case 1:
				kind, pid = "worker", victim.WorkerPID
			case 2:
				kind, pid = "broker", victim.BrokerPID
			}
			if pid > 0 && syscall.Kill(pid, syscall.SIGKILL) == nil {
				mu.Lock()
				kills[kind]++
				mu.Unlock()
			}
		}
	}()

	retries, n := 0, 0
	for ; n < minMsgs || (n < maxMsgs && !enoughKills()); n++ {
		i := n
		for attempt := 0; ; attempt++ {
			err := sendOne(st.Router.SMTP, i, rcpts)
			if err == nil {
				break
			}
			retries++
			if attempt > 200 {
				t.Fatalf("message %d never accepted: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond) // an MTA's retry interval, shortened
		}
	}
	close(sending)
	wg.Wait()
	if !enoughKills() {
		t.Fatalf("kills during the run %v: the test proved little", kills)
	}
	t.Logf("%d messages accepted, %d refused attempts retried, kills %v", n, retries, kills)

	t.Cleanup(func() {
		if t.Failed() { // what the pipeline said, for the record
			logs, _ := filepath.Glob(filepath.Join(st.Logs, "*-worker.log"))
			more, _ := filepath.Glob(filepath.Join(st.Logs, "*-broker.log"))
			for _, l := range append(logs, more...) {
				b, _ := os.ReadFile(l)
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				var warn []string
				for _, ln := range lines {
					if !strings.Contains(ln, "level=INFO") {
						warn = append(warn, ln)
					}
				}
				t.Logf("%s (%d lines), not INFO:\n%s", filepath.Base(l), len(lines), strings.Join(warn[max(0, len(warn)-15):], "\n"))
			}
		}
	})
	for _, a := range rcpts {
		counts := waitAll(t, st.Router.URL, a, n)
		for i := range n {
			if c := counts[fmt.Sprintf("crash-%d", i)]; c != 1 {
				t.Errorf("%s has message crash-%d %d times, want exactly once", a.Address, i, c)
			}
		}
	}
}

// crashDate is when the messages claim to be written: a sender's retry
// of message i sends the same bytes, as an MTA does.
var crashDate = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// crashBody is message i's body: its snippet tells the stored content.
func crashBody(i int) string { return fmt.Sprintf("body of crash message %d", i) }

func sendOne(addr string, i int, rcpts []account) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("crash.test"); err != nil {
		return err
	}
	if err := c.Mail("sender@crash.test", nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r.Address, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: sender@crash.test\r\nDate: %s\r\nSubject: crash-%d\r\nMessage-ID: <crash-%d@crash.test>\r\n\r\n%s\r\n",
		crashDate.Add(time.Duration(i)*time.Second).Format(time.RFC1123Z), i, i, crashBody(i))
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// waitAll logs in as a and waits (retrying through cell restarts) until its
// INBOX holds n messages, then counts them by subject.
func waitAll(t *testing.T, routerURL string, a account, n int) map[string]int {
	t.Helper()
	c := mailv1connect.NewMailServiceClient(http.DefaultClient, routerURL)
	ctx := context.Background()
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	token := ""
	for time.Now().Before(deadline) {
		if token == "" {
			login, err := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: a.Address, Password: a.Password}))
			if err != nil {
				last = err
				time.Sleep(100 * time.Millisecond)
				continue
			}
			token = login.Msg.AccessToken
		}
		counts, total, err := inbox(ctx, c, token)
		if err == nil && total >= n {
			return counts
		}
		last = err
		if err == nil {
			last = fmt.Errorf("%d of %d messages so far", total, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: INBOX never complete: %v", a.Address, last)
	return nil
}

func inbox(ctx context.Context, c mailv1connect.MailServiceClient, token string) (map[string]int, int, error) {
	auth := func(r connect.AnyRequest) { r.Header().Set("Authorization", "Bearer "+token) }
	lreq := connect.NewRequest(&mailv1.ListMailboxesRequest{})
	auth(lreq)
	boxes, err := c.ListMailboxes(ctx, lreq)
	if err != nil {
		return nil, 0, err
	}
	var inboxID string
	for _, b := range boxes.Msg.Mailboxes {
		if b.SpecialUse == mailv1.SpecialUse_SPECIAL_USE_INBOX {
			inboxID = b.Id
		}
	}
	counts, total, pageToken := map[string]int{}, 0, ""
	for {
		req := connect.NewRequest(&mailv1.ListMessagesRequest{MailboxId: inboxID, PageSize: 200, PageToken: pageToken})
		auth(req)
		page, err := c.ListMessages(ctx, req)
		if err != nil {
			return nil, 0, err
		}
		for _, m := range page.Msg.Messages {
			if strings.HasPrefix(m.Subject, "crash-") {
				var i int
				if _, err := fmt.Sscanf(m.Subject, "crash-%d", &i); err != nil || m.Snippet != crashBody(i) {
					return nil, 0, fmt.Errorf("message %q has content %q, not what was sent", m.Subject, m.Snippet)
				}
				counts[m.Subject]++
				total++
			}
		}
		if pageToken = page.Msg.NextPageToken; pageToken == "" {
			return counts, total, nil
		}
	}
}
