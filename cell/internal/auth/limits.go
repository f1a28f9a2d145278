package auth

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/cellmail/cellmail/cell/internal/cache"
	"github.com/cellmail/cellmail/cell/internal/mail"
)

// Login limits (runbooks/login-limits.md is the operator's view). Every
// password check — API Login, submission AUTH (through the API), IMAP LOGIN
// and AUTHENTICATE, also after UNAUTHENTICATE — goes through one
// LoginLimits. The policy:
//
//   - Failures are counted, not successes: each attempt is counted when it
//     starts (so that parallel attempts see each other) and given back
//     when the password was right. An attempt refused by a limit is not
//     counted. Sessions and tokens are not re-counted: only password checks
//     come here.
//   - Per (account, source): the first pairFree failures are free; after
//     that each attempt waits a delay that doubles per failure, from
//     pairBase up to pairMax, counted from the last failure. The bucket
//     drains by one failure per pairLeak; a success empties it. From a
//     known-good source (below) goodFree are free, as a client's parallel
//     connections log in at once.
//   - Per source (all accounts): sourceFree free failures, then delays
//     doubling from sourceBase to sourceMax; drains by one per sourceLeak.
//     A source from which the account logged in successfully lately
//     ("known good": for goodFor after the first success, then at least
//     goodFor/2 after the last) is exempt, so a guesser behind a NAT does
//     not stop the NAT's other users.
//   - Per account (all sources): counted only. Once it passes accountHot
//     (guessing from many sources), a source that is not known good and
//     has recent failures for the account gets one free failure instead of
//     pairFree, and delays from hotBase: guessing from many sources is
//     slowed, but a source with no recent failures for the account still
//     gets in at its first try, so no one can lock the owner out.
//   - No hard lockout: every delay ends (at most 15 minutes), and buckets
//     drain by themselves.
//
// A source is the client's IP address as the router saw it; IPv6 sources
// are counted per /64 (one subscriber's prefix).
const (
	pairFree   = 5
	pairLeak   = 15 * time.Minute
	pairBase   = time.Second
	pairMax    = 15 * time.Minute
	sourceFree = 50
	sourceLeak = 30 * time.Second
	sourceBase = time.Second
	sourceMax  = 15 * time.Minute
	accountHot = 100
	// accountLeak drains the account's count by 100 an hour.
	accountLeak = 36 * time.Second
	hotFree     = 1
	// goodFree is pairFree for a known-good source: there, several
	// connections of one client log in at once (each counts until its
	// password is checked).
	goodFree = 10
	hotBase  = time.Minute
	goodFor  = 30 * 24 * time.Hour
)

// Counters keeps the limits' buckets (cache.Cache: Redis, with an
// in-process fallback).
type Counters interface {
	Take(ctx context.Context, now time.Time, buckets []cache.Bucket) (time.Duration, error)
	Give(ctx context.Context, now time.Time, buckets []cache.Bucket) error
	Levels(ctx context.Context, now time.Time, buckets []cache.Bucket) ([]float64, error)
	Forget(ctx context.Context, keys ...string) error
}

// LimitError is a login refused by a limit, before the password was
// looked at. It matches mail.ErrRateLimited.
type LimitError struct {
	RetryAfter time.Duration
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%v: too many failed logins; retry in %ds", mail.ErrRateLimited, e.RetrySeconds())
}

// Is makes errors.Is(err, mail.ErrRateLimited) true.
func (e *LimitError) Is(target error) bool { return target == mail.ErrRateLimited }

// RetrySeconds is RetryAfter in whole seconds, rounded up (what users are
// told, and a Retry-After header's value).
func (e *LimitError) RetrySeconds() int64 {
	return int64((e.RetryAfter + time.Second - 1) / time.Second)
}

// LoginLimits applies the login policy; safe for concurrent use.
type LoginLimits struct {
	c   Counters
	now func() time.Time
	log *slog.Logger
}

// NewLoginLimits makes the policy over c; now is its clock (nil:
// time.Now), log gets counter errors (nil: discarded).
func NewLoginLimits(c Counters, now func() time.Time, log *slog.Logger) *LoginLimits {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LoginLimits{c: c, now: now, log: log}
}

