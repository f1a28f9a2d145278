package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/dispatch"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// Limits of the mail API; each is answered with a code and a reason.
const (
	MaxPageSize       = 200
	DefaultPageSize   = 50
	MaxBatch          = 1000
	MaxRecipients     = 100
	MaxDisplayName    = 200
	MinPasswordLength = 8
	MaxPasswordLength = 1024
	MaxSubject        = 998
	MaxChanges        = 1000
	DefaultQuota      = 10 << 30
	// MaxRequestBytes bounds a mail API request: a message at the size
	// limit, base64-encoded inside JSON, fits.
	MaxRequestBytes = 48 << 20
	accessTTL       = time.Hour
	refreshTTL      = 30 * 24 * time.Hour
)

// Cache is the hot-list cache and rate limiter (Redis); every method may
// fail, and the API then goes to the database.
type Cache interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Set(ctx context.Context, key string, val []byte, ttl time.Duration) error
	Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error)
	Publish(ctx context.Context, channel string, msg []byte) error
}

// changed wakes the account's IMAP IDLE sessions and other listeners
// after a change the API made; at most once (they also poll).
func (m *MailServer) changed(ctx context.Context, accountID string) {
	_ = m.cache.Publish(ctx, delivery.ChangesChannel(accountID), []byte("api"))
}

// MailServer implements MailService and DeliveryService for one cell.
type MailServer struct {
	srv           *Server
	fence         Fence
	store         *mailstore.Store
	blobs         delivery.Blobs
	deliver       *delivery.Deliverer
	cache         Cache
	hasher        *auth.Hasher
	logins        *auth.LoginLimits
	dispatch      *dispatch.Dispatcher
	limits        message.Limits
	operatorToken string
	wakeOutbound  func(accountID string)
	log           *slog.Logger
}

var (
	_ mailv1connect.MailServiceHandler     = (*MailServer)(nil)
	_ mailv1connect.DeliveryServiceHandler = (*MailServer)(nil)
)

// MailConfig wires the mail API.
type MailConfig struct {
	Server *Server
	Fence  Fence
	Store  *mailstore.Store
	Blobs  delivery.Blobs // the files and the inline tier (blobstore.Tiered)
	Cache  Cache
	Hasher *auth.Hasher
	// Logins is the login policy shared with IMAP (auth.LoginLimits).
	Logins *auth.LoginLimits
	// Dispatch sends what users send (limits, checks, routing).
	Dispatch      *dispatch.Dispatcher
	Limits        message.Limits
	OperatorToken string
	// WakeOutbound tells the cell's senders there is outbound mail (an
	// operator's retry; nil: they find it on their next pass).
	WakeOutbound func(accountID string)
	Logger       *slog.Logger
}

// NewMailServer makes the mail API.
func NewMailServer(c MailConfig) *MailServer {
	wake := c.WakeOutbound
	if wake == nil {
		wake = func(string) {}
	}
	return &MailServer{srv: c.Server, fence: c.Fence, store: c.Store, blobs: c.Blobs,
		deliver: delivery.New(c.Blobs, c.Store, c.Limits), cache: c.Cache, hasher: c.Hasher, logins: c.Logins, dispatch: c.Dispatch,
		limits: c.Limits, operatorToken: c.OperatorToken, wakeOutbound: wake, log: c.Logger}
}

// readLimits are the limits a stored message is read with: those it was
// accepted under, and room for what the cell added in front of it (the
// edge's trace field, the pipeline's verdicts; delivery.PrefixAllowance
// and the pipeline's own allowance), so that nothing accepted at the size
// limit is unreadable.
func (m *MailServer) readLimits() message.Limits {
	l := m.limits
	if l.MaxSize == 0 {
		l.MaxSize = message.DefaultLimits().MaxSize
	}
	l.MaxSize += 512 << 10
	return l
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", mail.ErrInvalid, fmt.Sprintf(format, args...))
}

