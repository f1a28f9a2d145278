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
	Log   *slog.Logger
	wake  chan struct{}
}

// NewRelay makes a relay.
func NewRelay(store RelayStore, pub Publisher, log *slog.Logger) *Relay {
	return &Relay{Store: store, Pub: pub, Stale: 2 * time.Minute, Log: log, wake: make(chan struct{}, 1)}
}

// Wake asks the relay to look at the spool now (an acceptance committed).
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

const relayBatch = 256

// Run relays until ctx ends: when woken, and every second (the sweeper).
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
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-t.C:
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