// Source is the key of a client address: the IP (an IPv4-mapped IPv6
// address as IPv4), an IPv6 address's /64, "unknown" when addr is not an
// IP address. addr may carry a port.
func Source(addr string) string {
	addr = strings.TrimSpace(addr)
	ap, err := netip.ParseAddrPort(addr)
	ip := ap.Addr()
	if err != nil {
		if ip, err = netip.ParseAddr(strings.Trim(addr, "[]")); err != nil {
			return "unknown"
		}
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// Keys of the buckets, for the runbook's commands (prefixed "th:" in
// Redis).
func pairKey(account, source string) string { return "login:pair:" + account + "|" + source }
func sourceKey(source string) string        { return "login:src:" + source }
func accountKey(account string) string      { return "login:acct:" + account }
func goodKey(account, source string) string { return "login:good:" + account + "|" + source }

// Attempt is one password check admitted by Begin; call Succeeded or
// Failed (or Abandoned) when its outcome is known.
type Attempt struct {
	l       *LoginLimits
	account string
	source  string
	counted []cache.Bucket
	good    float64 // the known-good bucket's level at Begin
}

// Begin is called before a password for account (the canonical address,
// known or not) is checked on behalf of source (see Source). It returns a
// *LimitError when a limit refuses the attempt: then the password must not
// be checked. When the counters fail (not for want of Redis, which has a
// fallback) the attempt is let through and the error logged.
func (l *LoginLimits) Begin(ctx context.Context, account, source string) (*Attempt, error) {
	now := l.now()
	pair := cache.Bucket{Key: pairKey(account, source), Free: pairFree, Leak: pairLeak, Base: pairBase, Max: pairMax}
	src := cache.Bucket{Key: sourceKey(source), Free: sourceFree, Leak: sourceLeak, Base: sourceBase, Max: sourceMax}
	acct := cache.Bucket{Key: accountKey(account), Leak: accountLeak, Base: time.Second, Max: time.Second, CountOnly: true}
	good := cache.Bucket{Key: goodKey(account, source), Leak: goodFor, Base: time.Second, Max: time.Second, CountOnly: true}
	lv, err := l.c.Levels(ctx, now, []cache.Bucket{acct, good})
	if err != nil {
		l.log.Warn("login limits: counters unavailable", "err", err)
		lv = []float64{0, 0}
	}
	known := lv[1] > 0
	switch {
	case known:
		pair.Free = goodFree
	case lv[0] >= accountHot:
		pair.Free, pair.Base = hotFree, hotBase
	}
	buckets := []cache.Bucket{pair, acct}
	if !known {
		buckets = append(buckets, src)
	}
	wait, err := l.c.Take(ctx, now, buckets)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		l.log.Warn("login limits: counters unavailable", "err", err)
		return &Attempt{l: l, account: account, source: source, good: lv[1]}, nil
	}
	if wait > 0 {
		return nil, &LimitError{RetryAfter: wait}
	}
	return &Attempt{l: l, account: account, source: source, counted: buckets, good: lv[1]}, nil
}

// Succeeded records a right password: the attempt is no failure, the
// (account, source) failures are forgotten, and the source becomes known
// good for the account.
func (a *Attempt) Succeeded(ctx context.Context) {
	now := a.l.now()
	a.giveBack(ctx, now, false)
	if err := a.l.c.Forget(ctx, pairKey(a.account, a.source)); err != nil {
		a.l.log.Warn("login limits: reset", "err", err)
	}
	// Known good from now: the bucket is topped up (never emptied, which
	// parallel logins would see) when it has drained below half.
	if a.good < 0.5 {
		good := cache.Bucket{Key: goodKey(a.account, a.source), Leak: goodFor, Base: time.Second, Max: time.Second, CountOnly: true}
		if _, err := a.l.c.Take(ctx, now, []cache.Bucket{good}); err != nil {
			a.l.log.Warn("login limits: mark good", "err", err)
		}
	}
}

// Failed records a wrong password (or an unknown account): it stays
// counted.
func (a *Attempt) Failed(context.Context) {}

// Abandoned records an attempt that ended without an answer on the
// password (a store error): it is not counted.
func (a *Attempt) Abandoned(ctx context.Context) { a.giveBack(ctx, a.l.now(), true) }

// giveBack takes the attempt back from the buckets it was counted in, the
// (account, source) one only when pair (a success forgets that one).
func (a *Attempt) giveBack(ctx context.Context, now time.Time, pair bool) {
	var back []cache.Bucket
	for _, b := range a.counted {
		if pair || !strings.HasPrefix(b.Key, "login:pair:") {
			back = append(back, b)
		}
	}
	if err := a.l.c.Give(ctx, now, back); err != nil {
		a.l.log.Warn("login limits: give back", "err", err)
	}
	a.counted = nil
}
