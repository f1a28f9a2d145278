package mail

import (
	"errors"
	"strings"
	"time"
)

// More sentinels of the mail store.
var (
	ErrExists       = errors.New("already exists")
	ErrOverQuota    = errors.New("over quota")
	ErrLimit        = errors.New("limit exceeded")
	ErrUnauthorized = errors.New("not authenticated")
	ErrRateLimited  = errors.New("rate limited")
)

// SpecialUse is RFC 6154's mailbox attribute.
type SpecialUse int16

// Special-use values, stored in the database: never renumber.
const (
	UseNone SpecialUse = iota
	UseInbox
	UseSent
	UseDrafts
	UseTrash
	UseJunk
	UseArchive
)

// DefaultMailboxes are made with every account.
var DefaultMailboxes = []struct {
	Name string
	Use  SpecialUse
}{
	{"INBOX", UseInbox}, {"Sent", UseSent}, {"Drafts", UseDrafts},
	{"Trash", UseTrash}, {"Junk", UseJunk}, {"Archive", UseArchive},
}

// Account is a mailbox owner.
type Account struct {
	ID           string
	Address      string
	Domain       string
	PlacementKey string
	Jurisdiction string
	KeyHash      uint64
	DisplayName  string
	PasswordHash string
	QuotaBytes   int64
	UsedBytes    int64
	CreatedAt    time.Time
}

// Mailbox is a folder of an account.
type Mailbox struct {
	ID            string
	Name          string
	SpecialUse    SpecialUse
	UIDValidity   uint32
	UIDNext       uint32
	HighestModseq uint64
	Total         int
	Unread        int
}

// Address is a display name and an email address.
type Address struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email"`
}

// Flags are a message's system flags.
type Flags struct {
	Seen, Flagged, Answered, Draft bool
	// Deleted is IMAP's \Deleted: marked for EXPUNGE (RFC 9051 §2.3.2).
	Deleted bool
}

// Message is what the store keeps of a message (the body is a blob).
type Message struct {
	ID             string
	MailboxID      string
	UID            uint32
	Modseq         uint64
	Flags          Flags
	Labels         []string
	ReceivedAt     time.Time
	SentAt         time.Time
	Size           int64
	Subject        string
	From           Address
	To             []Address
	MessageID      string
	ThreadID       string
	Snippet        string
	HasAttachments bool
	// The stored message is Prefix followed by the blob BlobRef
	// (blobstore.OpenMessage): Prefix holds the header fields the cell
	// added when it filed the message, BlobRef the message as accepted,
	// stored once for every mailbox that holds it.
	BlobRef string
	Prefix  []byte
	// EnvelopeHeader is the raw header fields of the IMAP ENVELOPE, when
	// kept (message.EnvelopeHeader); read only where asked for.
	EnvelopeHeader []byte
}

// AttachmentMeta describes one attachment of a stored message.
type AttachmentMeta struct {
	PartID      string
	Filename    string
	ContentType string
	Size        int64
	ContentID   string
	// BlobRef is the decoded content's blob, for attachments stored before
	// they were read from the message itself; empty: read from the message
	// (message.OpenPart).
	BlobRef string
}

// NewMessage is a message to store.
type NewMessage struct {
	Message
	// References and In-Reply-To, to find the thread.
	ThreadRefs  []string
	Attachments []AttachmentMeta
	// DeliveryKey makes the insert idempotent per mailbox: a second insert
	// with the same key returns the first message.
	DeliveryKey string
	// SpoolID, when set, is marked delivered in the same transaction; an
	// entry already delivered makes the insert fail with
	// ErrAlreadyDelivered and change nothing.
	SpoolID string
	// Inline are blobs (the message, small attachments) stored in the
	// metadata store with the message's rows, in the same transaction,
	// instead of in the blob store.
	Inline []InlineBlob
}

// Insert is one message to store (Store.InsertMessages).
type Insert struct {
	AccountID, MailboxID string
	Message              NewMessage
}

// InsertResult is the outcome of one Insert.
type InsertResult struct {
	Message Message
	Err     error
}

// InlineBlob is a small blob kept in the metadata store: Ref is the hex
// SHA-256 of Data, as in the blob store.
type InlineBlob struct {
	Ref  string
	Data []byte
}

// FlagChange changes flags of messages; nil fields are left as they are.
type FlagChange struct {
	Seen, Flagged, Answered, Draft, Deleted *bool
	AddLabels, RemoveLabels                 []string
	// ReplaceLabels makes AddLabels the whole new set of the labels IMAP
	// shows (IMAP STORE FLAGS): labels that are not IMAP keywords
	// (IsKeyword), which an IMAP client cannot see, stay.
	ReplaceLabels bool
	// UnchangedSince, when not 0, leaves alone the messages whose modseq is
	// above it (RFC 7162 §3.1.3, STORE UNCHANGEDSINCE).
	UnchangedSince uint64
	// InMailbox, when set, changes only the messages still in that
	// mailbox: an IMAP STORE on the selected mailbox passes over a message
	// another session moved away meanwhile (it keeps its id).
	InMailbox string
}

// Change kinds of the journal.
const (
	ChangeMessageAdded   = "message_added"
	ChangeMessageRemoved = "message_removed"
	ChangeFlags          = "flags_changed"
	ChangeMailboxAdded   = "mailbox_added"
	ChangeMailboxRenamed = "mailbox_renamed"
	ChangeMailboxRemoved = "mailbox_removed"
)

// Change is one entry of an account's journal.
type Change struct {
	Modseq    uint64
	Kind      string
	MailboxID string
	MessageID string
	UID       uint32
}

// ListFilter narrows a message list.
type ListFilter struct {
	UnreadOnly, FlaggedOnly bool
	Label                   string
}

// Filter is one of a user's rules for inbound mail: when Field contains
// Contains (case-insensitive), the actions apply. Field is "from", "to"
// (To and Cc), "subject" or "header:<Name>".
type Filter struct {
	ID        string
	Field     string
	Contains  string
	MailboxID string // file into this mailbox; empty: leave it where it goes
	MarkSeen  bool
	Flag      bool
	Labels    []string
	Stop      bool // later rules do not run
}

// IsKeyword reports whether a label is shown to IMAP as a keyword: an IMAP
// atom (RFC 9051 §2.3.2, §9 flag-keyword) of at most 100 octets, not a
// system flag. Other labels (with spaces, non-ASCII, ...) are the API's
// only, and IMAP's STORE FLAGS leaves them alone.
func IsKeyword(s string) bool {
	if s == "" || len(s) > 100 || s[0] == '\\' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || strings.IndexByte(`(){%*"\]`, c) >= 0 {
			return false
		}
	}
	return true
}
