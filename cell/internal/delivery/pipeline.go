package delivery

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/cellmail/cellmail/cell/internal/clamd"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/msgauth"
	"github.com/cellmail/cellmail/cell/internal/spam"
	"github.com/cellmail/cellmail/internal/oneline"
	"github.com/cellmail/cellmail/internal/trace"
)

// PipelineStore is what the pipeline needs of the store.
type PipelineStore interface {
	PendingSpool(ctx context.Context, ids []string) ([]mailstore.SpoolEntry, error)
	RetrySpool(ctx context.Context, id, reason string, backoff time.Duration, maxAttempts int) error
	CloseSpool(ctx context.Context, id, blobRef string, state int16, reason string) error
	// DeliveryTarget is the account's mailbox of that use and its filter
	// rules (one round trip).
	DeliveryTarget(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, []mail.Filter, error)
	MailboxByUse(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, error)
}

// Scanner is a virus scanner (clamd).
type Scanner interface {
	Scan(ctx context.Context, r io.Reader) (clamd.Verdict, error)
}

// Events receives what the pipeline did: the `changes` and error topics.
type Events interface {
	Delivered(ctx context.Context, ev mail.Delivered) error
	Failed(ctx context.Context, ev mail.DeliveryFailed) error
}

// Notifier wakes the account's listeners (IMAP IDLE, push): Redis pub/sub.
type Notifier interface {
	Publish(ctx context.Context, channel string, msg []byte) error
}

// ChangesChannel is the pub/sub channel an account's wake-ups go to; the
// message is the account's new modseq in decimal.
func ChangesChannel(accountID string) string { return "cellmail:changes:" + accountID }

// Pipeline processes spooled inbound messages: authentication (SPF, DKIM,
// DMARC), virus scan, spam score, the user's filters, then one transaction
// into the mailbox tables that also marks the spool entry delivered
// (DESIGN.md §4). Every step may be absent (nil) except delivery.
type Pipeline struct {
	D        *Deliverer
	Store    PipelineStore
	Auth     *msgauth.Checker
	Virus    Scanner
	Events   Events
	Notify   Notifier
	Log      *slog.Logger
	Parallel int // entries processed at once (default 8)
}

const maxAttempts = 12

// Backoff is the wait before attempt n+1 after n failed attempts: 2^n
// seconds, at most 30 minutes (12 attempts span about 2 hours).
func Backoff(n int) time.Duration {
	return min(time.Duration(1<<min(n, 11))*time.Second, 30*time.Minute)
}

// HandleIDs processes the pending ones of the spool entries (the queue's
// records name them; an entry already delivered is a duplicate record and
// is skipped). It returns an error only when the store cannot be used, so
// the caller tries the same records again.
func (p *Pipeline) HandleIDs(ctx context.Context, ids []string) error {
	entries, err := p.Store.PendingSpool(ctx, ids)
	if err != nil {
		return fmt.Errorf("pending spool entries: %w", err)
	}
	return p.HandleEntries(ctx, entries)
}

