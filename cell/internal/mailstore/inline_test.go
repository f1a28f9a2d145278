package mailstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

func ref(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// A failed insert (insert_message raising) changes nothing: not the
// account, the mailbox, the spool entry or the inline blobs.
func TestFailedInsertChangesNothing(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "fail@example.com", 500)
	inbox := boxes[mail.UseInbox]
	modseq0, err := s.Modseq(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Spool(ctx, []mailstore.SpoolEntry{{AccountID: a.ID, MailFrom: "x@y", Rcpt: a.Address, DeliveryKey: "s1", Body: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	pending, err := s.ClaimSpool(ctx, 1, 0)
	if err != nil || len(pending) != 1 {
		t.Fatalf("claim %v %v", pending, err)
	}
	body := []byte("Subject: big\r\n\r\nbig\r\n")
	big := msg("big", 600, "s1")
	big.SpoolID, big.BlobRef, big.Inline = pending[0].ID, ref(body), []mail.InlineBlob{{Ref: ref(body), Data: body}}
	if _, err := s.InsertMessage(ctx, a.ID, inbox.ID, big); !errors.Is(err, mail.ErrOverQuota) {
		t.Fatalf("over quota: %v", err)
	}
	missing := msg("lost", 10, "s1")
	missing.SpoolID, missing.Inline = pending[0].ID, big.Inline
	if _, err := s.InsertMessage(ctx, a.ID, "00000000-0000-0000-0000-000000000001", missing); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("missing mailbox: %v", err)
	}
	if _, err := s.InsertMessage(ctx, "00000000-0000-0000-0000-000000000002", inbox.ID, msg("nobody", 10, "")); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("missing account: %v", err)
	}
	if n, _ := s.SpoolBacklog(ctx); n != 1 {
		t.Fatalf("spool backlog %d after failed inserts, want 1 (the entry still pending)", n)
	}
	acct, _ := s.AccountByID(ctx, a.ID)
	modseq, _ := s.Modseq(ctx, a.ID)
	mb, _ := s.Mailbox(ctx, a.ID, inbox.ID)
	if acct.UsedBytes != 0 || modseq != modseq0 || mb.Total != 0 || mb.UIDNext != 1 {
		t.Fatalf("failed inserts changed counters: used %d modseq %d→%d, mailbox %+v", acct.UsedBytes, modseq0, modseq, mb)
	}
	if _, _, found, err := s.InlineBlob(ctx, ref(body)); found || err != nil {
		t.Fatalf("inline blob of a failed insert kept (%v, %v)", found, err)
	}
	// The same entry, within quota, is delivered once; again is refused.
	ok := msg("ok", 100, "s1")
	ok.SpoolID, ok.BlobRef, ok.Inline = pending[0].ID, ref(body), big.Inline
	m, err := s.InsertMessage(ctx, a.ID, inbox.ID, ok)
	if err != nil || m.UID != 1 || m.Modseq != modseq0+1 || m.ThreadID == "" {
		t.Fatalf("delivery: %+v %v", m, err)
	}
	if _, err := s.InsertMessage(ctx, a.ID, inbox.ID, ok); !errors.Is(err, mail.ErrAlreadyDelivered) {
		t.Fatalf("second delivery of the entry: %v", err)
	}
}

// Inline blobs are read through blobstore.Tiered, shared between
// messages, and collected only when no message refers to them.
func TestInlineBlobsReadAndCollected(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "inline@example.com", 0)
	inbox := boxes[mail.UseInbox]
	files, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobs := blobstore.Tiered{Store: files, Inline: s}
	body := []byte("Subject: kept\r\n\r\nsmall\r\n")
	r := ref(body)
	var ids []string
	for _, key := range []string{"i1", "i2"} {
		nm := msg("kept", int64(len(body)), key)
		nm.BlobRef, nm.Inline = r, []mail.InlineBlob{{Ref: r, Data: body}}
		m, err := s.InsertMessage(ctx, a.ID, inbox.ID, nm)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	read := func() ([]byte, error) {
		b, err := blobs.Open(ctx, r)
		if err != nil {
			return nil, err
		}
		defer b.Close()
		if b.Size() != int64(len(body)) {
			t.Errorf("size %d, want %d", b.Size(), len(body))
		}
		return io.ReadAll(b)
	}
	if got, err := read(); err != nil || string(got) != string(body) {
		t.Fatalf("read %q %v", got, err)
	}
	if n, err := blobs.Stat(ctx, r); err != nil || n != int64(len(body)) {
		t.Fatalf("stat %d %v", n, err)
	}
	if _, err := blobs.Open(ctx, ref([]byte("other"))); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("absent blob: %v", err)
	}
	if _, err := blobs.Open(ctx, "../x"); !errors.Is(err, blobstore.ErrInvalidRef) {
		t.Fatalf("bad ref: %v", err)
	}
	// Referenced: kept even with no grace.
	if n, err := s.CollectInline(ctx, 0); err != nil || n != 0 {
		t.Fatalf("collected %d referenced blobs (%v)", n, err)
	}
	// One of the two messages expunged: still referenced by the other.
	expunge := func(id string) {
		t.Helper()
		if n, err := s.Expunge(ctx, a.ID, []string{id}); err != nil || n != 1 {
			t.Fatalf("expunged %d (%v)", n, err)
		}
	}
	expunge(ids[0])
	if n, err := s.CollectInline(ctx, 0); err != nil || n != 0 {
		t.Fatalf("collected %d blobs still referenced (%v)", n, err)
	}
	expunge(ids[1])
	// Unreferenced but younger than grace: kept.
	if n, err := s.CollectInline(ctx, 3600e9); err != nil || n != 0 {
		t.Fatalf("collected %d young blobs (%v)", n, err)
	}
	if n, err := s.CollectInline(ctx, 0); err != nil || n != 1 {
		t.Fatalf("collected %d unreferenced blobs (%v), want 1", n, err)
	}
	if _, err := read(); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("collected blob still read: %v", err)
	}
}