// CreateAccount creates an account in this cell for an address it owns.
func (m *MailServer) CreateAccount(ctx context.Context, req *connect.Request[mailv1.CreateAccountRequest]) (*connect.Response[mailv1.CreateAccountResponse], error) {
	rt, _ := ctx.Value(routeKey{}).(placement.Route)
	if n := len(req.Msg.Password); n < MinPasswordLength || n > MaxPasswordLength {
		return nil, invalid("password must be %d to %d bytes", MinPasswordLength, MaxPasswordLength)
	}
	if err := checkText("display name", req.Msg.DisplayName, MaxDisplayName); err != nil {
		return nil, err
	}
	hash, err := m.hasher.Hash(ctx, req.Msg.Password)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	quota := int64(req.Msg.QuotaBytes)
	if quota == 0 {
		quota = DefaultQuota
	}
	a, err := m.store.CreateAccount(ctx, mail.Account{
		Address: rt.Address.String(), Domain: rt.Address.Domain, PlacementKey: rt.Key,
		Jurisdiction: rt.Domain.Jurisdiction.String(), KeyHash: rt.KeyspaceID & (placement.SpaceEnd - 1),
		DisplayName: req.Msg.DisplayName, PasswordHash: hash, QuotaBytes: quota,
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.CreateAccountResponse{Account: m.accountPB(a)}), nil
}

func (m *MailServer) accountPB(a mail.Account) *mailv1.Account {
	return &mailv1.Account{Id: a.ID, Address: a.Address, DisplayName: a.DisplayName, Jurisdiction: a.Jurisdiction,
		Cell: m.fence.Cell(), QuotaBytes: uint64(a.QuotaBytes), UsedBytes: uint64(max(a.UsedBytes, 0))}
}

func checkText(what, s string, maxLen int) error {
	if len(s) > maxLen {
		return invalid("%s over %d bytes", what, maxLen)
	}
	if !utf8.ValidString(s) || strings.ContainsAny(s, "\x00\r\n") {
		return invalid("%s has invalid characters", what)
	}
	return nil
}

// HeaderClientAddr is the header in which the router (its HTTP proxy and
// its submission service) tells the cell the client's address. The router
// sets it itself, replacing whatever a client sent under that name; the
// cell's API port is internal, so only the router reaches it.
const HeaderClientAddr = "X-Forwarded-For"

// sourceOf is the login limits' source of a call: the client address the
// router saw (the last X-Forwarded-For hop, which the router adds).
func sourceOf(h http.Header) string {
	xff := strings.Join(h.Values(HeaderClientAddr), ",")
	if i := strings.LastIndexByte(xff, ','); i >= 0 {
		xff = xff[i+1:]
	}
	return auth.Source(xff)
}

// Login checks a password and opens a session. An unknown address and a
// wrong password get the same answer after the same work. Every attempt
// passes the login limits first (auth.LoginLimits; runbooks/login-limits.md).
func (m *MailServer) Login(ctx context.Context, req *connect.Request[mailv1.LoginRequest]) (*connect.Response[mailv1.LoginResponse], error) {
	rt, _ := ctx.Value(routeKey{}).(placement.Route)
	addr := rt.Address.String()
	if len(req.Msg.Password) > MaxPasswordLength {
		return nil, invalid("password over %d bytes", MaxPasswordLength)
	}
	att, err := m.logins.Begin(ctx, addr, sourceOf(req.Header()))
	if err != nil {
		return nil, err
	}
	a, err := m.store.AccountByAddress(ctx, addr)
	if err != nil && !errors.Is(err, mail.ErrNotFound) {
		att.Abandoned(ctx)
		return nil, err
	}
	if verr := m.hasher.Verify(ctx, a.PasswordHash, req.Msg.Password); verr != nil || err != nil {
		if verr != nil && !errors.Is(verr, auth.ErrMismatch) {
			m.log.Error("password verification failed", "err", verr)
			att.Abandoned(ctx)
		} else {
			att.Failed(ctx)
		}
		return nil, fmt.Errorf("%w: wrong address or password", mail.ErrUnauthorized)
	}
	att.Succeeded(ctx)
	s, err := m.issue(ctx, a, mailstore.NewID())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.LoginResponse{AccessToken: s.access, RefreshToken: s.refresh,
		AccessExpiresUnix: s.accessExp.Unix(), RefreshExpiresUnix: s.refreshExp.Unix(), Account: m.accountPB(a)}), nil
}

