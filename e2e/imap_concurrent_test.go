package e2e_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// appendN APPENDs n small messages to the mailbox through c.
func appendN(t *testing.T, c *imapclient.Client, mailbox string, n int) {
	t.Helper()
	for i := range n {
		msg := fmt.Sprintf("From: a@elsewhere.test\r\nSubject: concurrent %d\r\n\r\nbody %d\r\n", i, i)
		cmd := c.Append(mailbox, int64(len(msg)), nil)
		if _, err := cmd.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.Wait(); err != nil {
			t.Fatalf("APPEND: %v", err)
		}
	}
}

// both runs f for sessions 0 and 1 at the same moment and returns their
// errors.
func both(f func(i int) error) [2]error {
	var errs [2]error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = f(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

func uidsOf(set imap.NumSet) []imap.UID {
	us, _ := set.(imap.UIDSet)
	nums, _ := us.Nums()
	return nums
}

// Two sessions on one mailbox expunge, move and store the same messages at
// the same moment (what imaptest's stress mode does): every command
// succeeds, each message is removed or moved exactly once, and each
// session's view ends empty. Before, the session that lost the race got
// NO [SERVERBUG] for EXPUNGE (ExpungeDeleted read the \Deleted rows
// unlocked, then found fewer to lock and rolled back), and a MOVE reported
// the other session's destination UIDs as its own source UIDs.
func TestIMAPConcurrentExpungeMoveStore(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	u := s.user(t, url, "racer@eu.example")
	cs := twoInInbox(t, s, u.addr)
	const perRound = 4
	noop := func() {
		t.Helper()
		for _, c := range cs {
			if err := c.Noop().Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for round := range 15 {
		// EXPUNGE against EXPUNGE, after STORE against STORE.
		appendN(t, cs[0], "INBOX", perRound)
		noop()
		for i, err := range both(func(i int) error {
			_, err := cs[i].Store(imap.SeqSetNum(1, 2, 3, 4), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
				Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect()
			return err
		}) {
			if err != nil {
				t.Fatalf("round %d: session %d STORE: %v", round, i, err)
			}
		}
		var expunged [2][]uint32
		for i, err := range both(func(i int) error {
			var err error
			expunged[i], err = cs[i].Expunge().Collect()
			return err
		}) {
			if err != nil {
				t.Fatalf("round %d: session %d EXPUNGE: %v", round, i, err)
			}
		}
		noop()
		for i, c := range cs {
			if n := c.Mailbox().NumMessages; n != 0 {
				t.Fatalf("round %d: session %d sees %d messages after both EXPUNGEs (expunged %v)", round, i, n, expunged[i])
			}
		}

		// MOVE against MOVE, and STORE against them.
		appendN(t, cs[0], "INBOX", perRound)
		noop()
		uids, err := cs[0].Fetch(imap.SeqSetNum(1, 2, 3, 4), &imap.FetchOptions{UID: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var inbox []imap.UID
		for _, m := range uids {
			inbox = append(inbox, m.UID)
		}
		var moved [2]*imapclient.MoveData
		for i, err := range both(func(i int) error {
			var err error
			moved[i], err = cs[i].Move(imap.SeqSetNum(1, 2, 3, 4), "Archive").Wait()
			return err
		}) {
			if err != nil {
				t.Fatalf("round %d: session %d MOVE: %v", round, i, err)
			}
		}
		var from []imap.UID
		for i, m := range moved {
			if m == nil || m.SourceUIDs == nil {
				continue // the other session had moved them all
			}
			src := uidsOf(m.SourceUIDs)
			for _, uid := range src {
				if !slices.Contains(inbox, uid) {
					t.Fatalf("round %d: session %d MOVE reports source UID %d, not one of INBOX's %v (COPYUID %v %v)",
						round, i, uid, inbox, m.SourceUIDs, m.DestUIDs)
				}
			}
			from = append(from, src...)
		}
		slices.Sort(from)
		if !slices.Equal(from, inbox) {
			t.Fatalf("round %d: the two MOVEs moved %v, want each of %v once", round, from, inbox)
		}
		noop()
		for i, c := range cs {
			if n := c.Mailbox().NumMessages; n != 0 {
				t.Fatalf("round %d: session %d sees %d messages after both MOVEs", round, i, n)
			}
		}
	}
	st, err := cs[0].Status("Archive", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != 15*perRound {
		t.Errorf("Archive holds %d messages, want %d (each moved once)", *st.NumMessages, 15*perRound)
	}
	if err := cs[0].Logout().Wait(); err != nil && !strings.Contains(err.Error(), "closed") {
		t.Error(err)
	}
}

// A COPY racing an EXPUNGE of its messages copies each message that still
// exists and nothing else: the destination's counters (STATUS MESSAGES)
// match the messages it holds. Before, COPY read its sources unlocked, so
// a source expunged meanwhile still moved the destination's counters and
// journal (a message announced that never existed).
func TestIMAPConcurrentCopyExpunge(t *testing.T) {
	s := newStack(t)
	url := s.startRouter(nil)
	u := s.user(t, url, "copier@eu.example")
	cs := twoInInbox(t, s, u.addr)
	const perRound = 4
	for round := range 25 {
		appendN(t, cs[0], "INBOX", perRound)
		for _, c := range cs {
			if err := c.Noop().Wait(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cs[1].Store(imap.SeqSetNum(1, 2, 3, 4), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true,
			Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
			t.Fatal(err)
		}
		errs := both(func(i int) error {
			if i == 0 {
				_, err := cs[0].Copy(imap.SeqSetNum(1, 2, 3, 4), "Archive").Wait()
				if err != nil && strings.Contains(err.Error(), "SERVERBUG") {
					return err
				}
				return nil // NO for messages expunged meanwhile is fine
			}
			_, err := cs[1].Expunge().Collect()
			return err
		})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: session %d: %v", round, i, err)
			}
		}
		for _, c := range cs {
			if err := c.Noop().Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, err := cs[0].Status("Archive", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	sel, err := cs[0].Select("Archive", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != sel.NumMessages {
		t.Errorf("Archive: STATUS says %d messages, SELECT finds %d", *st.NumMessages, sel.NumMessages)
	}
	msgs, err := cs[0].Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != int(sel.NumMessages) {
		t.Errorf("Archive: SELECT says %d messages, FETCH 1:* gives %d", sel.NumMessages, len(msgs))
	}
	t.Logf("Archive holds %d copies after 25 races", len(msgs))
}

// twoInInbox logs two sessions of addr in, each with INBOX selected.
func twoInInbox(t *testing.T, s *stack, addr string) [2]*imapclient.Client {
	t.Helper()
	var cs [2]*imapclient.Client
	for i := range cs {
		cs[i] = imapLogin(t, s.imaps, addr, nil)
		if _, err := cs[i].Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	return cs
}
