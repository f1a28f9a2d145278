package mailstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/internal/pgserver"
)

var pg *pgserver.Server

func TestMain(m *testing.M) { os.Exit(pgserver.TestMain(m, "mailstore", &pg)) }

func open(t testing.TB) *mailstore.Store {
	t.Helper()
	dsn, err := pg.NewDB()
	if err != nil {
		t.Fatal(err)
	}
	s, err := mailstore.Open(context.Background(), dsn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func account(t testing.TB, s *mailstore.Store, addr string, quota int64) (mail.Account, map[mail.SpecialUse]mail.Mailbox) {
	t.Helper()
	a, err := s.CreateAccount(context.Background(), mail.Account{Address: addr, Domain: "example.com", PlacementKey: addr,
		Jurisdiction: "eu", KeyHash: 42, PasswordHash: "x", QuotaBytes: quota})
	if err != nil {
		t.Fatal(err)
	}
	boxes, _, err := s.ListMailboxes(context.Background(), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	by := map[mail.SpecialUse]mail.Mailbox{}
	for _, b := range boxes {
		by[b.SpecialUse] = b
	}
	return a, by
}

func msg(subject string, size int64, key string) mail.NewMessage {
	return mail.NewMessage{Message: mail.Message{Subject: subject, Size: size, BlobRef: "ref-" + subject, MessageID: "<" + subject + "@x>"}, DeliveryKey: key}
}

func TestAccountsAndDefaultMailboxes(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "alice@example.com", 0)
	if len(boxes) != len(mail.DefaultMailboxes) {
		t.Fatalf("%d special mailboxes, want %d", len(boxes), len(mail.DefaultMailboxes))
	}
	if _, err := s.CreateAccount(ctx, mail.Account{Address: "alice@example.com", PasswordHash: "x"}); !errors.Is(err, mail.ErrExists) {
		t.Fatalf("duplicate account: %v", err)
	}
	got, err := s.AccountByAddress(ctx, "alice@example.com")
	if err != nil || got.ID != a.ID {
		t.Fatalf("by address: %v %v", got, err)
	}
	if _, err := s.AccountByID(ctx, "not-a-uuid"); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("malformed id: %v", err)
	}
	for _, tc := range []struct {
		domain, key, jur string
		start, end       uint64
		want             uint64
	}{
		{domain: "example.com", want: 1}, {domain: "other.com", want: 0},
		{key: "alice@example.com", want: 1}, {jur: "eu", start: 0, end: 43, want: 1},
		{jur: "eu", start: 43, end: 100, want: 0}, {jur: "us", start: 0, end: 1 << 56, want: 0},
	} {
		n, err := s.CountPlaced(ctx, tc.domain, tc.key, tc.jur, tc.start, tc.end)
		if err != nil || n != tc.want {
			t.Errorf("count %+v = %d, %v; want %d", tc, n, err, tc.want)
		}
	}
}

func TestMailboxLifecycle(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "a@example.com", 0)
	work, err := s.CreateMailbox(ctx, a.ID, "Work", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMailbox(ctx, a.ID, "Work/2026", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMailbox(ctx, a.ID, "Work", true); !errors.Is(err, mail.ErrExists) {
		t.Fatalf("duplicate mailbox: %v", err)
	}
	if _, err := s.RenameMailbox(ctx, a.ID, work.ID, "Job"); err != nil {
		t.Fatal(err)
	}
	list, _, _ := s.ListMailboxes(ctx, a.ID)
	names := map[string]bool{}
	for _, b := range list {
		names[b.Name] = true
	}
	if !names["Job"] || !names["Job/2026"] || names["Work"] {
		t.Fatalf("after rename: %v", names)
	}
	if _, err := s.RenameMailbox(ctx, a.ID, boxes[mail.UseInbox].ID, "Other"); !errors.Is(err, mail.ErrInvalid) {
		t.Fatalf("rename INBOX: %v", err)
	}
	if err := s.DeleteMailbox(ctx, a.ID, work.ID); !errors.Is(err, mail.ErrInvalid) {
		t.Fatalf("delete with children: %v", err)
	}
	if err := s.DeleteMailbox(ctx, a.ID, boxes[mail.UseTrash].ID); !errors.Is(err, mail.ErrInvalid) {
		t.Fatalf("delete Trash: %v", err)
	}
}

func TestInsertIsIdempotentAndCounts(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "a@example.com", 1000)
	inbox := boxes[mail.UseInbox]
	m1, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("one", 400, "k1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("one", 400, "k1"))
	if err != nil || again.ID != m1.ID || again.UID != m1.UID {
		t.Fatalf("retried delivery stored twice: %+v %v", again, err)
	}
	if _, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("two", 400, "k2")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("three", 400, "k3")); !errors.Is(err, mail.ErrOverQuota) {
		t.Fatalf("over quota: %v", err)
	}
	mb, _ := s.Mailbox(ctx, a.ID, inbox.ID)
	if mb.Total != 2 || mb.Unread != 2 || mb.UIDNext != 3 {
		t.Fatalf("mailbox counters %+v", mb)
	}
	acct, _ := s.AccountByID(ctx, a.ID)
	if acct.UsedBytes != 800 {
		t.Fatalf("used %d, want 800", acct.UsedBytes)
	}
	// A reply joins the thread of the message it references.
	reply := msg("re-one", 10, "k4")
	reply.ThreadRefs = []string{"<one@x>"}
	r, err := s.InsertMessage(ctx, a.ID, inbox.ID, reply)
	if !errors.Is(err, mail.ErrOverQuota) && err != nil {
		t.Fatal(err)
	}
	if err == nil && r.ThreadID != m1.ThreadID {
		t.Fatalf("reply thread %s, want %s", r.ThreadID, m1.ThreadID)
	}
}

// Paging by UID is stable while new messages arrive.
func TestPagingStableUnderConcurrentInserts(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "a@example.com", 0)
	inbox := boxes[mail.UseInbox].ID
	for i := range 50 {
		if _, err := s.InsertMessage(ctx, a.ID, inbox, msg(fmt.Sprint(i), 1, "")); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 30 {
			if _, err := s.InsertMessage(ctx, a.ID, inbox, msg(fmt.Sprint("new", i), 1, "")); err != nil {
				t.Error(err)
			}
		}
	}()
	seen := map[uint32]bool{}
	var before uint32
	first := true
	for {
		page, err := s.ListMessages(ctx, a.ID, inbox, mail.ListFilter{}, before, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page {
			if seen[m.UID] {
				t.Fatalf("uid %d seen twice", m.UID)
			}
			if !first && m.UID >= before {
				t.Fatalf("uid %d not below the page token %d", m.UID, before)
			}
			seen[m.UID] = true
		}
		first = false
		if len(page) < 7 {
			break
		}
		before = page[len(page)-1].UID
	}
	wg.Wait()
	for uid := uint32(1); uid <= 50; uid++ {
		if !seen[uid] {
			t.Fatalf("message uid %d, there before paging began, was skipped", uid)
		}
	}
}

func TestFlagsMoveExpungeAndJournal(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "a@example.com", 0)
	inbox, trash := boxes[mail.UseInbox].ID, boxes[mail.UseTrash].ID
	var ids []string
	for i := range 5 {
		m, err := s.InsertMessage(ctx, a.ID, inbox, msg(fmt.Sprint(i), 10, ""))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	_, since, _ := s.ListMailboxes(ctx, a.ID)
	yes := true
	n, err := s.UpdateFlags(ctx, a.ID, ids[:3], mail.FlagChange{Seen: &yes, AddLabels: []string{"work"}})
	if err != nil || n != 3 {
		t.Fatalf("flags: %d %v", n, err)
	}
	if n, _ := s.UpdateFlags(ctx, a.ID, ids[:3], mail.FlagChange{Seen: &yes}); n != 0 {
		t.Fatalf("unchanged flags counted: %d", n)
	}
	labelled, _ := s.ListMessages(ctx, a.ID, inbox, mail.ListFilter{Label: "work"}, 0, 10)
	unread, _ := s.ListMessages(ctx, a.ID, inbox, mail.ListFilter{UnreadOnly: true}, 0, 10)
	if len(labelled) != 3 || len(unread) != 2 {
		t.Fatalf("label filter %d, unread filter %d", len(labelled), len(unread))
	}
	moved, err := s.MoveMessages(ctx, a.ID, ids[:2], trash)
	if err != nil || len(moved) != 2 {
		t.Fatalf("move: %v %v", moved, err)
	}
	if n, err := s.Expunge(ctx, a.ID, ids[:1]); err != nil || n != 1 {
		t.Fatalf("expunge: %d %v", n, err)
	}
	in, _ := s.Mailbox(ctx, a.ID, inbox)
	tr, _ := s.Mailbox(ctx, a.ID, trash)
	if in.Total != 3 || in.Unread != 2 || tr.Total != 1 || tr.Unread != 0 {
		t.Fatalf("counters inbox %+v trash %+v", in, tr)
	}
	changes, state, more, cannot, err := s.Changes(ctx, a.ID, since, 100)
	if err != nil || more || cannot {
		t.Fatal(err, more, cannot)
	}
	kinds := map[string]int{}
	last := since
	for _, c := range changes {
		if c.Modseq <= last {
			t.Fatalf("journal not in rising modseq order: %d after %d", c.Modseq, last)
		}
		last = c.Modseq
		kinds[c.Kind]++
	}
	if kinds[mail.ChangeFlags] != 3 || kinds[mail.ChangeMessageAdded] != 2 || kinds[mail.ChangeMessageRemoved] != 3 || state != last {
		t.Fatalf("journal %v, state %d last %d", kinds, state, last)
	}
	page, _, more, _, _ := s.Changes(ctx, a.ID, since, 2)
	if len(page) != 2 || !more {
		t.Fatalf("paged journal %d more=%v", len(page), more)
	}
}

// Nothing of one account is reachable by another account's id.
func TestAccountsAreIsolated(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, aboxes := account(t, s, "a@example.com", 0)
	b, bboxes := account(t, s, "b@example.com", 0)
	m, err := s.InsertMessage(ctx, a.ID, aboxes[mail.UseInbox].ID, msg("secret", 10, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Message(ctx, b.ID, m.ID); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("b read a's message: %v", err)
	}
	yes := true
	if n, _ := s.UpdateFlags(ctx, b.ID, []string{m.ID}, mail.FlagChange{Seen: &yes}); n != 0 {
		t.Fatal("b flagged a's message")
	}
	if _, err := s.MoveMessages(ctx, b.ID, []string{m.ID}, bboxes[mail.UseTrash].ID); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("b moved a's message: %v", err)
	}
	if _, err := s.MoveMessages(ctx, a.ID, []string{m.ID}, bboxes[mail.UseTrash].ID); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("a moved into b's mailbox: %v", err)
	}
	if n, _ := s.Expunge(ctx, b.ID, []string{m.ID}); n != 0 {
		t.Fatal("b expunged a's message")
	}
	if list, err := s.ListMessages(ctx, b.ID, aboxes[mail.UseInbox].ID, mail.ListFilter{}, 0, 10); err != nil || len(list) != 0 {
		t.Fatalf("b listed a's INBOX: %d %v", len(list), err)
	}
	if _, err := s.Mailbox(ctx, b.ID, aboxes[mail.UseInbox].ID); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("b opened a's mailbox: %v", err)
	}
	if _, _, err := s.Message(ctx, a.ID, m.ID); err != nil {
		t.Fatalf("a lost its own message: %v", err)
	}
}

