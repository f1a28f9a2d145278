// Package auth is how the cell authenticates: it hashes passwords with
// argon2id, mints and parses session tokens, and applies the login limits
// (LoginLimits) to every password check. A token names its subject (so the
// router can route it without a lookup) and carries 256 random bits; only
// its SHA-256 is stored, so a database leak yields no usable token.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/crypto/argon2"

	"github.com/cellmail/cellmail/controlplane/routing"
)

// Params are argon2id's cost parameters.
type Params struct {
	MemoryKiB uint32
	Time      uint32
	Threads   uint8
}

// OWASP is the OWASP Password Storage Cheat Sheet's first argon2id
// configuration: 19 MiB, 2 iterations, 1 lane.
var OWASP = Params{MemoryKiB: 19 * 1024, Time: 2, Threads: 1}

// ErrMismatch is returned for a wrong password (or an unknown user).
var ErrMismatch = errors.New("password does not match")

// Hasher hashes and verifies passwords, bounding how many argon2id
// computations (19 MiB each) run at once.
type Hasher struct {
	p     Params
	slots chan struct{}
	dummy string
}

// NewHasher makes a hasher with the given cost.
func NewHasher(p Params) *Hasher {
	h := &Hasher{p: p, slots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
	h.dummy, _ = h.Hash(context.Background(), "dummy password for unknown users")
	return h
}

// Hash returns the PHC string of password.
func (h *Hasher) Hash(ctx context.Context, password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key, err := h.derive(ctx, password, salt, h.p)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, h.p.MemoryKiB, h.p.Time, h.p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

func (h *Hasher) derive(ctx context.Context, password string, salt []byte, p Params) ([]byte, error) {
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-h.slots }()
	return argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, 32), nil
}

// Verify checks password against a PHC string. An empty encoded hash (the
// user does not exist) is checked against a dummy hash, so the answer takes
// the same time and says the same thing as a wrong password.
func (h *Hasher) Verify(ctx context.Context, encoded, password string) error {
	if encoded == "" {
		encoded = h.dummy
		password += "\x00never"
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return fmt.Errorf("unknown password hash format")
	}
	var p Params
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.MemoryKiB, &p.Time, &p.Threads); err != nil {
		return fmt.Errorf("bad password hash parameters: %w", err)
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil {
		return errors.New("bad password hash encoding")
	}
	got, err := h.derive(ctx, password, salt, p)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrMismatch
	}
	return nil
}

// NewToken mints a token for subject (a canonical address), in the format
// the router reads the subject from (routing.FormatToken).
func NewToken(subject string) (string, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	return routing.FormatToken(subject, secret), nil
}

// Subject returns the subject a token names, without checking it.
func Subject(token string) (string, bool) {
	sub, secret, ok := routing.ParseToken(token)
	if !ok || len(secret) != 43 { // 32 bytes, base64url without padding
		return "", false
	}
	return sub, true
}

// Hash is what is stored of a token.
func Hash(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}
