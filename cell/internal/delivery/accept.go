package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/internal/trace"
)

// Acceptor is the one way a message is accepted for a mailbox of this cell
// (DESIGN.md §4, "One way in"), whatever it came by: the MX's LMTP, a
// hosted sender's SendMessage or submission, another cell's
// DeliveryService. Accepting commits one spool row per recipient — the
// message inside the rows when small (MaxInline), else in the blob store,
// fsync'd first — before it returns, so a caller may acknowledge (250, 2xx)
// only after Accept returned nil; then the pipeline files it (virus, SPF,
// DKIM and DMARC where the edge's trace field gives them, spam, the
// recipient's filters, one insert, the `changes` event, wake-ups).
//
// Concurrent acceptances are group committed: one transaction, so one WAL
// flush, per batch of every acceptance waiting; while a batch commits the
// next one gathers, so under load one flush serves many messages and a lone
// message waits for nobody. The committed entries go straight to the relay
// (AcceptorConfig.Relay), not through its claim.
type Acceptor struct {
	cfg      AcceptorConfig
	reqs     chan *acceptance
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// SpoolStore is the spool as acceptance uses it.
type SpoolStore interface {
	AccountByAddress(ctx context.Context, address string) (mail.Account, error)
	Spool(ctx context.Context, entries []mailstore.SpoolEntry) error
}

// Fence is the ownership check run on each recipient, with the caller's
// map epoch.
type Fence interface {
	Check(ctx context.Context, address string, callerEpoch uint64) (placement.Route, error)
}

// Putter stores blobs, durably when Put returns.
type Putter interface {
	Put(ctx context.Context, r io.Reader) (string, int64, error)
}

// AcceptorConfig wires an Acceptor.
type AcceptorConfig struct {
	Fence Fence
	Store SpoolStore
	Blobs Putter
	// Relay, when set, takes the committed entries of each group commit to
	// publish them to the queue at once (mailstore.SpoolEntry.Relayed).
	Relay func(entries []mailstore.SpoolEntry)
	// Wake, when Relay is not set, tells the spool worker there is work.
	Wake func()
	Log  *slog.Logger
}

// MaxInline is the most message bytes (size times recipients) kept in the
// spool rows themselves rather than in a blob: accepting them costs one
// share of a group commit and no file fsync.
const MaxInline = 1 << 20

// maxBatch bounds one group commit.
const maxBatch = 512

// NewAcceptor starts an acceptor; Close stops it.
func NewAcceptor(cfg AcceptorConfig) *Acceptor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	a := &Acceptor{cfg: cfg, reqs: make(chan *acceptance, 1024), stop: make(chan struct{}), done: make(chan struct{})}
	go a.commitLoop()
	return a
}

// Close stops the group commit; acceptances waiting get an error. It
// returns when no commit runs any more.
func (a *Acceptor) Close() {
	a.stopOnce.Do(func() { close(a.stop) })
	<-a.done
}

// Recipient is one accepted recipient: an account of this cell.
type Recipient struct {
	AccountID string
	Address   string // canonical
	// room is what the account's quota leaves (-1: no quota), as of
	// Recipient.
	room int64
}

// PrefixAllowance is the room left for the header fields the pipeline
// adds in front of a message (Authentication-Results, the spam verdict).
const PrefixAllowance = 1 << 10

// Fits reports whether a message of size bytes fits the recipient's quota
// (with PrefixAllowance), as of the Recipient call: a message that does
// not is refused at once (LMTP 452 4.2.2 for that recipient, a send's
// "mailbox full"), not accepted for the pipeline's insert to refuse with
// nobody to tell. Deliveries racing for the last room can still overrun
// it; the pipeline then retries, then keeps the entry failed.
func (r Recipient) Fits(size int) bool {
	return r.room < 0 || int64(size)+PrefixAllowance <= r.room
}

// Recipient runs the fence on address with the caller's map epoch and
// finds its account. Errors: those of the fence (*mail.WrongCellError,
// *mail.MovingError, mail.ErrStaleMap, mail.ErrUnavailable,
// mail.ErrInvalid, mail.ErrNotFound for a domain not hosted),
// mail.ErrNotFound for no such account and mail.ErrOverQuota for a
// mailbox already full.
func (a *Acceptor) Recipient(ctx context.Context, address string, epoch uint64) (Recipient, error) {
	rt, err := a.cfg.Fence.Check(ctx, address, epoch)
	if err != nil {
		return Recipient{}, err
	}
	acct, err := a.cfg.Store.AccountByAddress(ctx, rt.Address.String())
	if err != nil {
		return Recipient{}, err
	}
	// A mailbox already full is told at once (the sender keeps the
	// message and can try again), rather than accepted and then refused
	// by the pipeline's insert with nobody to tell.
	if acct.QuotaBytes > 0 && acct.UsedBytes >= acct.QuotaBytes {
		return Recipient{}, fmt.Errorf("%w: mailbox of %s is full", mail.ErrOverQuota, rt.Address.String())
	}
	room := int64(-1)
	if acct.QuotaBytes > 0 {
		room = acct.QuotaBytes - acct.UsedBytes
	}
	return Recipient{AccountID: acct.ID, Address: rt.Address.String(), room: room}, nil
}

