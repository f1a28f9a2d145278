// Package dispatch sends what a user of this cell sends (DESIGN.md §4,
// outbound). It owns the sending limits, the checks of mail that leaves
// for other domains (virus, spam), and the routing of each recipient: one
// of ours goes to its owning cell's one acceptance path (this cell's
// delivery.Acceptor, or another cell's DeliveryService, with the map epoch
// and the WRONG_CELL/MOVING retry), a remote one to the outbound queue,
// durably before the send is reported. The mail API's SendMessage and
// SubmitMessage, the DeliveryService and the outbound sender's retries of
// our own recipients all come here.
package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/cellmail/cellmail/cell/internal/clamd"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/msgauth"
	"github.com/cellmail/cellmail/cell/internal/spam"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// Recipient states of a send, as the API reports them.
const (
	Delivered = "delivered" // accepted by the recipient's cell (durable there)
	Queued    = "queued"    // in the outbound queue, retried
	Held      = "held"      // in the outbound queue, held for the operator (likely spam)
	Failed    = "failed"
)

// Status is what became of one recipient.
type Status struct {
	Address, State, Detail string
}

// Maps is the cell's watch-fed map copy.
type Maps interface {
	Map() *placement.Map
}

// Routes runs a call at a subject's owning cell under the routing contract
// (routing.Routes over the cell's map copy).
type Routes interface {
	Do(ctx context.Context, address string, call func(ctx context.Context, tgt routing.Target) error) error
}

// Acceptor is the cell's one acceptance path (delivery.Acceptor).
type Acceptor interface {
	Recipient(ctx context.Context, address string, epoch uint64) (delivery.Recipient, error)
	Accept(ctx context.Context, from string, rcpts []delivery.Recipient, raw []byte) error
}

// Peers hands a message to another cell's acceptance (its
// DeliveryService), naming the map epoch the caller routed with. A cell
// that does not own a recipient answers for the whole call with a
// *mail.WrongCellError or *mail.MovingError.
type Peers interface {
	Deliver(ctx context.Context, cell placement.Cell, epoch uint64, from string, rcpts []string, raw []byte) ([]Status, error)
}

// Queue is the outbound queue.
type Queue interface {
	// EnqueueOutbound commits one entry per recipient; held, when not
	// empty, keeps them held for an operator with that reason.
	EnqueueOutbound(ctx context.Context, accountID, from string, rcpts []string, raw []byte, expires time.Duration, held string) error
}

// Limiter counts sends (Redis).
type Limiter interface {
	Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error)
}

// Scanner is a virus scanner (clamd).
type Scanner interface {
	Scan(ctx context.Context, r io.Reader) (clamd.Verdict, error)
}

// Config wires a Dispatcher.
type Config struct {
	Cell    string // this cell's name
	Maps    Maps
	Routes  Routes
	Accept  Acceptor
	Peers   Peers
	Queue   Queue
	Limiter Limiter
	// Virus, when set, scans mail that leaves for other domains.
	Virus Scanner
	// SendLimit is the messages an account may send per SendWindow
	// (default SendLimit; recipients scale with it).
	SendLimit int
	// Wake tells the cell's senders the account queued outbound mail.
	Wake func(accountID string)
	Log  *slog.Logger
}

// Dispatcher sends users' mail.
type Dispatcher struct{ cfg Config }

