package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// SpoolStore is what the worker needs of the store.
type SpoolStore interface {
	ClaimSpool(ctx context.Context, n int, lease time.Duration) ([]mailstore.SpoolEntry, error)
	FinishSpool(ctx context.Context, id string) error
	RetrySpool(ctx context.Context, id, reason string, backoff time.Duration, maxAttempts int) error
	MailboxByUse(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, error)
}

// Worker files spooled messages into their recipients' INBOX. Delivery is
// idempotent on the spool entry's delivery key, so an entry processed twice
// (a crash after the insert, before it was marked done) is stored once.
type Worker struct {
	d     *Deliverer
	store SpoolStore
	log   *slog.Logger
	wake  chan struct{}
}

// NewWorker makes a worker.
func NewWorker(d *Deliverer, store SpoolStore, log *slog.Logger) *Worker {
	return &Worker{d: d, store: store, log: log, wake: make(chan struct{}, 1)}
}

// Wake asks the worker to look at the spool now.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

const (
	lease       = 15 * time.Second // a batch takes well under a second; a dead worker's entries are due again after it
	maxAttempts = 12
	batch       = 64
)

// Run processes the spool until ctx ends: at once when woken, and every
// second anyway (which also picks up entries a crashed worker leased).
func (w *Worker) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			n, err := w.once(ctx)
			if err != nil {
				w.log.Warn("spool pass failed", "err", err)
				break
			}
			if n < batch {
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

func (w *Worker) once(ctx context.Context) (int, error) {
	entries, err := w.store.ClaimSpool(ctx, batch, lease)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := w.deliver(ctx, e); err != nil {
			backoff := time.Duration(1<<min(e.Attempts, 10)) * time.Second
			w.log.Warn("spooled delivery failed; will retry", "spool", e.ID, "attempt", e.Attempts+1, "err", err)
			if rerr := w.store.RetrySpool(ctx, e.ID, err.Error(), backoff, maxAttempts); rerr != nil {
				return 0, rerr
			}
			continue
		}
		if err := w.store.FinishSpool(ctx, e.ID); err != nil {
			return 0, err
		}
	}
	return len(entries), nil
}

func (w *Worker) deliver(ctx context.Context, e mailstore.SpoolEntry) error {
	inbox, err := w.store.MailboxByUse(ctx, e.AccountID, mail.UseInbox)
	if err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	blob, err := w.d.blobs.Open(ctx, e.BlobRef)
	if err != nil {
		return fmt.Errorf("open spooled blob: %w", err)
	}
	raw, err := io.ReadAll(blob)
	blob.Close()
	if err != nil {
		return fmt.Errorf("read spooled blob: %w", err)
	}
	_, err = w.d.Deliver(ctx, e.AccountID, inbox.ID, raw, Options{Key: e.DeliveryKey})
	if errors.Is(err, mail.ErrOverQuota) {
		return err // retried; bounces come with outbound mail
	}
	return err
}