// ErrNotAccepted is what Accept returns when the message could not be made
// durable (storage down, the acceptor closing, the caller gone): nothing
// was acknowledged, the sender is to try again.
var ErrNotAccepted = errors.New("message not accepted")

// Accept makes raw durable for every recipient (Recipient's answers) and
// returns nil only then. A message already accepted for a recipient — the
// same envelope and bytes, leaving out the edge's trace field, which
// differs on each of a sender's retries — is not accepted twice (its
// delivery key, Key).
func (a *Acceptor) Accept(ctx context.Context, from string, rcpts []Recipient, raw []byte) error {
	if len(rcpts) == 0 {
		return nil
	}
	_, sent, _ := trace.Split(raw)
	var ref string
	var body []byte
	if len(raw)*len(rcpts) <= MaxInline {
		body = raw
	} else {
		var err error
		if ref, _, err = a.cfg.Blobs.Put(ctx, bytes.NewReader(raw)); err != nil {
			a.cfg.Log.Error("message blob not stored", "err", err)
			return fmt.Errorf("%w: blob: %w", ErrNotAccepted, err)
		}
	}
	entries := make([]mailstore.SpoolEntry, len(rcpts))
	for i, rc := range rcpts {
		entries[i] = mailstore.SpoolEntry{AccountID: rc.AccountID, MailFrom: from, Rcpt: rc.Address, BlobRef: ref, Body: body,
			DeliveryKey: Key(from, rc.Address, sent)}
	}
	req := &acceptance{ctx: ctx, entries: entries, done: make(chan error, 1)}
	select {
	case a.reqs <- req:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotAccepted, ctx.Err())
	case <-a.stop:
		return fmt.Errorf("%w: shutting down", ErrNotAccepted)
	}
	var err error
	select {
	case err = <-req.done:
	case <-a.done: // stopped after req was queued: drained, or never seen
		select {
		case err = <-req.done:
		default:
			err = errors.New("shutting down")
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotAccepted, err)
	}
	if a.cfg.Relay == nil && a.cfg.Wake != nil {
		a.cfg.Wake()
	}
	return nil
}

// acceptance is one Accept waiting for the group commit.
type acceptance struct {
	ctx     context.Context
	entries []mailstore.SpoolEntry
	done    chan error
	skipped bool
}

// commitLoop is the group commit: it takes every acceptance waiting,
// commits all their spool rows in one transaction, then answers them all.
func (a *Acceptor) commitLoop() {
	defer close(a.done)
	for {
		var batch []*acceptance
		select {
		case <-a.stop:
			a.drain()
			return
		case r := <-a.reqs:
			batch = append(batch, r)
		}
	gather:
		for len(batch) < maxBatch {
			select {
			case r := <-a.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		committed, err := a.commit(batch)
		if err == nil && a.cfg.Relay != nil {
			a.cfg.Relay(committed)
		}
		for _, r := range batch {
			if r.skipped {
				r.done <- context.Canceled
				continue
			}
			r.done <- err
		}
	}
}

// drain answers the acceptances left when the acceptor stops.
func (a *Acceptor) drain() {
	for {
		select {
		case r := <-a.reqs:
			r.done <- errors.New("shutting down")
		default:
			return
		}
	}
}

func (a *Acceptor) commit(batch []*acceptance) ([]mailstore.SpoolEntry, error) {
	var entries []mailstore.SpoolEntry
	live := 0
	for _, r := range batch {
		if r.skipped = r.ctx.Err() != nil; !r.skipped { // its caller is gone: not committed, not acknowledged
			entries = append(entries, r.entries...)
			live++
		}
	}
	if len(entries) == 0 {
		return nil, context.Canceled
	}
	for i := range entries {
		entries[i].Relayed = a.cfg.Relay != nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.cfg.Store.Spool(ctx, entries); err != nil {
		a.cfg.Log.Error("spool commit failed", "err", err, "messages", live)
		return nil, err
	}
	return entries, nil
}
