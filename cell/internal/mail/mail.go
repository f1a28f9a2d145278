// Package mail holds the cell's domain types and errors, shared by its
// transports (API, SMTP, IMAP) and adapters; it imports nothing of them.
package mail

import (
	"errors"

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
