// Package delivery is the one path by which a message enters a mailbox
// (DESIGN.md §4): Acceptor makes it durable in the spool before anyone is
// told it was accepted, Pipeline checks and files it, and Deliverer stores
// it — the message as accepted written once to the blob store
// (content-addressed, so the spool's blob, every recipient's copy and the
// sender's Sent copy are one blob), the header fields the cell adds kept
// as a prefix in the message's row, its attachments read from the message
// itself — and inserts its metadata in one transaction that is idempotent
// on the delivery key. IMAP APPEND and the Sent copy use Deliverer
// directly.
package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/message"
)

// Blobs is the blob store as delivery uses it.
type Blobs interface {
	Put(ctx context.Context, r io.Reader) (string, int64, error)
	Open(ctx context.Context, ref string) (blobstore.Blob, error)
}

// Store is the metadata store as delivery uses it.
type Store interface {
	InsertMessage(ctx context.Context, accountID, mailboxID string, nm mail.NewMessage) (mail.Message, error)
	InsertMessages(ctx context.Context, items []mail.Insert) []mail.InsertResult
}

// InlineMax is the largest message, or attachment, kept in the metadata
// store with the message's rows (mail.NewMessage.Inline) rather than in
// the blob store: most mail is smaller, and storing it so costs only a
// share of the database's group commit, not a file and two fsyncs. Blobs
// are read back through blobstore.Tiered.
const InlineMax = 64 << 10

// Deliverer stores messages into mailboxes.
type Deliverer struct {
	blobs  Blobs
	store  Store
	limits message.Limits
	// inlineMax: see InlineMax; 0 puts every blob in the blob store.
	inlineMax int
}

// New makes a deliverer. blobs must read inline blobs too
// (blobstore.Tiered over the store).
func New(blobs Blobs, store Store, limits message.Limits) *Deliverer {
	return &Deliverer{blobs: blobs, store: store, limits: limits, inlineMax: InlineMax}
}

