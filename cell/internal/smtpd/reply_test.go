package smtpd

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// The fence's routing answers are replies the router's edge reads back
// with the contract's parser; other failures are not routing answers.
func TestReplyCarriesTheRoutingCode(t *testing.T) {
	for _, tc := range []struct {
		err      error
		code     int
		enhanced smtp.EnhancedCode
		routing  error
	}{
		{fmt.Errorf("fence: %w", &mail.WrongCellError{Owner: "eu-2", Epoch: 17}), 451, smtp.EnhancedCode{4, 4, 0}, &routing.WrongCell{Owner: "eu-2", Epoch: 17}},
		{&mail.MovingError{RetryAfter: time.Second}, 451, smtp.EnhancedCode{4, 2, 1}, &routing.Moving{RetryAfter: time.Second}},
		{fmt.Errorf("%w: at 3, caller at 9", mail.ErrStaleMap), 451, smtp.EnhancedCode{4, 4, 0}, nil},
		{fmt.Errorf("%w: no such account", mail.ErrNotFound), 550, smtp.EnhancedCode{5, 1, 1}, nil},
		{fmt.Errorf("%w: mailbox of a@b.example is full", mail.ErrOverQuota), 452, smtp.EnhancedCode{4, 2, 2}, nil},
		{errors.New("database down"), 451, smtp.EnhancedCode{4, 3, 0}, nil},
	} {
		var se *smtp.SMTPError
		if !errors.As(reply(tc.err), &se) || se.Code != tc.code || se.EnhancedCode != tc.enhanced {
			t.Errorf("reply(%v) = %v, want %d %v", tc.err, se, tc.code, tc.enhanced)
			continue
		}
		if got := routing.ParseResponseCode(se.Message); !reflect.DeepEqual(got, tc.routing) {
			t.Errorf("reply(%v) text %q reads as %v, want %v", tc.err, se.Message, got, tc.routing)
		}
	}
}

func TestRcptEpoch(t *testing.T) {
	for _, tc := range []struct {
		opts *smtp.RcptOptions
		want uint64
		bad  bool
	}{
		{nil, 0, false},
		{&smtp.RcptOptions{}, 0, false},
		{&smtp.RcptOptions{Params: map[string]string{routing.EpochParam: "17"}}, 17, false},
		{&smtp.RcptOptions{Params: map[string]string{routing.EpochParam: "x"}}, 0, true},
		{&smtp.RcptOptions{Params: map[string]string{routing.EpochParam: ""}}, 0, true},
	} {
		got, err := rcptEpoch(tc.opts)
		var se *smtp.SMTPError
		if got != tc.want || (err != nil) != tc.bad || (tc.bad && (!errors.As(err, &se) || se.Code != 501)) {
			t.Errorf("rcptEpoch(%+v) = %d, %v", tc.opts, got, err)
		}
	}
}