type issued struct {
	access, refresh       string
	accessExp, refreshExp time.Time
}

func (m *MailServer) issue(ctx context.Context, a mail.Account, family string) (issued, error) {
	var s issued
	var err error
	if s.access, err = auth.NewToken(a.Address); err != nil {
		return s, err
	}
	if s.refresh, err = auth.NewToken(a.Address); err != nil {
		return s, err
	}
	now := time.Now()
	s.accessExp, s.refreshExp = now.Add(accessTTL), now.Add(refreshTTL)
	if err := m.store.CreateSession(ctx, auth.Hash(s.access), mailstore.Session{AccountID: a.ID, Kind: mailstore.SessionAccess, Family: family, ExpiresAt: s.accessExp}); err != nil {
		return s, err
	}
	if err := m.store.CreateSession(ctx, auth.Hash(s.refresh), mailstore.Session{AccountID: a.ID, Kind: mailstore.SessionRefresh, Family: family, ExpiresAt: s.refreshExp}); err != nil {
		return s, err
	}
	return s, nil
}

// RefreshSession trades a refresh token (used once) for a new pair.
func (m *MailServer) RefreshSession(ctx context.Context, req *connect.Request[mailv1.RefreshSessionRequest]) (*connect.Response[mailv1.RefreshSessionResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	ok, err := m.store.ConsumeSession(ctx, auth.Hash(bearer(req.Header())))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: refresh token already used", mail.ErrUnauthorized)
	}
	s, err := m.issue(ctx, c.account, c.family)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.RefreshSessionResponse{AccessToken: s.access, RefreshToken: s.refresh,
		AccessExpiresUnix: s.accessExp.Unix(), RefreshExpiresUnix: s.refreshExp.Unix()}), nil
}

