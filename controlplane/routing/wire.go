package routing

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Sentinels of the fence's two routing answers; *WrongCell and *Moving
// wrap them.
var (
	ErrWrongCell = errors.New("subject owned by another cell")
	ErrMoving    = errors.New("subject is moving between cells")
)

// WrongCell is the fence's "not mine": the subject belongs to Owner as of
// the answering cell's map at Epoch (DESIGN.md §3).
type WrongCell struct {
	Owner string
	Epoch uint64
	// OwnerAPIURL is the owner's API as the answering cell's map has it
	// (the Connect detail carries it; the other protocols do not).
	OwnerAPIURL string
}

func (e *WrongCell) Error() string {
	return fmt.Sprintf("%v: owner %s at epoch %d", ErrWrongCell, e.Owner, e.Epoch)
}

// Unwrap makes errors.Is(err, ErrWrongCell) match.
func (e *WrongCell) Unwrap() error { return ErrWrongCell }

// Moving is the fence's "frozen by a move": retry after RetryAfter.
type Moving struct {
	RetryAfter time.Duration
}

func (e *Moving) Error() string {
	return fmt.Sprintf("%v: retry after %s", ErrMoving, e.RetryAfter)
}

// Unwrap makes errors.Is(err, ErrMoving) match.
func (e *Moving) Unwrap() error { return ErrMoving }

// HTTP headers of the contract (Connect and plain HTTP calls to a cell's
// API). The caller sends HeaderMapEpoch; a cell that does not serve the
// subject answers with HeaderWrongCell and HeaderOwnerEpoch, or with
// HeaderRetryAfterMs (next to the Connect error's typed detail), so that a
// proxy need not parse the body; the router tells its client how many
// cells the call visited in HeaderHops.
const (
	HeaderMapEpoch     = "Cellmail-Map-Epoch"
	HeaderWrongCell    = "Cellmail-Wrong-Cell"
	HeaderOwnerEpoch   = "Cellmail-Owner-Epoch"
	HeaderRetryAfterMs = "Cellmail-Retry-After-Ms"
	HeaderHops         = "Cellmail-Hops"
)

// SetEpoch puts the caller's map epoch in a request's headers.
func SetEpoch(h http.Header, epoch uint64) {
	h.Set(HeaderMapEpoch, strconv.FormatUint(epoch, 10))
}

// EpochOf reads the caller's map epoch from a request's headers; 0 (the
// fence then answers from the cell's own map) when absent or malformed.
func EpochOf(h http.Header) uint64 {
	e, _ := strconv.ParseUint(h.Get(HeaderMapEpoch), 10, 64)
	return e
}

// SetHeader puts the answer in a response's headers (or a Connect error's
// metadata).
func (e *WrongCell) SetHeader(h http.Header) {
	h.Set(HeaderWrongCell, e.Owner)
	h.Set(HeaderOwnerEpoch, strconv.FormatUint(e.Epoch, 10))
}

// SetHeader puts the answer in a response's headers (or a Connect error's
// metadata).
func (e *Moving) SetHeader(h http.Header) {
	h.Set(HeaderRetryAfterMs, strconv.FormatInt(e.RetryAfter.Milliseconds(), 10))
}

// FromHeader reads a cell's routing answer from response headers: a
// *WrongCell, a *Moving, or nil.
func FromHeader(h http.Header) error {
	if owner := h.Get(HeaderWrongCell); owner != "" {
		e, _ := strconv.ParseUint(h.Get(HeaderOwnerEpoch), 10, 64)
		return &WrongCell{Owner: owner, Epoch: e}
	}
	if v := h.Get(HeaderRetryAfterMs); v != "" {
		ms, _ := strconv.ParseInt(v, 10, 64)
		return &Moving{RetryAfter: time.Duration(max(ms, 0)) * time.Millisecond}
	}
	return nil
}

// FromConnect turns a Connect client's error carrying a cell's routing
// answer (its metadata, as SetHeader wrote it; connect.Error has Meta) into
// *WrongCell or *Moving; any other error, and nil, is returned unchanged.
func FromConnect(err error) error {
	var withMeta interface{ Meta() http.Header }
	if err == nil || !errors.As(err, &withMeta) {
		return err
	}
	if rerr := FromHeader(withMeta.Meta()); rerr != nil {
		return rerr
	}
	return err
}

// EpochParam is the LMTP RCPT parameter (an esmtp-param, RFC 5321 §4.1.2;
// "X" for a private extension) carrying the caller's map epoch, as in
// "RCPT TO:<a@example.com> XCELLMAIL-EPOCH=17". A cell advertises it as an
// LHLO keyword (RFC 2033 §4.1, RFC 5321 §4.1.1.1).
const EpochParam = "XCELLMAIL-EPOCH"

// EpochIDField is the IMAP ID field (RFC 2971 §3.3, "x-" for a private
// field) carrying the router's map epoch in the ID command it sends first
// on a cell connection, next to "x-originating-ip".
const EpochIDField = "x-cellmail-epoch"

// ParseEpoch reads an epoch as EpochParam and EpochIDField carry it.
func ParseEpoch(s string) (uint64, error) {
	e, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad map epoch %q", s)
	}
	return e, nil
}

// Response codes of the routing answers on the line protocols: IMAP's
// resp-text-code (RFC 9051 §7.1: an atom and arguments in brackets, e.g.
// "NO [CELLMAIL-WRONG-CELL eu-2 17] text") and, written the same way at the
// start of the reply text, LMTP's (RFC 5321 §4.2, RFC 3463: "451 4.4.0
// [CELLMAIL-WRONG-CELL eu-2 17] text", "451 4.2.1 [CELLMAIL-MOVING 1000]
// text"). WRONG-CELL takes the owner and the epoch, MOVING the wait in
// milliseconds.
const (
	CodeWrongCell = "CELLMAIL-WRONG-CELL"
	CodeMoving    = "CELLMAIL-MOVING"
)

// ResponseCode is the answer as a response code, without brackets.
func (e *WrongCell) ResponseCode() string {
	return CodeWrongCell + " " + e.Owner + " " + strconv.FormatUint(e.Epoch, 10)
}

// ResponseCode is the answer as a response code, without brackets.
func (e *Moving) ResponseCode() string {
	return CodeMoving + " " + strconv.FormatInt(e.RetryAfter.Milliseconds(), 10)
}

// ParseResponseCode reads a routing answer from a reply or response text
// that begins with its code in brackets: a *WrongCell, a *Moving, or nil
// (another code, no code, or a malformed one).
func ParseResponseCode(text string) error {
	rest, ok := strings.CutPrefix(strings.TrimSpace(text), "[")
	if !ok {
		return nil
	}
	code, _, ok := strings.Cut(rest, "]")
	if !ok {
		return nil
	}
	f := strings.Fields(code)
	switch {
	case len(f) == 3 && strings.EqualFold(f[0], CodeWrongCell):
		e, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return nil
		}
		return &WrongCell{Owner: f[1], Epoch: e}
	case len(f) == 2 && strings.EqualFold(f[0], CodeMoving):
		ms, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			return nil
		}
		return &Moving{RetryAfter: time.Duration(ms) * time.Millisecond}
	}
	return nil
}
