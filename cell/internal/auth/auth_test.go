package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

var cheap = Params{MemoryKiB: 64, Time: 1, Threads: 1}

func TestHashVerify(t *testing.T) {
	h := NewHasher(cheap)
	ctx := context.Background()
	enc, err := h.Hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("encoding %q", enc)
	}
	if err := h.Verify(ctx, enc, "correct horse"); err != nil {
		t.Fatal(err)
	}
	if err := h.Verify(ctx, enc, "wrong horse"); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong password: %v", err)
	}
	// An unknown user (no hash) gets the same error after the same work.
	if err := h.Verify(ctx, "", "anything"); !errors.Is(err, ErrMismatch) {
		t.Fatalf("unknown user: %v", err)
	}
	if err := h.Verify(ctx, "$bcrypt$x", "x"); err == nil || errors.Is(err, ErrMismatch) {
		t.Fatalf("foreign format: %v", err)
	}
	other, _ := h.Hash(ctx, "correct horse")
	if other == enc {
		t.Fatal("two hashes of one password are equal: no salt")
	}
}

func TestTokens(t *testing.T) {
	tok, err := NewToken("alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if sub, ok := Subject(tok); !ok || sub != "alice@example.com" {
		t.Fatalf("subject %q %v", sub, ok)
	}
	for _, bad := range []string{"", "cm1.", "cm1.YQ", "xx1.YQ.AAAA", "cm1.!!!.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", tok + "x"} {
		if _, ok := Subject(bad); ok {
			t.Errorf("Subject(%q) accepted", bad)
		}
	}
	other, _ := NewToken("alice@example.com")
	if other == tok || string(Hash(tok)) == string(Hash(other)) {
		t.Fatal("tokens repeat")
	}
}

// BenchmarkLogin is the cost of one password check at the OWASP
// parameters (19 MiB, t=2, p=1): what a login costs the cell.
func BenchmarkLogin(b *testing.B) {
	h := NewHasher(OWASP)
	ctx := context.Background()
	enc, _ := h.Hash(ctx, "correct horse battery")
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Verify(ctx, enc, "correct horse battery"); err != nil {
			b.Fatal(err)
		}
	}
}