// Logout revokes the session (or all of the account's).
func (m *MailServer) Logout(ctx context.Context, req *connect.Request[mailv1.LogoutRequest]) (*connect.Response[mailv1.LogoutResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if req.Msg.Everywhere {
		err = m.store.DeleteAccountSessions(ctx, c.account.ID)
	} else {
		err = m.store.DeleteSessionFamily(ctx, c.family)
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.LogoutResponse{}), nil
}

func mailboxPB(mb mail.Mailbox) *mailv1.Mailbox {
	return &mailv1.Mailbox{Id: mb.ID, Name: mb.Name, SpecialUse: mailv1.SpecialUse(mb.SpecialUse), Total: uint32(max(mb.Total, 0)),
		Unread: uint32(max(mb.Unread, 0)), Uidvalidity: mb.UIDValidity, Uidnext: mb.UIDNext, HighestModseq: mb.HighestModseq}
}

// ListMailboxes lists the caller's mailboxes with counts.
func (m *MailServer) ListMailboxes(ctx context.Context, _ *connect.Request[mailv1.ListMailboxesRequest]) (*connect.Response[mailv1.ListMailboxesResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	boxes, modseq, err := m.store.ListMailboxes(ctx, c.account.ID)
	if err != nil {
		return nil, err
	}
	out := &mailv1.ListMailboxesResponse{State: state(modseq)}
	for _, b := range boxes {
		out.Mailboxes = append(out.Mailboxes, mailboxPB(b))
	}
	return connect.NewResponse(out), nil
}

// checkMailboxName applies mail.MailboxName (the store applies it again).
func checkMailboxName(name string) error {
	_, err := mail.MailboxName(name)
	return err
}

// CreateMailbox creates a user mailbox.
func (m *MailServer) CreateMailbox(ctx context.Context, req *connect.Request[mailv1.CreateMailboxRequest]) (*connect.Response[mailv1.CreateMailboxResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkMailboxName(req.Msg.Name); err != nil {
		return nil, err
	}
	mb, err := m.store.CreateMailbox(ctx, c.account.ID, req.Msg.Name, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.CreateMailboxResponse{Mailbox: mailboxPB(mb)}), nil
}

// RenameMailbox renames a user mailbox.
func (m *MailServer) RenameMailbox(ctx context.Context, req *connect.Request[mailv1.RenameMailboxRequest]) (*connect.Response[mailv1.RenameMailboxResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkMailboxName(req.Msg.Name); err != nil {
		return nil, err
	}
	mb, err := m.store.RenameMailbox(ctx, c.account.ID, req.Msg.MailboxId, req.Msg.Name)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.RenameMailboxResponse{Mailbox: mailboxPB(mb)}), nil
}

// DeleteMailbox deletes a user mailbox and its messages.
func (m *MailServer) DeleteMailbox(ctx context.Context, req *connect.Request[mailv1.DeleteMailboxRequest]) (*connect.Response[mailv1.DeleteMailboxResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.store.DeleteMailbox(ctx, c.account.ID, req.Msg.MailboxId); err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.DeleteMailboxResponse{}), nil
}

func summaryPB(msg mail.Message) *mailv1.MessageSummary {
	s := &mailv1.MessageSummary{
		Id: msg.ID, MailboxId: msg.MailboxID, Uid: msg.UID, ThreadId: msg.ThreadID,
		From: &mailv1.EmailAddress{Name: msg.From.Name, Email: msg.From.Email}, Subject: msg.Subject,
		Snippet: msg.Snippet, DateUnix: msg.SentAt.Unix(), ReceivedUnix: msg.ReceivedAt.Unix(), Size: uint64(msg.Size),
		Seen: msg.Flags.Seen, Flagged: msg.Flags.Flagged, Answered: msg.Flags.Answered, Draft: msg.Flags.Draft,
		Labels: msg.Labels, HasAttachments: msg.HasAttachments, Modseq: msg.Modseq,
	}
	for _, a := range msg.To {
		s.To = append(s.To, &mailv1.EmailAddress{Name: a.Name, Email: a.Email})
	}
	return s
}

// page tokens are opaque: base64 of "mailbox-id:uid".
func pageToken(mailboxID string, uid uint32) string {
	return base64.RawURLEncoding.EncodeToString([]byte(mailboxID + ":" + strconv.FormatUint(uint64(uid), 10)))
}

func parsePageToken(tok, mailboxID string) (uint32, error) {
	if tok == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	box, uid, ok := strings.Cut(string(b), ":")
	n, perr := strconv.ParseUint(uid, 10, 32)
	if err != nil || !ok || perr != nil || box != mailboxID || n == 0 {
		return 0, invalid("page_token is not one this mailbox gave")
	}
	return uint32(n), nil
}

// ListMessages pages through a mailbox, newest first. The first page of a
// mailbox is cached in Redis under a key that includes the mailbox's
// highest modseq, so any change to the mailbox makes a new key: the cache
// is never stale, and losing Redis only costs a query.
func (m *MailServer) ListMessages(ctx context.Context, req *connect.Request[mailv1.ListMessagesRequest]) (*connect.Response[mailv1.ListMessagesResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	r := req.Msg
	size := int(r.PageSize)
	if size == 0 {
		size = DefaultPageSize
	}
	if size > MaxPageSize {
		return nil, invalid("page_size over %d", MaxPageSize)
	}
	before, err := parsePageToken(r.PageToken, r.MailboxId)
	if err != nil {
		return nil, err
	}
	if err := checkText("label", r.Label, mail.MaxLabelBytes); err != nil {
		return nil, err
	}
	mb, err := m.store.Mailbox(ctx, c.account.ID, r.MailboxId)
	if err != nil {
		return nil, err
	}
	var key string
	if before == 0 {
		key = fmt.Sprintf("ml:%s:%s:%d:%d:%t:%t:%s", c.account.ID, mb.ID, mb.HighestModseq, size, r.UnreadOnly, r.FlaggedOnly, r.Label)
		if b, err := m.cache.Get(ctx, key); err == nil {
			var out mailv1.ListMessagesResponse
			if proto.Unmarshal(b, &out) == nil {
				return connect.NewResponse(&out), nil
			}
		}
	}
	msgs, err := m.store.ListMessages(ctx, c.account.ID, mb.ID, mail.ListFilter{UnreadOnly: r.UnreadOnly, FlaggedOnly: r.FlaggedOnly, Label: r.Label}, before, size+1)
	if err != nil {
		return nil, err
	}
	out := &mailv1.ListMessagesResponse{}
	if len(msgs) > size {
		msgs = msgs[:size]
		out.NextPageToken = pageToken(mb.ID, msgs[size-1].UID)
	}
	for _, msg := range msgs {
		out.Messages = append(out.Messages, summaryPB(msg))
	}
	if key != "" {
		if b, err := proto.Marshal(out); err == nil {
			_ = m.cache.Set(ctx, key, b, 10*time.Minute)
		}
	}
	return connect.NewResponse(out), nil
}

// GetMessage returns a message's headers, text, sanitised HTML and
// attachment list.
func (m *MailServer) GetMessage(ctx context.Context, req *connect.Request[mailv1.GetMessageRequest]) (*connect.Response[mailv1.GetMessageResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	msg, atts, err := m.store.Message(ctx, c.account.ID, req.Msg.MessageId)
	if err != nil {
		return nil, err
	}
	blob, err := blobstore.OpenMessage(ctx, m.blobs, msg.BlobRef, msg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("open message blob: %w", err)
	}
	defer blob.Close()
	p, err := message.Parse(blob, m.readLimits())
	if err != nil {
		// Stored before the limits were applied at acceptance, or not
		// readable: the header and what the store knows, and the raw
		// message to download, rather than an error for ever.
		m.log.Warn("stored message shown degraded", "message", msg.ID, "err", err)
		if p, err = m.degraded(ctx, msg, err); err != nil {
			return nil, err
		}
	}
	out := &mailv1.GetMessageResponse{Summary: summaryPB(msg), MessageIdHeader: p.MessageID, Text: p.Text, Html: p.HTML,
		RawPath: "/v1/messages/" + msg.ID + "/raw"}
	for _, a := range p.Cc {
		out.Cc = append(out.Cc, &mailv1.EmailAddress{Name: a.Name, Email: a.Email})
	}
	for _, a := range p.ReplyTo {
		out.ReplyTo = append(out.ReplyTo, &mailv1.EmailAddress{Name: a.Name, Email: a.Email})
	}
	for _, h := range p.Headers {
		out.Headers = append(out.Headers, &mailv1.Header{Name: h.Key, Value: h.Value})
	}
	for _, a := range atts {
		out.Attachments = append(out.Attachments, &mailv1.Attachment{PartId: a.PartID, Filename: a.Filename,
			ContentType: a.ContentType, Size: uint64(a.Size), ContentId: a.ContentID,
			DownloadPath: "/v1/messages/" + msg.ID + "/attachments/" + a.PartID})
	}
	return connect.NewResponse(out), nil
}

// degraded is what GetMessage shows of a stored message that Parse
// refuses (why): its header when that can be read, and a text saying why
// the body is not shown.
func (m *MailServer) degraded(ctx context.Context, msg mail.Message, why error) (*message.Parsed, error) {
	blob, err := blobstore.OpenMessage(ctx, m.blobs, msg.BlobRef, msg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("open message blob: %w", err)
	}
	defer blob.Close()
	p, err := message.ParseHeader(blob, m.readLimits())
	if err != nil {
		p = &message.Parsed{MessageID: msg.MessageID}
	}
	reason := "it cannot be read"
	if errors.Is(why, message.ErrLimit) {
		reason = "it is beyond this service's limits (" + strings.TrimPrefix(why.Error(), message.ErrLimit.Error()+": ") + ")"
	}
	p.Text = "This message cannot be shown here because " + reason + ". Download the original message to read it."
	p.HTML = ""
	return p, nil
}

func checkBatch(ids []string) error {
	if len(ids) == 0 {
		return invalid("no message ids")
	}
	if len(ids) > MaxBatch {
		return invalid("more than %d message ids in one call", MaxBatch)
	}
	return nil
}

// requireOwned answers not found unless every id is one of the caller's
// messages, so that a batch naming another account's message says nothing
// about it and changes nothing.
func (m *MailServer) requireOwned(ctx context.Context, accountID string, ids []string) error {
	distinct := map[string]bool{}
	for _, id := range ids {
		distinct[id] = true
	}
	n, err := m.store.CountOwned(ctx, accountID, ids)
	if err != nil {
		return err
	}
	if n != len(distinct) {
		return fmt.Errorf("%w: message", mail.ErrNotFound)
	}
	return nil
}

// UpdateFlags sets or clears flags and labels on a batch of messages.
func (m *MailServer) UpdateFlags(ctx context.Context, req *connect.Request[mailv1.UpdateFlagsRequest]) (*connect.Response[mailv1.UpdateFlagsResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	r := req.Msg
	if err := checkBatch(r.MessageIds); err != nil {
		return nil, err
	}
	if err := mail.CheckLabels(r.AddLabels, mail.MaxMessageLabels, "labels on a message"); err != nil {
		return nil, err
	}
	if err := m.requireOwned(ctx, c.account.ID, r.MessageIds); err != nil {
		return nil, err
	}
	n, err := m.store.UpdateFlags(ctx, c.account.ID, r.MessageIds, mail.FlagChange{Seen: r.Seen, Flagged: r.Flagged,
		Answered: r.Answered, AddLabels: r.AddLabels, RemoveLabels: r.RemoveLabels})
	if err != nil {
		return nil, err
	}
	if n > 0 {
		m.changed(ctx, c.account.ID)
	}
	return connect.NewResponse(&mailv1.UpdateFlagsResponse{Updated: uint32(n)}), nil
}

// MoveMessages moves messages to another mailbox of the caller.
func (m *MailServer) MoveMessages(ctx context.Context, req *connect.Request[mailv1.MoveMessagesRequest]) (*connect.Response[mailv1.MoveMessagesResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkBatch(req.Msg.MessageIds); err != nil {
		return nil, err
	}
	ids, err := m.store.MoveMessages(ctx, c.account.ID, req.Msg.MessageIds, req.Msg.ToMailboxId)
	if err != nil {
		return nil, err
	}
	m.changed(ctx, c.account.ID)
	return connect.NewResponse(&mailv1.MoveMessagesResponse{MessageIds: ids}), nil
}

// DeleteMessages moves messages to Trash, and removes for good those that
// were in Trash already.
func (m *MailServer) DeleteMessages(ctx context.Context, req *connect.Request[mailv1.DeleteMessagesRequest]) (*connect.Response[mailv1.DeleteMessagesResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkBatch(req.Msg.MessageIds); err != nil {
		return nil, err
	}
	trash, err := m.store.MailboxByUse(ctx, c.account.ID, mail.UseTrash)
	if err != nil {
		return nil, err
	}
	boxes, err := m.store.MailboxesOf(ctx, c.account.ID, req.Msg.MessageIds)
	if err != nil {
		return nil, err
	}
	var inTrash, elsewhere []string
	for _, id := range req.Msg.MessageIds {
		box, ok := boxes[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: message", mail.ErrNotFound)
		case box == trash.ID:
			inTrash = append(inTrash, id)
		default:
			elsewhere = append(elsewhere, id)
		}
	}
	out := &mailv1.DeleteMessagesResponse{}
	if len(elsewhere) > 0 {
		moved, err := m.store.MoveMessages(ctx, c.account.ID, elsewhere, trash.ID)
		if err != nil {
			return nil, err
		}
		out.Trashed = uint32(len(moved))
	}
	if len(inTrash) > 0 {
		n, err := m.store.Expunge(ctx, c.account.ID, inTrash)
		if err != nil {
			return nil, err
		}
		out.Expunged = uint32(n)
	}
	m.changed(ctx, c.account.ID)
	return connect.NewResponse(out), nil
}

// state tokens are the journal position: they stay valid when the account
// moves between cells, because the journal moves with it.
func state(modseq uint64) string { return "s1." + strconv.FormatUint(modseq, 10) }

func parseState(s string) (uint64, error) {
	v, ok := strings.CutPrefix(s, "s1.")
	n, err := strconv.ParseUint(v, 10, 64)
	if !ok || err != nil {
		return 0, invalid("since_state is not a state this API gave")
	}
	return n, nil
}

// GetChanges returns the journal after a state.
func (m *MailServer) GetChanges(ctx context.Context, req *connect.Request[mailv1.GetChangesRequest]) (*connect.Response[mailv1.GetChangesResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	maxN := int(req.Msg.MaxChanges)
	if maxN == 0 {
		maxN = 500
	}
	if maxN > MaxChanges {
		return nil, invalid("max_changes over %d", MaxChanges)
	}
	if req.Msg.SinceState == "" {
		modseq, err := m.store.Modseq(ctx, c.account.ID)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&mailv1.GetChangesResponse{NewState: state(modseq)}), nil
	}
	since, err := parseState(req.Msg.SinceState)
	if err != nil {
		return nil, err
	}
	changes, newModseq, more, cannot, err := m.store.Changes(ctx, c.account.ID, since, maxN)
	if err != nil {
		return nil, err
	}
	out := &mailv1.GetChangesResponse{NewState: state(newModseq), HasMore: more, CannotCalculate: cannot}
	for _, ch := range changes {
		out.Changes = append(out.Changes, &mailv1.Change{Modseq: ch.Modseq, Kind: ch.Kind, MailboxId: ch.MailboxID, MessageId: ch.MessageID})
	}
	return connect.NewResponse(out), nil
}

// ListFilters returns the caller's inbound filter rules, in order.
func (m *MailServer) ListFilters(ctx context.Context, _ *connect.Request[mailv1.ListFiltersRequest]) (*connect.Response[mailv1.ListFiltersResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	fs, err := m.store.Filters(ctx, c.account.ID)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.ListFiltersResponse{Filters: filtersPB(fs)}), nil
}

// SetFilters replaces the caller's inbound filter rules. A rule naming a
// mailbox the caller does not have answers not_found; nothing changes.
func (m *MailServer) SetFilters(ctx context.Context, req *connect.Request[mailv1.SetFiltersRequest]) (*connect.Response[mailv1.SetFiltersResponse], error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	fs := make([]mail.Filter, len(req.Msg.Filters))
	for i, f := range req.Msg.Filters {
		if err := checkText("filter value", f.Contains, 1000); err != nil {
			return nil, err
		}
		fs[i] = mail.Filter{Field: f.Field, Contains: f.Contains, MailboxID: f.MailboxId, MarkSeen: f.MarkSeen,
			Flag: f.Flag, Labels: f.Labels, Stop: f.Stop}
	}
	saved, err := m.store.SetFilters(ctx, c.account.ID, fs)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&mailv1.SetFiltersResponse{Filters: filtersPB(saved)}), nil
}

func filtersPB(fs []mail.Filter) []*mailv1.Filter {
	out := make([]*mailv1.Filter, len(fs))
	for i, f := range fs {
		out[i] = &mailv1.Filter{Id: f.ID, Field: f.Field, Contains: f.Contains, MailboxId: f.MailboxID,
			MarkSeen: f.MarkSeen, Flag: f.Flag, Labels: f.Labels, Stop: f.Stop}
	}
	return out
}
