// Package imapd is the cell's IMAP server (RFC 9051 IMAP4rev2 and RFC 3501
// IMAP4rev1, on go-imap v2's server) over the cell's own store: the same
// mailboxes, messages, flags and change journal the API serves, so a flag
// set on a phone is the flag the webmail shows. It listens on an internal
// port; clients reach it through the router's IMAP proxy, which ends TLS
// and splices the connection after authenticating here.
//
// Sessions see their mailbox through the journal: each keeps the UIDs it
// has announced (sequence numbers are positions in that list) and the
// journal position it has read, and Poll and IDLE report what changed since
// (EXISTS, EXPUNGE, FETCH FLAGS). IDLE is woken by the Redis pub/sub
// channel every change to the account publishes (Hub), with a slow poll as
// the fallback when a wake-up is lost.
package imapd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/cellmail/cellmail/cell/internal/auth"
	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/internal/oneline"
)

// Store is the mail store as IMAP uses it.
type Store interface {
	AccountByAddress(ctx context.Context, address string) (mail.Account, error)
	ListMailboxes(ctx context.Context, accountID string) ([]mail.Mailbox, uint64, error)
	MailboxByName(ctx context.Context, accountID, name string) (mail.Mailbox, error)
	CreateMailbox(ctx context.Context, accountID, name string, subscribe bool) (mail.Mailbox, error)
	RenameMailbox(ctx context.Context, accountID, id, name string) (mail.Mailbox, error)
	DeleteMailbox(ctx context.Context, accountID, id string) error
	SetSubscribed(ctx context.Context, accountID, name string, on bool) error
	Subscriptions(ctx context.Context, accountID string) (map[string]bool, error)
	MailboxView(ctx context.Context, accountID, mailboxID string) (mail.Mailbox, []uint32, uint64, error)
	MessagesByUID(ctx context.Context, accountID, mailboxID string, uids []uint32, span, envelope bool) ([]mail.Message, error)
	MailboxChanges(ctx context.Context, accountID, mailboxID string, since uint64, max int) ([]mail.Change, uint64, error)
	RemovedSince(ctx context.Context, accountID, mailboxID string, since, upTo uint64, lo, hi uint32) ([]uint32, error)
	StoreFlags(ctx context.Context, accountID string, ids []string, fc mail.FlagChange) ([]mail.Message, []mail.Message, error)
	CopyMessages(ctx context.Context, accountID string, ids []string, toMailbox string) ([]mail.Message, error)
	Move(ctx context.Context, accountID, fromMailbox string, ids []string, toMailbox string) ([]mailstore.Moved, error)
	ExpungeDeleted(ctx context.Context, accountID, mailboxID string, uids []uint32) ([]uint32, error)
	MailboxStats(ctx context.Context, accountID, mailboxID string) (int, int64, error)
	MailboxKeywords(ctx context.Context, accountID, mailboxID string, fromUID uint32, max int) ([]string, error)
	LabelsRoom(ctx context.Context, accountID string, labels []string) error
	AccountLabels(ctx context.Context, accountID string, labels []string) (int, error)
	ClaimRecent(ctx context.Context, accountID, mailboxID string, upTo uint32) (uint32, error)
	RecentCount(ctx context.Context, accountID, mailboxID string) (int, error)
	FirstUnseen(ctx context.Context, accountID, mailboxID string) (uint32, error)
}

// Blobs opens stored messages.
type Blobs interface {
	Open(ctx context.Context, ref string) (blobstore.Blob, error)
}

// Appender files an APPENDed message (delivery.Deliverer): durable when it
// returns.
type Appender interface {
	Deliver(ctx context.Context, accountID, mailboxID string, raw []byte, opt delivery.Options) (mail.Message, error)
}

// Verifier checks a password against its stored argon2id hash.
type Verifier interface {
	Verify(ctx context.Context, encoded, password string) error
}

// Fence says whether this cell owns an address.
type Fence interface {
	Check(ctx context.Context, address string, callerEpoch uint64) (placement.Route, error)
}

// Publisher announces an account's new journal position to its listeners.
type Publisher interface {
	Publish(ctx context.Context, channel string, msg []byte) error
}

// Limits of a session.
const (
	// MaxAppend is the largest message APPEND takes (APPENDLIMIT).
	MaxAppend = 50 << 20
	// maxCompressed bounds the sessions under COMPRESS=DEFLATE at once.
	maxCompressed = 1000
	maxPassword   = 1024
	// idlePoll is how often IDLE looks at the journal without a wake-up.
	idlePoll = 30 * time.Second
	// opTimeout bounds one command's store work.
	opTimeout = 2 * time.Minute
	// maxKeywords bounds the distinct keywords of a mailbox that STORE
	// and APPEND make (past it NO [LIMIT], and PERMANENTFLAGS loses \*);
	// listedKeywords bounds those FLAGS lists.
	maxKeywords    = 256
	listedKeywords = 1000
)

// Config is what the server needs.
type Config struct {
	Store  Store
	Blobs  Blobs
	Append Appender
	Hasher Verifier
	Fence  Fence
	// Logins is the login policy, shared with the API (required).
	Logins *auth.LoginLimits
	// TrustedProxies are the peers whose ID "x-originating-ip" names the
	// client (the router's IMAP proxy); nil: loopback and private
	// addresses, as the cell's IMAP port is internal.
	TrustedProxies []netip.Prefix
	Publish        Publisher
	Hub            *Hub
	Logger         *slog.Logger
	MaxConns       int
	// TLS, when set, offers STARTTLS (the router ends TLS in front of the
	// cell; the cell's port is internal).
	TLS *tls.Config
	// Debug, when set, gets the raw protocol (credentials included).
	Debug io.Writer
}

