// Package mail holds the cell's domain types and errors, shared by its
// transports (API, SMTP, IMAP) and adapters; it imports nothing of them.
package mail

import (
	"errors"
	"time"

	"github.com/cellmail/cellmail/controlplane/routing"
)

// Domain sentinels. Data-carrying errors wrap them.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid argument")
	ErrNotOwner    = routing.ErrWrongCell // *WrongCellError wraps it
	ErrMoving      = routing.ErrMoving    // *MovingError wraps it
	ErrStaleMap    = errors.New("cell map behind the caller's")
	ErrUnavailable = errors.New("unavailable")
	ErrDenied      = errors.New("permission denied")
	// ErrAlreadyDelivered: the spool entry of an insert was delivered
	// before (a duplicate queue record, a retried worker).
	ErrAlreadyDelivered = errors.New("spool entry already delivered")
)

// WrongCellError says who owns the subject, as of which epoch (DESIGN.md
// §3): the routing contract's type, so that what the fence answers is what
// every transport writes and every caller reads (controlplane/routing).
type WrongCellError = routing.WrongCell

// MovingError asks the caller to retry after a while (routing.Moving).
type MovingError = routing.Moving

// Delivered is the domain event of a message filed into a mailbox by the
// inbound pipeline (published on the cell's `changes` topic).
type Delivered struct {
	SpoolID, AccountID, MailboxID, MessageID string
	Modseq                                   uint64
}

// DeliveryFailed is the domain event of a processing attempt that failed
// (published on the cell's error topic): the spool entry is retried after
// Backoff, or kept as failed when Final.
type DeliveryFailed struct {
	SpoolID, AccountID, Reason string
	Attempt                    int
	Backoff                    time.Duration
	Final                      bool
}
