package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	netmail "net/mail"
	"strings"
	"time"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/dispatch"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
	"github.com/cellmail/cellmail/internal/wire"
)

// SendMessage composes a message from the caller and sends it (send): a
// copy in Sent, each recipient of ours accepted by its owning cell, remote
// ones queued.
func (m *MailServer) SendMessage(ctx context.Context, req *connect.Request[mailv1.SendMessageRequest]) (*connect.Response[mailv1.SendMessageResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	r := req.Msg
	d := message.Draft{From: message.Address{Name: c.account.DisplayName, Email: c.account.Address},
		Subject: r.Subject, Text: r.Text, HTML: r.Html, Date: time.Now()}
	var rcpts []string
	seen := map[string]bool{}
	addrs := func(in []*mailv1.EmailAddress, out *[]message.Address) error {
		for _, a := range in {
			pa, err := placement.ParseAddress(a.GetEmail())
			if err != nil {
				return invalid("recipient %q: %v", a.GetEmail(), err)
			}
			if err := checkText("recipient name", a.GetName(), MaxDisplayName); err != nil {
				return err
			}
			*out = append(*out, message.Address{Name: a.GetName(), Email: a.GetEmail()})
			if !seen[pa.String()] {
				seen[pa.String()] = true
				rcpts = append(rcpts, pa.String())
			}
		}
		return nil
	}
	if err := addrs(r.To, &d.To); err != nil {
		return nil, err
	}
	if err := addrs(r.Cc, &d.Cc); err != nil {
		return nil, err
	}
	if err := addrs(r.Bcc, &d.Bcc); err != nil {
		return nil, err
	}
	if len(rcpts) == 0 {
		return nil, invalid("no recipients")
	}
	if len(rcpts) > MaxRecipients {
		return nil, fmt.Errorf("%w: more than %d recipients", mail.ErrLimit, MaxRecipients)
	}
	if err := checkText("subject", r.Subject, MaxSubject); err != nil {
		return nil, err
	}
	if err := m.dispatch.Allowed(ctx, c.account.ID, len(rcpts)); err != nil {
		return nil, err
	}
	var total int64
	for _, a := range r.Attachments {
		if err := checkText("attachment name", a.Filename, 255); err != nil {
			return nil, err
		}
		if a.ContentType != "" {
			if _, _, err := mime.ParseMediaType(a.ContentType); err != nil {
				return nil, invalid("attachment %q: bad content type", a.Filename)
			}
		}
		total += int64(len(a.Content))
		d.Attachments = append(d.Attachments, message.DraftAttachment{Filename: a.Filename, ContentType: a.ContentType, Content: bytes.NewReader(a.Content)})
	}
	if total+int64(len(r.Text))+int64(len(r.Html)) > m.limits.MaxSize*3/4 {
		return nil, fmt.Errorf("%w: message over %d bytes", mail.ErrLimit, m.limits.MaxSize*3/4)
	}
	if r.InReplyToId != "" {
		orig, _, err := m.store.Message(ctx, c.account.ID, r.InReplyToId)
		if err != nil {
			return nil, err
		}
		d.InReplyTo, d.References = orig.MessageID, []string{orig.MessageID}
	}
	var raw bytes.Buffer
	if err := message.Compose(&raw, d); err != nil {
		if errors.Is(err, message.ErrMalformed) {
			return nil, invalid("%v", err)
		}
		return nil, fmt.Errorf("compose: %w", err)
	}
	if err := checkOriginators(c.account, raw.Bytes()); err != nil {
		return nil, fmt.Errorf("composed message: %w", err)
	}
	sentID, statuses, err := m.send(ctx, c.account, rcpts, raw.Bytes(), delivery.Options{Flags: mail.Flags{Seen: true}}, false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.SendMessageResponse{MessageId: sentID, Recipients: statuses}), nil
}

// ReasonMalware is the ErrorInfo reason of a send refused because the
// message carries a virus.
const ReasonMalware = "MALWARE"

// send is what SendMessage and SubmitMessage share once the message is
// made: the checks of mail that leaves for other domains (malware refused
// before anything is stored, likely spam held for the operator), the copy
// in Sent, then the recipients (dispatch.Dispatcher.Route).
func (m *MailServer) send(ctx context.Context, a mail.Account, rcpts []string, raw []byte, opt delivery.Options, queueRefused bool) (string, []*mailv1.RecipientStatus, error) {
	v, err := m.dispatch.Check(ctx, rcpts, raw)
	if errors.Is(err, dispatch.ErrMalware) {
		m.log.Warn("send refused: malware", "account", a.ID, "err", err)
		return "", nil, &reasonError{err: fmt.Errorf("%w: %w", mail.ErrDenied, err), reason: ReasonMalware,
			public: "message refused: it carries a virus (" + strings.TrimPrefix(err.Error(), dispatch.ErrMalware.Error()+": ") + ")"}
	}
	if err != nil {
		return "", nil, err
	}
	copyInSent, err := m.fileSent(ctx, a.ID, raw, opt)
	if err != nil {
		return "", nil, err
	}
	var out []*mailv1.RecipientStatus
	for _, st := range m.dispatch.Route(ctx, a.ID, a.Address, rcpts, raw, v, queueRefused) {
		out = append(out, &mailv1.RecipientStatus{Address: st.Address, Status: st.State, Detail: st.Detail})
	}
	return copyInSent.ID, out, nil
}

// fileSent stores the sender's copy of what is sent in their Sent mailbox,
// durably, before anything is sent. A message over the MIME limits is
// itself refused, for good (invalid_argument; 554 5.6.0 at submission),
// not a rate limit.
func (m *MailServer) fileSent(ctx context.Context, accountID string, raw []byte, opt delivery.Options) (mail.Message, error) {
	sent, err := m.store.MailboxByUse(ctx, accountID, mail.UseSent)
	if err != nil {
		return mail.Message{}, err
	}
	copyInSent, err := m.deliver.Deliver(ctx, accountID, sent.ID, raw, opt)
	if errors.Is(err, mail.ErrLimit) {
		return mail.Message{}, invalid("%v", strings.TrimPrefix(err.Error(), mail.ErrLimit.Error()+": "))
	}
	return copyInSent, err
}

// Deliver is the cell-to-cell delivery entry point (agent token only): the
// message goes into this cell's one acceptance path for the recipients it
// owns at the caller's map epoch, or the call answers WRONG_CELL/MOVING.
func (m *MailServer) Deliver(ctx context.Context, req *connect.Request[mailv1.DeliverRequest]) (*connect.Response[mailv1.DeliverResponse], error) {
	if len(req.Msg.Recipients) == 0 || len(req.Msg.Recipients) > MaxRecipients {
		return nil, invalid("1 to %d recipients", MaxRecipients)
	}
	epoch := routing.EpochOf(req.Header())
	st, err := m.dispatch.AcceptHere(ctx, epoch, req.Msg.MailFrom, req.Msg.Recipients, req.Msg.Raw)
	if err != nil {
		return nil, err
	}
	out := &mailv1.DeliverResponse{}
	for _, s := range st {
		out.Recipients = append(out.Recipients, &mailv1.RecipientStatus{Address: s.Address, Status: s.State, Detail: s.Detail})
	}
	return connect.NewResponse(out), nil
}

// SubmitMessage sends a message a mail client composed: the envelope
// sender must be the caller, the message follows the wire rule, then it is
// stored in Sent and routed like SendMessage's.
func (m *MailServer) SubmitMessage(ctx context.Context, req *connect.Request[mailv1.SubmitMessageRequest]) (*connect.Response[mailv1.SubmitMessageResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	r := req.Msg
	if !owns(c.account, r.MailFrom) {
		return nil, fmt.Errorf("%w: not allowed to send as %q", mail.ErrDenied, r.MailFrom)
	}
	if len(r.Recipients) == 0 {
		return nil, invalid("no recipients")
	}
	if len(r.Recipients) > MaxRecipients {
		return nil, fmt.Errorf("%w: more than %d recipients", mail.ErrLimit, MaxRecipients)
	}
	var rcpts []string
	seen := map[string]bool{}
	for _, rc := range r.Recipients {
		pa, err := placement.ParseAddress(rc)
		if err != nil {
			return nil, invalid("recipient %q: %v", rc, err)
		}
		if !seen[pa.String()] {
			seen[pa.String()] = true
			rcpts = append(rcpts, pa.String())
		}
	}
	if int64(len(r.Raw)) > m.limits.MaxSize {
		return nil, fmt.Errorf("%w: message over %d bytes", mail.ErrLimit, m.limits.MaxSize)
	}
	r.Raw = wire.Normalize(r.Raw)
	if werr := wire.Check(r.Raw); werr != nil {
		return nil, invalid("%s", werr.Message)
	}
	if err := checkOriginators(c.account, r.Raw); err != nil {
		return nil, err
	}
	// What the client left out of RFC 5322 §3.6's fields (a script's mail
	// without From, Date or Message-ID) is added before it is signed.
	from := (&netmail.Address{Name: c.account.DisplayName, Address: c.account.Address}).String()
	if r.Raw, err = message.CompleteHeader(r.Raw, from, time.Now()); err != nil {
		return nil, invalid("%v", err)
	}
	// Our own trace field on top (RFC 5321 §4.4; ESMTPSA, RFC 3848): the
	// topmost field is the one the pipeline reads the client's address
	// from, only when it is the MX edge's (trace.Split), so one a client
	// wrote in the edge's form is no longer on top and is not believed.
	r.Raw = append([]byte("Received: by "+m.fence.Cell()+" (cellmail) with ESMTPSA;\r\n\t"+
		time.Now().UTC().Format(time.RFC1123Z)+"\r\n"), r.Raw...)
	if err := m.dispatch.Allowed(ctx, c.account.ID, len(rcpts)); err != nil {
		return nil, err
	}
	// Each submission is its own Sent copy, even of identical bytes.
	sentID, statuses, err := m.send(ctx, c.account, rcpts, r.Raw, delivery.Options{Flags: mail.Flags{Seen: true},
		Lenient: true, Key: "submit:" + mailstore.NewID()}, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.SubmitMessageResponse{MessageId: sentID, Recipients: statuses}), nil
}

// owns reports whether the account may send as addr: addr is its own
// address once canonicalised (case and +tag do not make another account,
// placement.ParseAddress). Aliases and sending identities, when accounts
// have them, are added here: every sender check (MAIL FROM, From, Sender)
// comes through this function.
func owns(a mail.Account, addr string) bool {
	pa, err := placement.ParseAddress(addr)
	return err == nil && pa.String() == a.Address
}

// ReasonFromNotOwned is the ErrorInfo reason of a message whose From or
// Sender names an address the account does not own.
const ReasonFromNotOwned = "FROM_NOT_OWNED"

// checkOriginators refuses a message whose From or Sender field names an
// address the account does not own (or that cannot be read with
// certainty): the cell signs what it sends with its domain's DKIM key, so
// a forged From would pass DMARC at the receiver (RFC 7489 §3.1).
func checkOriginators(a mail.Account, raw []byte) error {
	addrs, err := message.Originators(raw)
	if err != nil {
		return &reasonError{err: fmt.Errorf("%w: %v", mail.ErrDenied, err), reason: ReasonFromNotOwned,
			public: "the From and Sender fields must each be one field naming your own address: " + err.Error()}
	}
	for _, addr := range addrs {
		if !owns(a, addr) {
			return &reasonError{err: fmt.Errorf("%w: From/Sender %q", mail.ErrDenied, addr), reason: ReasonFromNotOwned,
				public: fmt.Sprintf("not allowed to send as %q: From and Sender must be your own address", addr)}
		}
	}
	return nil
}
