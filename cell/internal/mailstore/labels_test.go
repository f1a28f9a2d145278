package mailstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

func labels(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func used(t *testing.T, s interface {
	AccountByID(context.Context, string) (mail.Account, error)
}, id string) int64 {
	t.Helper()
	a, err := s.AccountByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a.UsedBytes
}

// Labels are bounded per change, per message, per filter and per account,
// and their bytes are charged to the quota: added, removed, copied and
// expunged alike.
func TestLabelsBoundedAndCharged(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "labels@example.com", 10_000)
	inbox := boxes[mail.UseInbox]
	m, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("labelled", 1000, "l1"))
	if err != nil {
		t.Fatal(err)
	}
	base := used(t, s, a.ID)
	add := func(ls ...string) error {
		_, err := s.UpdateFlags(ctx, a.ID, []string{m.ID}, mail.FlagChange{AddLabels: ls})
		return err
	}

	// Bounds of one label and of one change.
	for _, bad := range [][]string{{""}, {strings.Repeat("x", mail.MaxLabelBytes+1)}, {"c1\u0085"}, {"bad\xff"}, labels("many", mail.MaxMessageLabels+1)} {
		if err := add(bad...); !errors.Is(err, mail.ErrInvalid) {
			t.Errorf("labels %.40q: %v, want ErrInvalid", bad, err)
		}
	}
	if got := used(t, s, a.ID); got != base {
		t.Fatalf("refused labels charged: used %d, want %d", got, base)
	}

	// Charged and refunded.
	if err := add("work", "family"); err != nil {
		t.Fatal(err)
	}
	if got := used(t, s, a.ID); got != base+int64(len("work")+len("family")) {
		t.Fatalf("used %d after adding 10 label bytes to %d", got, base)
	}
	if _, err := s.UpdateFlags(ctx, a.ID, []string{m.ID}, mail.FlagChange{RemoveLabels: []string{"family"}}); err != nil {
		t.Fatal(err)
	}
	if got := used(t, s, a.ID); got != base+4 {
		t.Fatalf("used %d after removing a label, want %d", got, base+4)
	}

	// Per message: 100 in all.
	if err := add(labels("a", mail.MaxMessageLabels-1)...); err != nil {
		t.Fatal(err)
	}
	if err := add("one-more"); !errors.Is(err, mail.ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprint(mail.MaxMessageLabels)) {
		t.Fatalf("label %d on a message: %v, want ErrInvalid naming the limit", mail.MaxMessageLabels+1, err)
	}

	// The quota: 10,000 bytes, 1000 used by the message.
	big, err := s.InsertMessage(ctx, a.ID, inbox.ID, msg("big", 8000, "l2"))
	if err != nil {
		t.Fatal(err)
	}
	before := used(t, s, a.ID)
	_, err = s.UpdateFlags(ctx, a.ID, []string{big.ID}, mail.FlagChange{AddLabels: labels(strings.Repeat("q", 150), 10)})
	if !errors.Is(err, mail.ErrOverQuota) {
		t.Fatalf("labels past the quota: %v, want ErrOverQuota", err)
	}
	if got := used(t, s, a.ID); got != before {
		t.Fatalf("used %d after a refused change, want %d", got, before)
	}

	// Copies are charged, expunges refunded.
	copies, err := s.CopyMessages(ctx, a.ID, []string{m.ID}, boxes[mail.UseArchive].ID)
	if err == nil {
		t.Fatalf("copy past the quota went through: %v", copies)
	}
	if _, err := s.Expunge(ctx, a.ID, []string{big.ID}); err != nil {
		t.Fatal(err)
	}
	withLabels := used(t, s, a.ID)
	copies, err = s.CopyMessages(ctx, a.ID, []string{m.ID}, boxes[mail.UseArchive].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := used(t, s, a.ID); got != 2*withLabels {
		t.Fatalf("used %d after copying the message and its labels, want %d", got, 2*withLabels)
	}
	if _, err := s.Expunge(ctx, a.ID, []string{m.ID, copies[0].ID}); err != nil {
		t.Fatal(err)
	}
	if got := used(t, s, a.ID); got != 0 {
		t.Fatalf("used %d with no message left, want 0", got)
	}

	// Filters: 20 labels per rule, 100 distinct in all.
	f := func(ls []string) mail.Filter { return mail.Filter{Field: "subject", Contains: "x", Labels: ls} }
	if _, err := s.SetFilters(ctx, a.ID, []mail.Filter{f(labels("f", mail.MaxFilterLabels+1))}); !errors.Is(err, mail.ErrInvalid) {
		t.Fatalf("filter with %d labels: %v, want ErrInvalid", mail.MaxFilterLabels+1, err)
	}
	var rules []mail.Filter
	for i := range 6 {
		rules = append(rules, f(labels(fmt.Sprintf("r%d-", i), mail.MaxFilterLabels)))
	}
	if _, err := s.SetFilters(ctx, a.ID, rules); !errors.Is(err, mail.ErrInvalid) {
		t.Fatalf("filters with 120 distinct labels: %v, want ErrInvalid", err)
	}
}