// Server is the cell's IMAP server.
type Server struct {
	cfg  Config
	imap *imapserver.Server
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	sem  chan struct{}
}

// Caps are the capabilities the server offers (beyond those the library
// adds by state: IDLE, ENABLE, UNSELECT, SASL-IR, LITERAL-, AUTH=PLAIN).
var Caps = imap.CapSet{
	imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {},
	imap.CapNamespace: {}, imap.CapUIDPlus: {}, imap.CapMove: {}, imap.CapESearch: {},
	imap.CapSpecialUse: {}, imap.CapLiteralPlus: {}, imap.CapListExtended: {}, imap.CapListStatus: {},
	imap.CapStatusSize: {}, imap.CapChildren: {}, imap.CapUnauthenticate: {},
	imap.CapCondStore: {}, imap.CapQResync: {}, imap.CapID: {}, imap.CapQuota: {}, imap.CapCompressDeflate: {},
}

// New makes a server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.TrustedProxies == nil {
		for _, p := range []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"} {
			cfg.TrustedProxies = append(cfg.TrustedProxies, netip.MustParsePrefix(p))
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: cfg.Logger, ctx: ctx, stop: stop, sem: make(chan struct{}, cfg.MaxConns)}
	s.imap = imapserver.New(&imapserver.Options{
		NewSession:   s.newSession,
		Caps:         Caps,
		Logger:       slogLogger{cfg.Logger},
		TLSConfig:    cfg.TLS,
		InsecureAuth: true, // an internal port: the router ends TLS
		DebugWriter:  cfg.Debug,
		// About 1 MiB of compressor each: past this, COMPRESS answers NO
		// [LIMIT] and the client goes on uncompressed.
		MaxCompressed: maxCompressed,
	})
	return s
}

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error { return s.imap.Serve(ln) }

// Close stops the server and its sessions.
func (s *Server) Close() error {
	s.stop()
	return s.imap.Close()
}

type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, args ...any) {
	l.l.Warn(strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (s *Server) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	select {
	case s.sem <- struct{}{}:
	default:
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Code: imap.ResponseCodeUnavailable,
			Text: "Too many connections, try again later"}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	return &session{srv: s, conn: c, ctx: ctx, cancel: cancel}, nil, nil
}

// Hub fans the account wake-ups of one Redis pattern subscription out to
// the IDLE sessions of this process.
type Hub struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// NewHub makes a hub; Run feeds it.
func NewHub() *Hub { return &Hub{subs: map[string]map[chan struct{}]struct{}{}} }

// PatternSubscriber is the cache's PSubscribe.
type PatternSubscriber interface {
	PSubscribe(ctx context.Context, pattern string, fn func(channel string, msg []byte)) error
}

// Run subscribes to every account's changes channel until ctx is done.
func (h *Hub) Run(ctx context.Context, ps PatternSubscriber) error {
	prefix := delivery.ChangesChannel("")
	return ps.PSubscribe(ctx, prefix+"*", func(channel string, _ []byte) {
		h.Wake(strings.TrimPrefix(channel, prefix))
	})
}

// Watch returns a channel that gets a value when the account changes, and
// the function that stops watching.
func (h *Hub) Watch(accountID string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	m := h.subs[accountID]
	if m == nil {
		m = map[chan struct{}]struct{}{}
		h.subs[accountID] = m
	}
	m[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(m, ch)
		if len(m) == 0 {
			delete(h.subs, accountID)
		}
		h.mu.Unlock()
	}
}

// Wake tells the account's watchers to look.
func (h *Hub) Wake(accountID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[accountID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// toIMAPError turns a store error into the IMAP answer: NO with a response
// code for what the client did or can retry, the cause logged otherwise.
func (se *session) toIMAPError(op string, err error) error {
	if err == nil {
		return nil
	}
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie
	}
	no := func(code imap.ResponseCode, text string) error {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: text}
	}
	switch {
	case errors.Is(err, mail.ErrNotFound):
		return no(imap.ResponseCodeNonExistent, "No such mailbox or message")
	case errors.Is(err, mail.ErrExists):
		return no(imap.ResponseCodeAlreadyExists, "Mailbox already exists")
	case errors.Is(err, mail.ErrOverQuota):
		return no(imap.ResponseCodeOverQuota, "Over quota")
	case errors.Is(err, mail.ErrLimit):
		return no(imap.ResponseCodeLimit, oneline.Text(err.Error(), 200))
	case errors.Is(err, mail.ErrInvalid):
		return no(imap.ResponseCodeCannot, oneline.Text(err.Error(), 200))
	case errors.Is(err, mail.ErrMoving), errors.Is(err, mail.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return no(imap.ResponseCodeUnavailable, "Temporarily unavailable, try again")
	case errors.Is(err, mail.ErrNotOwner):
		return &imap.Error{Type: imap.StatusResponseTypeBye, Code: imap.ResponseCodeUnavailable,
			Text: "This mailbox has moved, reconnect"}
	}
	se.srv.log.Error("imap command failed", "op", op, "account", se.acct.ID, "err", err)
	return no(imap.ResponseCodeServerBug, "Internal error, try again")
}
