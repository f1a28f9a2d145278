package delivery_test

import (
	"context"
	"errors"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// ownAll is a fence that owns every address (the fence itself is tested
// in cell/internal/ownership and e2e).
type ownAll struct{}

func (ownAll) Check(_ context.Context, address string, _ uint64) (placement.Route, error) {
	a, err := placement.ParseAddress(address)
	return placement.Route{Address: a}, err
}

// A recipient is found through the fence; an unknown one is not_found and
// one whose mailbox is full is over quota at once (the sender keeps the
// message), not accepted for the pipeline to refuse with nobody to tell.
func TestAcceptorRecipient(t *testing.T) {
	f := setup(t, false)
	acc := delivery.NewAcceptor(delivery.AcceptorConfig{Fence: ownAll{}, Store: f.store, Blobs: f.blobs})
	defer acc.Close()
	ctx := t.Context()
	rc, err := acc.Recipient(ctx, "Bob@Demo.Example", 0)
	if err != nil || rc.AccountID != f.account.ID || rc.Address != f.account.Address {
		t.Fatalf("recipient: %+v %v", rc, err)
	}
	if _, err := acc.Recipient(ctx, "nobody@demo.example", 0); !errors.Is(err, mail.ErrNotFound) {
		t.Fatalf("unknown recipient: %v, want not found", err)
	}
	small, err := f.store.CreateAccount(ctx, mail.Account{Address: "small@demo.example", Domain: "demo.example",
		PlacementKey: "small@demo.example", Jurisdiction: "eu", KeyHash: 1, PasswordHash: "x", QuotaBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	roomy, err := acc.Recipient(ctx, small.Address, 0)
	if err != nil {
		t.Fatalf("recipient with room: %v", err)
	}
	if roomy.Fits(50) {
		t.Fatal("a message that with the pipeline's fields overruns the quota fits")
	}
	if !rc.Fits(10 << 20) {
		t.Fatal("a 10 MB message does not fit a 1 GiB quota")
	}
	inbox, err := f.store.MailboxByUse(ctx, small.ID, mail.UseInbox)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte("Subject: fills it\r\n\r\n")
	raw = append(raw, make([]byte, 100-len(raw)-2)...)
	raw = append(raw, "\r\n"...)
	for i := range raw[:len(raw)-2] {
		if raw[i] == 0 {
			raw[i] = 'x'
		}
	}
	if _, err := f.p.D.Deliver(ctx, small.ID, inbox.ID, raw, delivery.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := acc.Recipient(ctx, small.Address, 0); !errors.Is(err, mail.ErrOverQuota) {
		t.Fatalf("recipient with a full mailbox: %v, want over quota", err)
	}
}