// An account uses at most mail.MaxAccountLabels distinct labels; labels
// no message uses any more do not count.
func TestAccountLabelsBounded(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "distinct@example.com", 0)
	var ids []string
	for i := range mail.MaxAccountLabels / mail.MaxMessageLabels {
		m, err := s.InsertMessage(ctx, a.ID, boxes[mail.UseInbox].ID, msg(fmt.Sprint("m", i), 100, fmt.Sprint("d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
		if _, err := s.UpdateFlags(ctx, a.ID, []string{m.ID}, mail.FlagChange{AddLabels: labels(fmt.Sprintf("m%d-", i), mail.MaxMessageLabels)}); err != nil {
			t.Fatalf("labels %d: %v", i*mail.MaxMessageLabels, err)
		}
	}
	extra, err := s.InsertMessage(ctx, a.ID, boxes[mail.UseInbox].ID, msg("extra", 100, "dx"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UpdateFlags(ctx, a.ID, []string{extra.ID}, mail.FlagChange{AddLabels: []string{"one-too-many"}})
	if !errors.Is(err, mail.ErrLimit) {
		t.Fatalf("label %d of the account: %v, want ErrLimit", mail.MaxAccountLabels+1, err)
	}
	// A new message a client makes (IMAP APPEND) is held to it too.
	if err := s.LabelsRoom(ctx, a.ID, []string{"one-too-many", "m0-0"}); !errors.Is(err, mail.ErrLimit) {
		t.Fatalf("room for label %d of the account: %v, want ErrLimit", mail.MaxAccountLabels+1, err)
	}
	if err := s.LabelsRoom(ctx, a.ID, labels("m1-", 5)); err != nil {
		t.Fatalf("room for labels the account has: %v", err)
	}
	// Labels that one message dropped make room.
	if _, err := s.UpdateFlags(ctx, a.ID, []string{ids[0]}, mail.FlagChange{RemoveLabels: labels("m0-", 10)}); err != nil {
		t.Fatal(err)
	}
	if err := s.LabelsRoom(ctx, a.ID, []string{"one-too-many"}); err != nil {
		t.Fatalf("room after dropping labels: %v", err)
	}
	if _, err := s.UpdateFlags(ctx, a.ID, []string{extra.ID}, mail.FlagChange{AddLabels: []string{"now-there-is-room"}}); err != nil {
		t.Fatalf("after dropping labels: %v", err)
	}
}

// IMAP's STORE FLAGS replaces the labels IMAP shows (keywords) and leaves
// the others, which an IMAP client cannot see, alone: a client replacing
// flags must not delete the webmail's "Work Projects".
func TestReplaceKeepsLabelsIMAPCannotShow(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, boxes := account(t, s, "hidden@example.com", 10_000)
	m, err := s.InsertMessage(ctx, a.ID, boxes[mail.UseInbox].ID, msg("hidden", 1000, "h1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateFlags(ctx, a.ID, []string{m.ID}, mail.FlagChange{AddLabels: []string{"Work Projects", "Réunion", "old"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateFlags(ctx, a.ID, []string{m.ID}, mail.FlagChange{ReplaceLabels: true, AddLabels: []string{"new"}}); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Message(ctx, a.ID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"Work Projects": true, "Réunion": true, "new": true}
	if len(got.Labels) != len(want) {
		t.Fatalf("labels after a replace: %q, want %v", got.Labels, want)
	}
	for _, l := range got.Labels {
		if !want[l] {
			t.Fatalf("labels after a replace: %q, want %v", got.Labels, want)
		}
	}
}
