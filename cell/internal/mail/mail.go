// Package mail holds the cell's domain types and errors, shared by its
// transports (API, SMTP, IMAP) and adapters; it imports nothing of them.
package mail

import (
	"errors"
	"fmt"
	"time"
)

// Domain sentinels. Data-carrying errors wrap them.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid argument")
	ErrNotOwner    = errors.New("subject owned by another cell")
	ErrMoving      = errors.New("subject is moving between cells")
	ErrStaleMap    = errors.New("cell map behind the caller's")
	ErrUnavailable = errors.New("unavailable")
	ErrDenied      = errors.New("permission denied")
	// ErrAlreadyDelivered: the spool entry of an insert was delivered
	// before (a duplicate queue record, a retried worker).
	ErrAlreadyDelivered = errors.New("spool entry already delivered")
)

// WrongCellError says who owns the subject, as of which epoch (DESIGN.md §3).
type WrongCellError struct {
	Owner       string
	OwnerAPIURL string
	Epoch       uint64
}

func (e *WrongCellError) Error() string {
	return fmt.Sprintf("%v: owner %s at epoch %d", ErrNotOwner, e.Owner, e.Epoch)
}

// Unwrap makes errors.Is(err, ErrNotOwner) match.
func (e *WrongCellError) Unwrap() error { return ErrNotOwner }

// MovingError asks the caller to retry after a while.
type MovingError struct {
	RetryAfter time.Duration
}

func (e *MovingError) Error() string {
	return fmt.Sprintf("%v: retry after %s", ErrMoving, e.RetryAfter)
}

// Unwrap makes errors.Is(err, ErrMoving) match.
func (e *MovingError) Unwrap() error { return ErrMoving }

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
