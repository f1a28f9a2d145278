package auth

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache"
	"github.com/cellmail/cellmail/cell/internal/cache/redistest"
	"github.com/cellmail/cellmail/cell/internal/mail"
)

// clock is a test's movable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// limitsOn makes a LoginLimits over a real Redis (or, with redis == "",
// over a Cache whose Redis is down: the in-process fallback).
func limitsOn(t *testing.T, addr string) (*LoginLimits, *clock) {
	t.Helper()
	c, err := cache.New(t.Context(), cache.Config{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return NewLoginLimits(c, clk.now, nil), clk
}

// try is one login: the policy's answer, then the password's.
func try(t *testing.T, l *LoginLimits, account, source string, right bool) error {
	t.Helper()
	a, err := l.Begin(t.Context(), account, source)
	if err != nil {
		return err
	}
	if right {
		a.Succeeded(t.Context())
		return nil
	}
	a.Failed(t.Context())
	return errWrong
}

var errWrong = errors.New("wrong password")

func retryOf(t *testing.T, err error) time.Duration {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, mail.ErrRateLimited) {
		t.Fatalf("err = %v, want a *LimitError matching mail.ErrRateLimited", err)
	}
	return le.RetryAfter
}

const (
	owner    = "alice@eu.example"
	home     = "198.51.100.7"
	attacker = "203.0.113.9"
)

// An outsider's wrong passwords slow the outsider, per (account, source),
// with delays that grow and end; the owner from elsewhere gets in at once.
func TestLoginLimitsAttackerDoesNotLockOutOwner(t *testing.T) {
	for _, backend := range []string{"redis", "fallback"} {
		t.Run(backend, func(t *testing.T) {
			addr := "127.0.0.1:1" // nothing listens: the Cache falls back
			if backend == "redis" {
				addr = redistest.Start(t).Addr
			}
			l, clk := limitsOn(t, addr)
			for i := range pairFree {
				if err := try(t, l, owner, attacker, false); err != errWrong {
					t.Fatalf("failure %d: %v, want the password checked", i+1, err)
				}
			}
			// Now each further attempt waits, 1s, 2s, 4s … after the last
			// failure; refused attempts are not counted.
			for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
				for range 20 {
					if got := retryOf(t, try(t, l, owner, attacker, false)); got != want {
						t.Fatalf("delay %d: retry after %v, want %v", i, got, want)
					}
				}
				if err := try(t, l, owner, attacker, true); retryOf(t, err) != want {
					t.Fatalf("a right password inside the delay: %v, want refused (no oracle)", err)
				}
				clk.add(want)
				if err := try(t, l, owner, attacker, false); err != errWrong {
					t.Fatalf("after the delay %v: %v, want the password checked", want, err)
				}
			}
			// The owner, from home, is never slowed by that.
			for i := range 3 {
				if err := try(t, l, owner, home, true); err != nil {
					t.Fatalf("owner login %d: %v", i, err)
				}
			}
			// Nor is another user from the attacker's source.
			if err := try(t, l, "bob@eu.example", attacker, true); err != nil {
				t.Fatalf("bob from the attacker's address: %v", err)
			}
			// The delays stop at pairMax, and the bucket drains: after a
			// quiet pairLeak·(failures) the attacker's pair is free again.
			clk.add(10 * pairLeak)
			if err := try(t, l, owner, attacker, false); err != errWrong {
				t.Fatalf("after draining: %v", err)
			}
		})
	}
}

// One source guessing one password for many accounts is slowed per source;
// accounts that logged in from there before are not.
func TestLoginLimitsSourceSpraying(t *testing.T) {
	l, clk := limitsOn(t, redistest.Start(t).Addr)
	// carol has logged in from the shared address before (a NAT).
	if err := try(t, l, "carol@eu.example", attacker, true); err != nil {
		t.Fatal(err)
	}
	for i := range sourceFree {
		if err := try(t, l, fmt.Sprintf("user%d@eu.example", i), attacker, false); err != errWrong {
			t.Fatalf("spray %d: %v", i, err)
		}
	}
	if got := retryOf(t, try(t, l, "next@eu.example", attacker, false)); got != sourceBase {
		t.Fatalf("retry after %v, want %v", got, sourceBase)
	}
	// A right password of a user new to that source waits too (the source
	// is guessing); a known-good user does not.
	retryOf(t, try(t, l, "dave@eu.example", attacker, true))
	if err := try(t, l, "carol@eu.example", attacker, true); err != nil {
		t.Fatalf("known-good carol from the sprayed address: %v", err)
	}
	// Other sources are not affected.
	if err := try(t, l, "dave@eu.example", home, true); err != nil {
		t.Fatal(err)
	}
	// IPv6 sources count per /64.
	for i := range sourceFree {
		src := Source(fmt.Sprintf("[2001:db8:1:2::%x]:143", i+1))
		if err := try(t, l, fmt.Sprintf("v6user%d@eu.example", i), src, false); err != errWrong {
			t.Fatalf("v6 spray %d: %v", i, err)
		}
	}
	retryOf(t, try(t, l, "x@eu.example", Source("2001:db8:1:2:ffff::1"), false))
	clk.add(time.Hour)
	if err := try(t, l, "next@eu.example", attacker, false); err != errWrong {
		t.Fatalf("after an hour: %v", err)
	}
}