// HandleEntries processes entries: each is checked and made ready
// (authentication, virus scan, spam score, filters, parsing: Parallel at a
// time), then all are committed together (Deliverer.Commit, groups of at
// most CommitGroup: one transaction, so one WAL flush and one wait for each
// account's row lock, per group), then each is reported, or its failure
// recorded for a retry.
func (p *Pipeline) HandleEntries(ctx context.Context, entries []mailstore.SpoolEntry) error {
	par := p.Parallel
	if par <= 0 {
		par = 8
	}
	jobs := make([]job, len(entries))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, e := range entries {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			jobs[i] = p.prepare(ctx, e)
		}()
	}
	wg.Wait()
	for lo := 0; lo < len(jobs); {
		var group []int
		var ins []mail.Insert
		for ; lo < len(jobs) && len(group) < CommitGroup; lo++ {
			if jobs[lo].ready {
				group = append(group, lo)
				ins = append(ins, jobs[lo].in)
			}
		}
		if len(ins) == 0 {
			continue
		}
		for k, r := range p.D.Commit(ctx, ins) {
			j := &jobs[group[k]]
			j.m, j.err = r.Message, r.Err
		}
	}
	var errs []error
	for i := range jobs {
		if err := p.finish(ctx, &jobs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CommitGroup is the most messages committed in one transaction: enough
// that one commit serves a burst, few enough that an account's row lock is
// held only for milliseconds.
const CommitGroup = 32

// job is one spool entry going through HandleEntries.
type job struct {
	e mailstore.SpoolEntry
	// ready: in is to be committed; else err (nil: done already, as a
	// quarantine is).
	ready bool
	in    mail.Insert
	inbox string // the INBOX or Junk the spam verdict chose, when a filter chose another
	m     mail.Message
	err   error
}

// Process files one entry. A failure of the message's processing is
// recorded on the entry (retried with backoff, reported to Events); the
// returned error is only for a store that could not record it.
func (p *Pipeline) Process(ctx context.Context, e mailstore.SpoolEntry) error {
	return p.HandleEntries(ctx, []mailstore.SpoolEntry{e})
}

// finish reports a committed job, or records its failure.
func (p *Pipeline) finish(ctx context.Context, j *job) error {
	e := j.e
	if j.ready && errors.Is(j.err, mail.ErrNotFound) && j.inbox != "" { // a filter's mailbox was deleted
		j.m, j.err = p.D.store.InsertMessage(ctx, j.in.AccountID, j.inbox, j.in.Message)
	}
	err := j.err
	if err == nil && j.ready {
		p.delivered(ctx, mail.Delivered{SpoolID: e.ID, AccountID: e.AccountID, MailboxID: j.m.MailboxID, MessageID: j.m.ID, Modseq: j.m.Modseq})
	}
	if err == nil || errors.Is(err, mail.ErrAlreadyDelivered) {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // shutting down: the entry is due again later
	}
	backoff := Backoff(e.Attempts)
	final := e.Attempts+1 >= maxAttempts
	p.Log.Warn("inbound message not processed; will retry", "spool", e.ID, "attempt", e.Attempts+1, "final", final, "err", err)
	if p.Events != nil {
		if eerr := p.Events.Failed(ctx, mail.DeliveryFailed{SpoolID: e.ID, AccountID: e.AccountID, Reason: err.Error(),
			Attempt: e.Attempts + 1, Backoff: backoff, Final: final}); eerr != nil {
			p.Log.Warn("error event not published", "spool", e.ID, "err", eerr)
		}
	}
	if rerr := p.Store.RetrySpool(ctx, e.ID, err.Error(), backoff, maxAttempts); rerr != nil {
		return fmt.Errorf("record failed attempt of %s: %w", e.ID, rerr)
	}
	return nil
}

// prepare runs the checks of one entry and makes its message ready to
// commit; a virus is quarantined here.
func (p *Pipeline) prepare(ctx context.Context, e mailstore.SpoolEntry) job {
	j := job{e: e}
	raw := e.Body
	if e.BlobRef != "" {
		blob, err := p.D.blobs.Open(ctx, e.BlobRef)
		if err != nil {
			j.err = fmt.Errorf("open spooled blob: %w", err)
			return j
		}
		raw, err = io.ReadAll(blob)
		blob.Close()
		if err != nil {
			j.err = fmt.Errorf("read spooled blob: %w", err)
			return j
		}
	}
	in, sent, traced := trace.Split(raw)
	traceField := raw[:len(raw)-len(sent)]

	if p.Virus != nil {
		v, err := p.Virus.Scan(ctx, bytes.NewReader(sent))
		if err != nil {
			j.err = fmt.Errorf("virus scan: %w", err) // fail closed: retried, never delivered unscanned
			return j
		}
		if v.Infected {
			j.err = p.quarantine(ctx, e, sent, v.Signature)
			return j
		}
	}

	var added strings.Builder
	var verdict msgauth.Verdict
	if p.Auth != nil {
		if traced {
			verdict = p.Auth.Check(ctx, in.IP, in.Helo, e.MailFrom, sent)
			added.WriteString(p.Auth.Field(verdict, e.MailFrom, in.Helo))
		}
		// Whatever the message came by, a verdict claiming to be ours is
		// the sender's (RFC 8601 §5): a hosted user's too.
		sent = renameOwnResults(sent, p.Auth.AuthServID)
	}
	score := spam.Score(sent, verdict)
	added.WriteString(score.Fields())

	use := mail.UseInbox
	if score.Spam() {
		use = mail.UseJunk
	}
	box, filters, err := p.Store.DeliveryTarget(ctx, e.AccountID, use)
	if err != nil {
		j.err = fmt.Errorf("%v mailbox: %w", use, err)
		return j
	}
	opt := Options{Key: e.DeliveryKey, SpoolID: e.ID, Lenient: true, Accepted: true, ReceivedAt: time.Now()}
	mailboxID := box.ID
	if to := applyFilters(filters, sent, &opt); to != "" && to != box.ID {
		mailboxID, j.inbox = to, box.ID
	}

	// The message is stored as it was accepted (the spool's blob, when it
	// has one: not written again), the fields added here as its prefix.
	body := raw
	if len(traceField)+len(sent) != len(raw) || !bytes.Equal(raw[len(traceField):], sent) { // a forged verdict renamed
		body = append(append(make([]byte, 0, len(traceField)+len(sent)), traceField...), sent...)
	}
	opt.Prefix, opt.BodyRef = []byte(added.String()), e.BlobRef
	j.in, j.err = p.D.Prepare(ctx, e.AccountID, mailboxID, body, opt)
	j.ready = j.err == nil
	return j
}

func (p *Pipeline) delivered(ctx context.Context, ev mail.Delivered) {
	if p.Events != nil {
		if err := p.Events.Delivered(ctx, ev); err != nil {
			p.Log.Warn("change event not published", "spool", ev.SpoolID, "err", err)
		}
	}
	if p.Notify != nil {
		// At most once: listeners also poll, so a lost wake-up only delays.
		_ = p.Notify.Publish(ctx, ChangesChannel(ev.AccountID), []byte(strconv.FormatUint(ev.Modseq, 10)))
	}
}

// quarantine keeps an infected message out of the mailbox (the spool entry
// is closed with the signature, its blob kept for the operator) and files a
// short notice in the INBOX instead, so the user knows.
func (p *Pipeline) quarantine(ctx context.Context, e mailstore.SpoolEntry, sent []byte, signature string) error {
	ref := e.BlobRef
	if ref == "" { // kept in the row, which delivery clears: keep it as a blob
		var err error
		if ref, _, err = p.D.blobs.Put(ctx, bytes.NewReader(sent)); err != nil {
			return fmt.Errorf("quarantine blob: %w", err)
		}
	}
	inbox, err := p.Store.MailboxByUse(ctx, e.AccountID, mail.UseInbox)
	if err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	h, _ := textproto.ReadHeader(bufio.NewReader(io.LimitReader(bytes.NewReader(sent), 64<<10)))
	subject, from := h.Get("Subject"), h.Get("From")
	notice := fmt.Sprintf("From: Mail Delivery <postmaster@cellmail.invalid>\r\nTo: %s\r\nSubject: Message quarantined: a virus was found\r\n"+
		"Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nAuto-Submitted: auto-generated\r\n\r\n"+
		"A message to you was not delivered because it contains a virus (%s).\r\n\r\n"+
		"  From (envelope): %s\r\n  From (header):   %s\r\n  Subject:         %s\r\n\r\n"+
		"It is kept in quarantine; your administrator can release it (spool entry %s).\r\n",
		e.Rcpt, time.Now().UTC().Format(time.RFC1123Z), oneline.Text(signature, 200), oneline.Text(e.MailFrom, 200), oneline.Text(from, 200), oneline.Text(subject, 200), e.ID)
	// The notice's delivery marks the spool entry done, then it is marked
	// quarantined with the reason.
	m, err := p.D.Deliver(ctx, e.AccountID, inbox.ID, []byte(notice), Options{Key: "quarantine:" + e.DeliveryKey, SpoolID: e.ID, ReceivedAt: time.Now()})
	if err != nil {
		return err
	}
	if err := p.Store.CloseSpool(ctx, e.ID, ref, mailstore.SpoolQuarantined, "virus: "+signature); err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	p.Log.Warn("inbound message quarantined", "spool", e.ID, "signature", signature)
	p.delivered(ctx, mail.Delivered{SpoolID: e.ID, AccountID: e.AccountID, MailboxID: m.MailboxID, MessageID: m.ID, Modseq: m.Modseq})
	return nil
}

// renameOwnResults renames Authentication-Results fields that claim to be
// ours (RFC 8601 §5: a sender must not be able to forge our verdicts).
func renameOwnResults(raw []byte, authServID string) []byte {
	end := bytes.Index(raw, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(raw)
	}
	if !bytes.Contains(bytes.ToLower(raw[:end]), []byte("authentication-results")) {
		return raw
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return raw
	}
	body := raw[min(end+4, len(raw)):]
	changed := false
	fields := h.FieldsByKey("Authentication-Results")
	var keep []string
	for fields.Next() {
		v := fields.Value()
		id := strings.TrimSpace(strings.SplitN(v, ";", 2)[0])
		if strings.EqualFold(id, authServID) {
			keep = append(keep, v)
			fields.Del()
			changed = true
		}
	}
	if !changed {
		return raw
	}
	for _, v := range keep {
		h.Add("X-Original-Authentication-Results", v)
	}
	var out bytes.Buffer
	if err := textproto.WriteHeader(&out, h); err != nil {
		return raw
	}
	out.Write(body)
	return out.Bytes()
}

// applyFilters runs the rules against the message's header and returns the
// mailbox the first filing rule names (empty: none).
func applyFilters(filters []mail.Filter, raw []byte, opt *Options) string {
	if len(filters) == 0 {
		return ""
	}
	h, err := textproto.ReadHeader(bufio.NewReader(io.LimitReader(bytes.NewReader(raw), 256<<10)))
	if err != nil {
		return ""
	}
	value := func(field string) string {
		switch field {
		case "from":
			return h.Get("From") + "\n" + h.Get("Sender")
		case "to":
			return strings.Join(append(h.Values("To"), h.Values("Cc")...), "\n")
		case "subject":
			return h.Get("Subject")
		}
		return strings.Join(h.Values(strings.TrimPrefix(field, "header:")), "\n")
	}
	to := ""
	for _, f := range filters {
		if !strings.Contains(strings.ToLower(value(f.Field)), strings.ToLower(f.Contains)) {
			continue
		}
		if f.MailboxID != "" && to == "" {
			to = f.MailboxID
		}
		opt.Flags.Seen = opt.Flags.Seen || f.MarkSeen
		opt.Flags.Flagged = opt.Flags.Flagged || f.Flag
		for _, l := range f.Labels {
			// Rules saved before labels were bounded may hold any number:
			// a message takes the first mail.MaxMessageLabels distinct
			// ones that pass mail.CheckLabel.
			if len(opt.Labels) < mail.MaxMessageLabels && !slices.Contains(opt.Labels, l) && mail.CheckLabel(l) == nil {
				opt.Labels = append(opt.Labels, l)
			}
		}
		if f.Stop {
			break
		}
	}
	return to
}
