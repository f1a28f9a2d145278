package delivery

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// RelayStore is the spool as the relay uses it.
type RelayStore interface {
	ClaimForQueue(ctx context.Context, n int, stale time.Duration) ([]mailstore.SpoolEntry, error)
	UnclaimForQueue(ctx context.Context, ids []string) error
}

// Publisher sends spool entries to the `inbound` topic, durably (acks from
// the broker) before it returns.
type Publisher interface {
	PublishInbound(ctx context.Context, entries []mailstore.SpoolEntry) error
}

// Relay is the outbox relay from the spool table to the `inbound` topic,
// and its sweeper: an entry relayed more than Stale ago and still pending
// (its record lost with a broker's data, or its worker stuck) is relayed
// again. Losing the queue therefore loses no mail; a record relayed twice
// is skipped by the pipeline (it finds the entry delivered).
type Relay struct {
	Store RelayStore
	Pub   Publisher
	Stale time.Duration // default 2 minutes
	// Linger is how long the entries Publish is given wait for others to
	// share their produce request (default DirectLinger).
	Linger time.Duration
	Log    *slog.Logger
	wake   chan struct{}
	// direct: entries committed as relayed (mailstore.SpoolEntry.Relayed)
	// by this process, to publish without claiming them.
	direct chan []mailstore.SpoolEntry
}

// NewRelay makes a relay.
func NewRelay(store RelayStore, pub Publisher, log *slog.Logger) *Relay {
	return &Relay{Store: store, Pub: pub, Stale: 2 * time.Minute, Linger: DirectLinger, Log: log, wake: make(chan struct{}, 1),
		direct: make(chan []mailstore.SpoolEntry, 256)}
}

// Publish publishes entries this process has just committed as relayed:
// one statement and one commit fewer per acceptance than claiming them.
// When too many wait, they are released for the relay to claim instead.
func (r *Relay) Publish(entries []mailstore.SpoolEntry) {
	slim := make([]mailstore.SpoolEntry, len(entries))
	for i, e := range entries {
		slim[i] = mailstore.SpoolEntry{ID: e.ID, AccountID: e.AccountID} // what a record carries; not the bodies
	}
	entries = slim
	select {
	case r.direct <- entries:
	default:
		go r.release(context.Background(), entries)
	}
}

// release makes entries due for the relay's claim at once.
func (r *Relay) release(ctx context.Context, entries []mailstore.SpoolEntry) {
	if err := r.Store.UnclaimForQueue(context.WithoutCancel(ctx), spoolIDs(entries)); err != nil {
		r.Log.Warn("relay could not release entries; the sweeper will", "err", err)
	}
	r.Wake()
}

// DirectLinger is how long entries accepted one at a time wait for more
// before they are published: the sender already has its 250 (the spool
// row is committed), so a few milliseconds here cost no latency anyone
// sees, and they make one record batch, one broker write, one consumer
// fetch and one delivery transaction of what would be several.
const DirectLinger = 5 * time.Millisecond

// publishDirect publishes what Publish was given, with what more it is
// given within Linger, in one batch.
func (r *Relay) publishDirect(ctx context.Context, first []mailstore.SpoolEntry) {
	entries := first
	var deadline <-chan time.Time
	if r.Linger > 0 {
		t := time.NewTimer(r.Linger)
		defer t.Stop()
		deadline = t.C
	}
	for more := true; more && len(entries) < relayBatch; {
		if deadline == nil {
			select {
			case es := <-r.direct:
				entries = append(entries, es...)
			default:
				more = false
			}
			continue
		}
		select {
		case es := <-r.direct:
			entries = append(entries, es...)
		case <-deadline:
			more = false
		case <-ctx.Done():
			more = false // published below all the same: ctx ends the produce, and the relay's claim takes them
		}
	}
	if err := r.Pub.PublishInbound(ctx, entries); err != nil {
		r.Log.Warn("publishing accepted entries failed; the relay will claim them", "entries", len(entries), "err", err)
		r.release(ctx, entries)
	}
}

// Wake asks the relay to look at the spool now (an acceptance committed).
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

const relayBatch = 256

// Run relays until ctx ends: what Publish is given, at once; and what
// the spool holds when woken, and every second (the sweeper).
func (r *Relay) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			n, err := r.Once(ctx)
			if err != nil {
				r.Log.Warn("spool relay failed; retrying", "err", err)
				break
			}
			if n < relayBatch {
				break
			}
		}
		if !r.await(ctx, t.C) {
			return
		}
	}
}

// await publishes what Publish is given until a wake-up or a tick says to
// look at the spool; false when ctx ended.
func (r *Relay) await(ctx context.Context, tick <-chan time.Time) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case es := <-r.direct:
			r.publishDirect(ctx, es)
		case <-r.wake:
			return true
		case <-tick:
			return true
		}
	}
}

// Once relays one batch and returns how many entries it sent.
func (r *Relay) Once(ctx context.Context) (int, error) {
	entries, err := r.Store.ClaimForQueue(ctx, relayBatch, r.Stale)
	if err != nil || len(entries) == 0 {
		return 0, err
	}
	if err := r.Pub.PublishInbound(ctx, entries); err != nil {
		// Due again at once, not after Stale.
		if uerr := r.Store.UnclaimForQueue(context.WithoutCancel(ctx), spoolIDs(entries)); uerr != nil {
			r.Log.Warn("relay could not release entries; the sweeper will", "err", uerr)
		}
		return 0, fmt.Errorf("publish %d entries: %w", len(entries), err)
	}
	return len(entries), nil
}

func spoolIDs(es []mailstore.SpoolEntry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}