// Guessing one account from many sources (each under its own limits) makes
// the account hot: sources with failures for it are slowed hard, but a
// source with none still gets in at once.
func TestLoginLimitsAccountHot(t *testing.T) {
	l, _ := limitsOn(t, redistest.Start(t).Addr)
	for i := range accountHot {
		if err := try(t, l, owner, fmt.Sprintf("192.0.2.%d", i+1), false); err != errWrong {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	// A bot that failed once now waits hotBase instead of having four
	// more free guesses.
	if got := retryOf(t, try(t, l, owner, "192.0.2.1", false)); got != hotBase {
		t.Fatalf("hot account: retry after %v, want %v", got, hotBase)
	}
	// A fresh source's first try is checked; the owner's right password
	// works, from a new place and from home.
	if err := try(t, l, owner, "192.0.2.250", false); err != errWrong {
		t.Fatalf("a fresh source: %v", err)
	}
	if err := try(t, l, owner, home, true); err != nil {
		t.Fatalf("owner while the account is hot: %v", err)
	}
	if err := try(t, l, owner, "100.64.0.1", true); err != nil {
		t.Fatalf("owner from a new place while the account is hot: %v", err)
	}
}

// Honest clients: hundreds of right passwords in a row, from one source
// shared by several accounts, all succeed, also in parallel.
func TestLoginLimitsHonestClients(t *testing.T) {
	l, _ := limitsOn(t, redistest.Start(t).Addr)
	for i := range 500 {
		if err := try(t, l, owner, home, true); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
	}
	// Then 4 accounts of one NAT, each with 8 connections logging in at
	// once, again and again (once known good, parallel logins are fine).
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for a := range 4 {
		acct := fmt.Sprintf("user%d@eu.example", a)
		if err := try(t, l, acct, home, true); err != nil {
			t.Fatal(err)
		}
		for range 8 {
			wg.Go(func() {
				for range 20 {
					at, err := l.Begin(t.Context(), acct, home)
					if err != nil {
						errs <- err
						return
					}
					at.Succeeded(t.Context())
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("parallel login: %v", err)
	}
	// A user who mistypes a few times and then gets it right starts afresh.
	for range pairFree - 1 {
		_ = try(t, l, owner, home, false)
	}
	if err := try(t, l, owner, home, true); err != nil {
		t.Fatal(err)
	}
	for range pairFree {
		if err := try(t, l, owner, home, false); err != errWrong {
			t.Fatalf("after a success the failures start again from zero: %v", err)
		}
	}
}

// Parallel guesses cannot pass the limit together: the count is taken
// before the password is checked.
func TestLoginLimitsParallelGuesses(t *testing.T) {
	l, _ := limitsOn(t, redistest.Start(t).Addr)
	var mu sync.Mutex
	checked := 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := l.Begin(t.Context(), owner, attacker); err == nil {
				mu.Lock()
				checked++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if checked != pairFree {
		t.Fatalf("%d parallel guesses reached the password check, want %d", checked, pairFree)
	}
}

func TestSource(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":                  "192.0.2.1",
		"192.0.2.1:5555":             "192.0.2.1",
		"::ffff:192.0.2.1":           "192.0.2.1",
		"2001:db8:1:2:3:4:5:6":       "2001:db8:1:2::/64",
		"[2001:db8:1:2::9]:993":      "2001:db8:1:2::/64",
		"[fe80::1%eth0]:1":           "fe80::/64",
		"":                           "unknown",
		"unknown":                    "unknown",
		" 10.0.0.1 ":                 "10.0.0.1",
		"2001:db8:1:2:3:4:5:6, evil": "unknown",
	} {
		if got := Source(in); got != want {
			t.Errorf("Source(%q) = %q, want %q", in, got, want)
		}
	}
}
