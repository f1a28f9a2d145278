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
	store ClaimStore
	log   *slog.Logger
	wake  chan struct{}
}

// NewWorker makes a worker.
func NewWorker(p *Pipeline, store ClaimStore, log *slog.Logger) *Worker {
	return &Worker{p: p, store: store, log: log, wake: make(chan struct{}, 1)}
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
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			entries, err := w.store.ClaimSpool(ctx, batch, lease)
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