// put stores one blob: inline (returned in nm.Inline, committed with the
// message) when small, else in the blob store, durably.
func (d *Deliverer) put(ctx context.Context, nm *mail.NewMessage, data []byte) (string, int64, error) {
	inline := 0
	for _, b := range nm.Inline {
		inline += len(b.Data)
	}
	// At most 4×InlineMax inline per message: a message of many small
	// parts keeps the rest in the blob store, so what a batch of prepared
	// messages holds in memory (and sends in one commit) stays bounded.
	if len(data) <= d.inlineMax && inline+len(data) <= 4*d.inlineMax {
		ref := hexSHA256(data)
		if !slices.ContainsFunc(nm.Inline, func(b mail.InlineBlob) bool { return b.Ref == ref }) {
			nm.Inline = append(nm.Inline, mail.InlineBlob{Ref: ref, Data: data})
		}
		return ref, int64(len(data)), nil
	}
	return d.blobs.Put(ctx, bytes.NewReader(data))
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Options are how one message is filed.
type Options struct {
	Flags  mail.Flags
	Labels []string
	// Key makes the delivery idempotent per mailbox; empty: the SHA-256 of
	// the raw message, so a retried identical delivery is stored once.
	Key        string
	ReceivedAt time.Time
	// SpoolID is the inbound spool entry this delivery completes (marked
	// delivered in the same transaction).
	SpoolID string
	// Lenient stores a message that cannot be parsed with what its
	// header gives; one over the MIME limits (message.Limits) is still
	// refused (mail.ErrLimit), unless Accepted.
	Lenient bool
	// Accepted: the message was accepted already (a 250 was sent), so it
	// is stored whatever its form and structure. The limits were checked
	// at acceptance (message.CheckLimits); this is for mail accepted
	// before that.
	Accepted bool
	// Prefix is header fields the cell adds in front of the message (the
	// pipeline's Authentication-Results and spam verdict): kept with the
	// message's row, so that the message's own bytes are one blob however
	// many mailboxes hold it.
	Prefix []byte
	// BodyRef is the blob the message is stored in already (the spool's),
	// when it is; the message is then not written again.
	BodyRef string
}

// Key is the idempotency key of a delivery: envelope and body hash, never
// the Message-ID alone (DESIGN.md §4).
func Key(mailFrom, recipient string, raw []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", mailFrom, recipient)
	h.Write(raw)
	return hex.EncodeToString(h.Sum(nil))
}

// Deliver files raw into the account's mailbox and returns the stored
// message. Durable when it returns: the blob is fsync'd and the metadata
// committed.
func (d *Deliverer) Deliver(ctx context.Context, accountID, mailboxID string, raw []byte, opt Options) (mail.Message, error) {
	in, err := d.Prepare(ctx, accountID, mailboxID, raw, opt)
	if err != nil {
		return mail.Message{}, err
	}
	return d.store.InsertMessage(ctx, in.AccountID, in.MailboxID, in.Message)
}

// Commit stores prepared messages together (one transaction: one commit
// for all, Store.InsertMessages), each with its own outcome.
func (d *Deliverer) Commit(ctx context.Context, ins []mail.Insert) []mail.InsertResult {
	return d.store.InsertMessages(ctx, ins)
}

// Prepare does all of Deliver but the commit: the message parsed within
// the limits, its blobs stored (large ones durably, small ones to be
// committed with the rows), its rows made ready for Commit.
func (d *Deliverer) Prepare(ctx context.Context, accountID, mailboxID string, raw []byte, opt Options) (mail.Insert, error) {
	if total := int64(len(opt.Prefix) + len(raw)); total > d.limits.MaxSize {
		return mail.Insert{}, fmt.Errorf("%w: message of %d bytes over %d", mail.ErrLimit, total, d.limits.MaxSize)
	}
	whole := func() io.Reader { return io.MultiReader(bytes.NewReader(opt.Prefix), bytes.NewReader(raw)) }
	p, err := message.Parse(whole(), d.limits)
	if err != nil && (opt.Accepted || opt.Lenient && !errors.Is(err, message.ErrLimit)) {
		p, err = headerOnly(raw), nil
	}
	if err != nil {
		if errors.Is(err, message.ErrLimit) {
			return mail.Insert{}, fmt.Errorf("%w: %v", mail.ErrLimit, err)
		}
		return mail.Insert{}, fmt.Errorf("%w: %v", mail.ErrInvalid, err)
	}
	nm := mail.NewMessage{
		Message: mail.Message{
			Flags: opt.Flags, Labels: opt.Labels, ReceivedAt: opt.ReceivedAt, SentAt: p.Date,
			Subject: p.Subject, MessageID: p.MessageID, Snippet: p.Snippet, HasAttachments: p.HasAttachments,
			EnvelopeHeader: message.EnvelopeHeader(append(append([]byte{}, opt.Prefix...), raw[:min(len(raw), 256<<10)]...)),
		},
		ThreadRefs:  append(append([]string{}, p.References...), p.InReplyTo),
		DeliveryKey: opt.Key,
		SpoolID:     opt.SpoolID,
	}
	// The body is hashed here only to confirm a given BodyRef (a spool
	// blob); without one, put hashes it as it stores it.
	ref, size := opt.BodyRef, int64(len(raw))
	if ref == "" || ref != hexSHA256(raw) {
		if ref, size, err = d.put(ctx, &nm, raw); err != nil {
			return mail.Insert{}, fmt.Errorf("store message blob: %w", err)
		}
	}
	nm.BlobRef, nm.Prefix, nm.Size = ref, opt.Prefix, int64(len(opt.Prefix))+size
	if nm.DeliveryKey == "" {
		nm.DeliveryKey = ref
	}
	if len(p.From) > 0 {
		nm.From = mail.Address{Name: p.From[0].Name, Email: p.From[0].Email}
	}
	for _, a := range p.To {
		nm.To = append(nm.To, mail.Address{Name: a.Name, Email: a.Email})
	}
	// Attachments are listed, with their decoded size, and read from the
	// message when downloaded (message.OpenPart): not stored again.
	for _, a := range p.Attachments {
		_, body, err := message.OpenPart(whole(), a.PartID, d.limits)
		if err != nil && opt.Lenient {
			continue // the part stays in the raw message
		}
		if err != nil {
			return mail.Insert{}, fmt.Errorf("attachment %s: %w", a.PartID, err)
		}
		asize, err := io.Copy(io.Discard, body)
		if err != nil && opt.Lenient && (errors.Is(err, message.ErrMalformed) || errors.Is(err, message.ErrLimit)) {
			continue
		}
		if err != nil {
			return mail.Insert{}, fmt.Errorf("attachment %s: %w", a.PartID, err)
		}
		nm.Attachments = append(nm.Attachments, mail.AttachmentMeta{
			PartID: a.PartID, Filename: a.Filename, ContentType: a.ContentType, Size: asize, ContentID: a.ContentID,
		})
	}
	return mail.Insert{AccountID: accountID, MailboxID: mailboxID, Message: nm}, nil
}

// headerOnly is what a message that cannot be parsed is stored with: its
// Subject, From and Message-ID when the header can be read.
func headerOnly(raw []byte) *message.Parsed {
	p := &message.Parsed{Subject: "(unreadable message)"}
	h, err := textproto.ReadHeader(bufio.NewReader(io.LimitReader(bytes.NewReader(raw), 256<<10)))
	if err != nil {
		return p
	}
	if s := h.Get("Subject"); s != "" && utf8.ValidString(s) {
		p.Subject = s
	}
	if from, err := gomail.ParseAddressList(h.Get("From")); err == nil && len(from) > 0 {
		p.From = []message.Address{{Name: from[0].Name, Email: from[0].Address}}
	}
	p.MessageID = strings.Trim(h.Get("Message-Id"), "<> ")
	return p
}
