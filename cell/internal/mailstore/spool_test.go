package mailstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

func TestSpoolLifecycle(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "spool@example.com", 0)
	entries := []mailstore.SpoolEntry{
		{AccountID: a.ID, MailFrom: "x@y", Rcpt: a.Address, DeliveryKey: "k1", Body: []byte("Subject: 1\r\n\r\n1\r\n")},
		{AccountID: a.ID, MailFrom: "x@y", Rcpt: a.Address, DeliveryKey: "k2", Body: []byte("Subject: 2\r\n\r\n2\r\n")},
	}
	if err := s.Spool(ctx, entries); err != nil {
		t.Fatal(err)
	}
	// The same keys again (a sender's retry): no new rows.
	if err := s.Spool(ctx, entries); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.SpoolBacklog(ctx); n != 2 {
		t.Fatalf("backlog %d, want 2", n)
	}
	// The relay claims both once; a second claim finds nothing until stale.
	claimed, err := s.ClaimForQueue(ctx, 10, time.Hour)
	if err != nil || len(claimed) != 2 || claimed[0].Body != nil {
		t.Fatalf("claim %+v %v (the relay does not need bodies)", claimed, err)
	}
	if again, _ := s.ClaimForQueue(ctx, 10, time.Hour); len(again) != 0 {
		t.Fatalf("claimed twice: %+v", again)
	}
	pending, err := s.PendingSpool(ctx, []string{claimed[0].ID, claimed[1].ID, "not-a-uuid"})
	if err != nil || len(pending) != 2 || len(pending[0].Body) == 0 {
		t.Fatalf("pending %+v %v", pending, err)
	}
	// Delivering the first marks it done and drops its body; a second
	// delivery of it is refused.
	nm := mail.NewMessage{Message: mail.Message{Subject: "1", BlobRef: "ref1", Size: 10}, SpoolID: pending[0].ID, DeliveryKey: "k1"}
	if _, err := s.InsertMessage(ctx, a.ID, boxes[mail.UseInbox].ID, nm); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertMessage(ctx, a.ID, boxes[mail.UseInbox].ID, nm); err == nil {
		t.Fatal("a delivered spool entry was delivered again")
	}
	if n, _ := s.SpoolBacklog(ctx); n != 1 {
		t.Fatalf("backlog %d after one delivery", n)
	}
	// Purge removes only delivered entries.
	n, err := s.PurgeSpool(ctx, 0)
	if err != nil || n != 1 {
		t.Fatalf("purged %d (%v), want 1", n, err)
	}
	if left, _ := s.SpoolBacklog(ctx); left != 1 {
		t.Fatalf("a pending entry was purged")
	}
}