// New makes a dispatcher.
func New(cfg Config) *Dispatcher {
	if cfg.SendLimit <= 0 {
		cfg.SendLimit = SendLimit
	}
	if cfg.Wake == nil {
		cfg.Wake = func(string) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{cfg: cfg}
}

// Sending limits per account (the webmail's and the mail clients' sends
// together): SendLimit messages per SendWindow, RecipientLimit recipients
// per RecipientWindow (Config.SendLimit scales both).
const (
	SendLimit       = 100
	SendWindow      = 10 * time.Minute
	RecipientLimit  = 1000
	RecipientWindow = time.Hour
)

// Allowed counts one message to n recipients against the account's
// limits (mail.ErrRateLimited past them). A limiter that cannot be reached
// lets the send through.
func (d *Dispatcher) Allowed(ctx context.Context, accountID string, n int) error {
	check := func(key string, limit int, window time.Duration, what string) error {
		ok, retry, err := d.cfg.Limiter.Allow(ctx, key, limit, window)
		if err != nil {
			d.cfg.Log.Warn("rate limiter unavailable", "err", err)
			return nil
		}
		if !ok {
			return fmt.Errorf("%w: more than %d %s in %s; retry in %s", mail.ErrRateLimited, limit, what, window, retry.Round(time.Second))
		}
		return nil
	}
	if err := check("send:msg:"+accountID, d.cfg.SendLimit, SendWindow, "messages"); err != nil {
		return err
	}
	for range n {
		if err := check("send:rcpt:"+accountID, d.cfg.SendLimit*RecipientLimit/SendLimit, RecipientWindow, "recipients"); err != nil {
			return err
		}
	}
	return nil
}

// ErrMalware is the refusal of a message that carries a virus: it is not
// sent, and not kept in Sent.
var ErrMalware = errors.New("message carries malware")

// Verdict is what the checks of a message leaving for other domains found.
type Verdict struct {
	// Held is the reason remote recipients' entries are held for an
	// operator (likely spam); empty: they are sent.
	Held string
}

// Check runs the checks on raw when any of rcpts is outside our domains
// (DESIGN.md §4: the outbound worker checks spam and virus, and only mail
// that passes is kept in Sent and relayed): malware is refused
// (ErrMalware, wrapped with the signature, before anything is stored), a
// scanner that cannot be reached refuses for now (mail.ErrUnavailable:
// nothing unscanned leaves), likely spam is held for the operator rather
// than relayed, so one compromised account cannot burn the cell's sending
// reputation. Mail only for our own domains is checked by each
// recipient's pipeline, which quarantines a virus and files spam in Junk.
func (d *Dispatcher) Check(ctx context.Context, rcpts []string, raw []byte) (Verdict, error) {
	if !slices.ContainsFunc(rcpts, func(rc string) bool { return !d.hostedAddress(rc) }) {
		return Verdict{}, nil
	}
	if d.cfg.Virus != nil {
		v, err := d.cfg.Virus.Scan(ctx, bytes.NewReader(raw))
		if err != nil {
			return Verdict{}, fmt.Errorf("%w: virus scan: %w", mail.ErrUnavailable, err)
		}
		if v.Infected {
			return Verdict{}, fmt.Errorf("%w: %s", ErrMalware, v.Signature)
		}
	}
	if s := spam.Score(raw, msgauth.Verdict{}); s.Spam() {
		return Verdict{Held: fmt.Sprintf("held for review: likely spam (score %.1f, %s)", s.Score, strings.Join(s.Tests, ","))}, nil
	}
	return Verdict{}, nil
}

// OutboundExpiry is how long remote delivery is retried before a bounce.
const OutboundExpiry = 5 * 24 * time.Hour

// Details of a recipient of ours that cannot take the message: it does not
// exist, or its mailbox is full.
const (
	NoSuchUser  = "no such user"
	MailboxFull = "mailbox full"
)

// Route sends raw from the account to each recipient: ours to their cells'
// acceptance at once, remote ones to the outbound queue (held when v says
// so). A recipient of ours whose cell cannot take it now is queued too
// (the sender retries it); one that does not exist or whose mailbox is
// full is reported failed, or, with queueRefused (a submission: the client
// has its 250), queued so that the sender bounces it to the user.
func (d *Dispatcher) Route(ctx context.Context, accountID, from string, rcpts []string, raw []byte, v Verdict, queueRefused bool) []Status {
	// The copy in Sent is stored: what follows finishes even if the caller
	// goes away (a closed connection, a proxy's timeout), each step within
	// its own bound, so that no recipient is left neither delivered nor
	// queued.
	ctx = context.WithoutCancel(ctx)
	var local, remote []string
	for _, rc := range rcpts {
		if d.hostedAddress(rc) {
			local = append(local, rc)
		} else {
			remote = append(remote, rc)
		}
	}
	var remoteOut []Status
	if len(remote) > 0 { // first: it is one commit, and nothing waits on other cells before it
		state, detail := Queued, "queued for delivery to the recipient's mail server"
		if v.Held != "" {
			state, detail = Held, v.Held
		}
		if err := d.enqueue(ctx, accountID, from, remote, raw, v.Held); err != nil {
			d.cfg.Log.Error("outbound mail not queued", "err", err)
			state, detail = Failed, "could not be queued; send again"
		} else if v.Held != "" {
			d.cfg.Log.Warn("outbound mail held for review", "account", accountID, "recipients", len(remote), "reason", v.Held)
		}
		for _, rc := range remote {
			remoteOut = append(remoteOut, Status{Address: rc, State: state, Detail: detail})
		}
	}
	hctx, cancel := context.WithTimeout(ctx, HostedBudget)
	out := d.deliverHosted(hctx, from, local, raw)
	cancel()
	var retry []string
	for _, st := range out {
		if st.State == Failed && (queueRefused || st.Detail != NoSuchUser && st.Detail != MailboxFull) {
			retry = append(retry, st.Address)
		}
	}
	if len(retry) > 0 {
		if err := d.enqueue(ctx, accountID, from, retry, raw, ""); err != nil {
			d.cfg.Log.Error("mail for our own recipients not queued", "err", err)
			return append(out, remoteOut...)
		}
		for i := range out {
			if slices.Contains(retry, out[i].Address) {
				out[i].State, out[i].Detail = Queued, "queued for another attempt"
			}
		}
	}
	return append(out, remoteOut...)
}

// HostedBudget bounds how long a send waits for our own recipients' cells
// (MOVING waits included) before it queues the rest for the outbound
// sender's retries.
const HostedBudget = 20 * time.Second

// enqueue commits outbound entries within a bound of its own, and wakes
// the senders when they are due.
func (d *Dispatcher) enqueue(ctx context.Context, accountID, from string, rcpts []string, raw []byte, held string) error {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.cfg.Queue.EnqueueOutbound(qctx, accountID, from, rcpts, raw, OutboundExpiry, held); err != nil {
		return err
	}
	if held == "" {
		d.cfg.Wake(accountID)
	}
	return nil
}

// IsHosted reports whether the domain is one of ours (the outbound sender
// then delivers through DeliverHosted rather than by MX).
func (d *Dispatcher) IsHosted(domain string) bool { return d.hostedAddress("postmaster@" + domain) }

// hostedAddress reports whether addr is in one of our domains; with no map
// yet, it is taken as ours, so that nothing goes out by MX that could be a
// user's (its delivery then waits for the map, queued).
func (d *Dispatcher) hostedAddress(addr string) bool {
	mp := d.cfg.Maps.Map()
	if mp == nil {
		return true
	}
	_, err := mp.Lookup(addr)
	return !errors.Is(err, placement.ErrUnknownDomain)
}

// DeliverHosted is the outbound sender's delivery to a recipient of ours
// (queued because its cell could not take it at once): permanent when the
// recipient does not exist or cannot take the message.
func (d *Dispatcher) DeliverHosted(ctx context.Context, from, rcpt string, raw []byte) (permanent bool, err error) {
	st := d.deliverHosted(ctx, from, []string{rcpt}, raw)
	if len(st) != 1 {
		return false, errors.New("no delivery result")
	}
	switch {
	case st[0].State == Delivered:
		return false, nil
	case st[0].Detail == NoSuchUser:
		return true, errors.New("550 5.1.1 no such user")
	case st[0].Detail == MailboxFull:
		return true, errors.New("552 5.2.2 mailbox full")
	}
	return false, errors.New(st[0].Detail)
}

// deliverHosted hands raw to the acceptance of each recipient's owning
// cell — this cell's Acceptor, or a peer's DeliveryService with the epoch
// of the map it was routed by — the recipients of one cell together. A
// cell that says it does not own them any more (WRONG_CELL) or that they
// are moving (MOVING) sends each of them through the routing contract on
// its own (one).
func (d *Dispatcher) deliverHosted(ctx context.Context, from string, rcpts []string, raw []byte) []Status {
	if len(rcpts) == 0 {
		return nil
	}
	mp := d.cfg.Maps.Map()
	if mp == nil {
		return failAll(rcpts, errors.New("no placement map yet"), d.cfg.Log)
	}
	type group struct {
		cell  string
		rcpts []string
	}
	byCell := map[string]*group{}
	var order []*group
	var out []Status
	for _, rc := range rcpts {
		rt, err := mp.Lookup(rc)
		if err != nil {
			out = append(out, Status{Address: rc, State: Failed, Detail: "recipient's cell unknown; retry later"})
			continue
		}
		g := byCell[rt.Cell]
		if g == nil {
			g = &group{cell: rt.Cell}
			byCell[rt.Cell] = g
			order = append(order, g)
		}
		g.rcpts = append(g.rcpts, rc)
	}
	for _, g := range order {
		st, err := d.at(ctx, mp, g.cell, from, g.rcpts, raw)
		if err == nil {
			out = append(out, st...)
			continue
		}
		var wrong *mail.WrongCellError
		var moving *mail.MovingError
		if !errors.As(err, &wrong) && !errors.As(err, &moving) {
			out = append(out, failAll(g.rcpts, err, d.cfg.Log)...)
			continue
		}
		// The map moved under these subjects: each is routed on its
		// own, from a fresh read of its key.
		for _, rc := range g.rcpts {
			out = append(out, d.one(ctx, from, rc, raw))
		}
	}
	return out
}

// one delivers to one recipient through the routing contract (refresh,
// try, at most routing.MaxHops cells, MOVING waited out a bounded time).
func (d *Dispatcher) one(ctx context.Context, from, rc string, raw []byte) Status {
	var st []Status
	err := d.cfg.Routes.Do(ctx, rc, func(ctx context.Context, tgt routing.Target) error {
		var err error
		st, err = d.atCell(ctx, tgt.Cell, tgt.Epoch, from, []string{rc}, raw)
		return err
	})
	if err == nil && len(st) == 1 {
		return st[0]
	}
	if err == nil {
		err = errors.New("no delivery result")
	}
	return failAll([]string{rc}, err, d.cfg.Log)[0]
}

// at delivers to the recipients in one cell, as the map mp names it.
func (d *Dispatcher) at(ctx context.Context, mp *placement.Map, cellName, from string, rcpts []string, raw []byte) ([]Status, error) {
	c, ok := mp.Cell(cellName)
	if !ok {
		return nil, fmt.Errorf("%w: owning cell %s not in the map", mail.ErrUnavailable, cellName)
	}
	return d.atCell(ctx, c, mp.Epoch(), from, rcpts, raw)
}

// atCell delivers to the recipients in cell c with the map epoch the
// caller routed by: this cell's own acceptance, or a peer's.
func (d *Dispatcher) atCell(ctx context.Context, c placement.Cell, epoch uint64, from string, rcpts []string, raw []byte) ([]Status, error) {
	if c.Name == d.cfg.Cell {
		return d.AcceptHere(ctx, epoch, from, rcpts, raw)
	}
	return d.cfg.Peers.Deliver(ctx, c, epoch, from, rcpts, raw)
}

// AcceptHere accepts raw for recipients of this cell (the DeliveryService,
// and this cell's own senders): each is fenced with the caller's epoch; a
// subject this cell does not own (any more), or one being moved, fails the
// whole call (*mail.WrongCellError, *mail.MovingError) so that the caller
// re-routes. Unknown recipients are reported failed; the others are
// accepted together, durably before it returns.
func (d *Dispatcher) AcceptHere(ctx context.Context, epoch uint64, from string, rcpts []string, raw []byte) ([]Status, error) {
	var ok []delivery.Recipient
	out := make([]Status, 0, len(rcpts))
	for _, rc := range rcpts {
		r, err := d.cfg.Accept.Recipient(ctx, rc, epoch)
		var wrong *mail.WrongCellError
		var moving *mail.MovingError
		switch {
		case errors.As(err, &wrong), errors.As(err, &moving), errors.Is(err, mail.ErrStaleMap), errors.Is(err, mail.ErrUnavailable):
			return nil, err
		case errors.Is(err, mail.ErrNotFound), errors.Is(err, mail.ErrInvalid):
			out = append(out, Status{Address: rc, State: Failed, Detail: NoSuchUser})
		case errors.Is(err, mail.ErrOverQuota):
			out = append(out, Status{Address: rc, State: Failed, Detail: MailboxFull})
		case err != nil:
			return nil, err
		case !r.Fits(len(raw)):
			out = append(out, Status{Address: rc, State: Failed, Detail: MailboxFull})
		default:
			ok = append(ok, r)
		}
	}
	if err := d.cfg.Accept.Accept(ctx, from, ok, raw); err != nil {
		return nil, err
	}
	for _, r := range ok {
		out = append(out, Status{Address: r.Address, State: Delivered})
	}
	return out, nil
}

// failAll reports rcpts failed for now (the sender queues them for
// another attempt).
func failAll(rcpts []string, err error, log *slog.Logger) []Status {
	log.Warn("delivery to a recipient's cell failed; queued for another attempt", "recipients", len(rcpts), "err", err)
	out := make([]Status, len(rcpts))
	for i, rc := range rcpts {
		out[i] = Status{Address: rc, State: Failed, Detail: "recipient's cell unavailable; retry later"}
	}
	return out
}