func TestSessions(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, _ := account(t, s, "a@example.com", 0)
	fam := mailstore.NewID()
	if err := s.CreateSession(ctx, []byte("h1"), mailstore.Session{AccountID: a.ID, Kind: mailstore.SessionAccess, Family: fam, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, []byte("old"), mailstore.Session{AccountID: a.ID, Kind: mailstore.SessionAccess, Family: fam, ExpiresAt: time.Now().Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	if sess, err := s.SessionByHash(ctx, []byte("h1")); err != nil || sess.AccountID != a.ID {
		t.Fatalf("live session: %v", err)
	}
	if _, err := s.SessionByHash(ctx, []byte("old")); !errors.Is(err, mail.ErrUnauthorized) {
		t.Fatalf("expired session: %v", err)
	}
	if ok, _ := s.ConsumeSession(ctx, []byte("h1")); !ok {
		t.Fatal("consume failed")
	}
	if ok, _ := s.ConsumeSession(ctx, []byte("h1")); ok {
		t.Fatal("consumed twice")
	}
}

// Mailbox names are stored in NFC, so an NFD look-alike is the same
// mailbox (created: exists; looked up: found); a bidi override or a C1
// control is refused, for CREATE and RENAME alike (the API and IMAP both
// come through the store).
func TestMailboxNamesNormalised(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, _ := account(t, s, "names@example.com", 0)
	mb, err := s.CreateMailbox(ctx, a.ID, "caf\u00e9", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMailbox(ctx, a.ID, "cafe\u0301", true); !errors.Is(err, mail.ErrExists) {
		t.Fatalf("NFD look-alike: %v, want ErrExists", err)
	}
	if got, err := s.MailboxByName(ctx, a.ID, "cafe\u0301"); err != nil || got.ID != mb.ID {
		t.Fatalf("lookup by the NFD form: %v %v", got, err)
	}
	for _, name := range []string{"evil\u202egpj.exe", "c1\u0085x", "\u200fmark"} {
		if _, err := s.CreateMailbox(ctx, a.ID, name, true); !errors.Is(err, mail.ErrInvalid) {
			t.Errorf("create %q: %v, want ErrInvalid", name, err)
		}
		if _, err := s.RenameMailbox(ctx, a.ID, mb.ID, name); !errors.Is(err, mail.ErrInvalid) {
			t.Errorf("rename to %q: %v, want ErrInvalid", name, err)
		}
	}
	other, err := s.CreateMailbox(ctx, a.ID, "other", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RenameMailbox(ctx, a.ID, other.ID, "cafe\u0301"); !errors.Is(err, mail.ErrExists) {
		t.Fatalf("rename to the NFD look-alike: %v, want ErrExists", err)
	}
	boxes, _, err := s.ListMailboxes(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range boxes {
		if b.Name == "caf\u00e9" || b.Name == "cafe\u0301" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d café mailboxes, want 1", n)
	}
}

// A RENAME takes the mailboxes and subscriptions under a name along, whatever
// its characters: the children's rest is cut at the old name's length in
// characters (SQL substr), not in bytes ("Réunion" is 7 of them, 8 bytes).
func TestRenameNonASCIIParent(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, _ := account(t, s, "rename-utf8@example.com", 0)
	parent, err := s.CreateMailbox(ctx, a.ID, "Réunion", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMailbox(ctx, a.ID, "Réunion/Notes", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RenameMailbox(ctx, a.ID, parent.ID, "Meetings"); err != nil {
		t.Fatal(err)
	}
	list, _, _ := s.ListMailboxes(ctx, a.ID)
	names := map[string]bool{}
	for _, b := range list {
		names[b.Name] = true
	}
	if !names["Meetings"] || !names["Meetings/Notes"] || names["Réunion/Notes"] {
		t.Errorf("mailboxes after rename: %v", names)
	}
	subs, err := s.Subscriptions(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !subs["Meetings"] || !subs["Meetings/Notes"] || subs["Réunion/Notes"] {
		t.Errorf("subscriptions after rename: %v", subs)
	}
}
