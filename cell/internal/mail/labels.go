package mail

import (
	"fmt"
	"unicode/utf8"
)

// Label bounds, the same for the API's labels, IMAP keywords (stored as
// labels) and filter actions. A label's bytes count against the account's
// quota (the store charges them).
const (
	// MaxLabelBytes bounds one label.
	MaxLabelBytes = 200
	// MaxMessageLabels bounds the labels of one message.
	MaxMessageLabels = 100
	// MaxFilterLabels bounds the labels one filter rule adds.
	MaxFilterLabels = 20
	// MaxFiltersLabels bounds the distinct labels of all of an account's
	// filter rules, so that deliveries never take an account past
	// MaxAccountLabels by more than that.
	MaxFiltersLabels = 100
	// MaxAccountLabels bounds the distinct labels an account uses.
	MaxAccountLabels = 1000
)

// CheckLabel refuses (ErrInvalid) an empty label, one over MaxLabelBytes,
// invalid UTF-8, and C0 or C1 controls.
func CheckLabel(l string) error {
	switch {
	case l == "":
		return fmt.Errorf("%w: empty label", ErrInvalid)
	case len(l) > MaxLabelBytes:
		return fmt.Errorf("%w: label over %d bytes", ErrInvalid, MaxLabelBytes)
	case !utf8.ValidString(l):
		return fmt.Errorf("%w: label is not valid UTF-8", ErrInvalid)
	}
	for _, r := range l {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			return fmt.Errorf("%w: label has a control character", ErrInvalid)
		}
	}
	return nil
}

// CheckLabels applies CheckLabel to each label and refuses more than max
// distinct labels; what names them in the error ("labels of a message").
func CheckLabels(labels []string, max int, what string) error {
	distinct := map[string]bool{}
	for _, l := range labels {
		if err := CheckLabel(l); err != nil {
			return err
		}
		distinct[l] = true
	}
	if len(distinct) > max {
		return fmt.Errorf("%w: more than %d %s", ErrInvalid, max, what)
	}
	return nil
}
