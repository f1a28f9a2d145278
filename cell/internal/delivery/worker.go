package delivery

import (
	"context"
	"log/slog"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// ClaimStore leases spool entries (the worker without a queue).
type ClaimStore interface {
	ClaimSpool(ctx context.Context, n int, lease time.Duration) ([]mailstore.SpoolEntry, error)
}

// Worker runs the pipeline straight from the spool table, for a cell
// without a broker: it leases due entries (a crashed worker's lease ends
// and its entries are due again), so the table is the queue.
type Worker struct {
	p     *Pipeline
	claim func(ctx context.Context) ([]mailstore.SpoolEntry, error)
	every time.Duration
	log   *slog.Logger
	wake  chan struct{}
}

// NewWorker makes a worker.
func NewWorker(p *Pipeline, store ClaimStore, log *slog.Logger) *Worker {
	claim := func(ctx context.Context) ([]mailstore.SpoolEntry, error) { return store.ClaimSpool(ctx, batch, lease) }
	return &Worker{p: p, claim: claim, every: time.Second, log: log, wake: make(chan struct{}, 1)}
}

// StaleStore finds entries the queue did not deliver.
type StaleStore interface {
	ClaimStale(ctx context.Context, n int, stale, lease time.Duration) ([]mailstore.SpoolEntry, error)
}

// RescueAfter is how long a relayed entry may wait for its record before
// a worker processes it straight from the spool.
const RescueAfter = 30 * time.Second

// NewRescuer makes the queue-side safety net: every few seconds it
// processes entries relayed more than RescueAfter ago and still pending,
// so a lost record or a stuck consumer group delays mail by seconds, never
// indefinitely. Processing is idempotent on the spool entry, so racing the
// queue's own delivery of the same entry stores it once.
func NewRescuer(p *Pipeline, store StaleStore, log *slog.Logger) *Worker {
	claim := func(ctx context.Context) ([]mailstore.SpoolEntry, error) {
		es, err := store.ClaimStale(ctx, batch, RescueAfter, lease)
		if len(es) > 0 {
			log.Warn("inbound entries the queue did not deliver are processed from the spool", "entries", len(es))
		}
		return es, err
	}
	return &Worker{p: p, claim: claim, every: 5 * time.Second, log: log, wake: make(chan struct{}, 1)}
}

// Wake asks the worker to look at the spool now.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

const (
	lease = 2 * time.Minute // longer than a batch takes, checks included
	batch = 64
)

// Run processes the spool until ctx ends: at once when woken, and every
// second anyway (which also picks up entries a crashed worker leased).
func (w *Worker) Run(ctx context.Context) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			entries, err := w.claim(ctx)
			if err == nil {
				err = w.p.HandleEntries(ctx, entries)
			}
			if err != nil {
				w.log.Warn("spool pass failed", "err", err)
				break
			}
			if len(entries) < batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-t.C:
		}
	}
}