// InsertMessages commits a group in one transaction; when one of them
// fails, each gets its own outcome (the others are stored, once).
func TestInsertMessagesGroup(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, aboxes := account(t, s, "group-a@example.com", 0)
	b, bboxes := account(t, s, "group-b@example.com", 250)
	ins := func(acct mail.Account, box mail.Mailbox, subject string, size int64, key string) mail.Insert {
		return mail.Insert{AccountID: acct.ID, MailboxID: box.ID, Message: msg(subject, size, key)}
	}
	// All fit: one transaction, results in the order given.
	group := []mail.Insert{
		ins(b, bboxes[mail.UseInbox], "b1", 100, "gb1"),
		ins(a, aboxes[mail.UseInbox], "a1", 100, "ga1"),
		ins(a, aboxes[mail.UseArchive], "a2", 100, "ga2"),
		ins(a, aboxes[mail.UseInbox], "a3", 100, "ga3"),
	}
	res := s.InsertMessages(ctx, group)
	for i, r := range res {
		if r.Err != nil || r.Message.Subject != group[i].Message.Subject || r.Message.UID == 0 {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if res[1].Message.UID != 1 || res[3].Message.UID != 2 || res[3].Message.Modseq <= res[1].Message.Modseq {
		t.Fatalf("UIDs and modseqs not in order: %+v %+v", res[1].Message, res[3].Message)
	}
	// Again, with a new message for b that is over its quota: the
	// duplicates return the first messages, the new one of a is stored, the
	// one of b fails alone.
	again := append(group, ins(a, aboxes[mail.UseInbox], "a4", 100, "ga4"), ins(b, bboxes[mail.UseInbox], "b2", 200, "gb2"))
	res = s.InsertMessages(ctx, again)
	for i := range 4 {
		if res[i].Err != nil || res[i].Message.ID == "" {
			t.Fatalf("duplicate %d: %+v", i, res[i])
		}
	}
	if res[0].Message.UID != 1 || res[3].Message.UID != 2 {
		t.Fatalf("duplicates got new UIDs: %+v", res)
	}
	if res[4].Err != nil || res[4].Message.UID != 3 {
		t.Fatalf("a4: %+v", res[4])
	}
	if !errors.Is(res[5].Err, mail.ErrOverQuota) {
		t.Fatalf("b2 over quota: %+v", res[5])
	}
	if mb, _ := s.Mailbox(ctx, a.ID, aboxes[mail.UseInbox].ID); mb.Total != 3 {
		t.Fatalf("a's INBOX has %d messages, want 3", mb.Total)
	}
	if mb, _ := s.Mailbox(ctx, b.ID, bboxes[mail.UseInbox].ID); mb.Total != 1 {
		t.Fatalf("b's INBOX has %d messages, want 1", mb.Total)
	}
}
