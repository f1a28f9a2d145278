package routing

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func TestResponseCodes(t *testing.T) {
	for _, tc := range []struct {
		text string
		want error
	}{
		{"[CELLMAIL-WRONG-CELL eu-2 17] Mailbox is served by another cell", &WrongCell{Owner: "eu-2", Epoch: 17}},
		{" [cellmail-wrong-cell eu-2 17]", &WrongCell{Owner: "eu-2", Epoch: 17}},
		{"[CELLMAIL-MOVING 1000] Mailbox is moving, try again shortly", &Moving{RetryAfter: time.Second}},
		{"[CELLMAIL-MOVING 0]", &Moving{}},
		{"[UNAVAILABLE] This mailbox is served elsewhere", nil},
		{"Mailbox temporarily unavailable [CELLMAIL-MOVING 1000]", nil},
		{"[CELLMAIL-WRONG-CELL eu-2] no epoch", nil},
		{"[CELLMAIL-WRONG-CELL eu-2 -1]", nil},
		{"[CELLMAIL-WRONG-CELL eu-2 17", nil},
		{"[CELLMAIL-MOVING soon]", nil},
		{"[CELLMAIL-MOVING 99999999999]", nil},
		{"", nil},
	} {
		if got := ParseResponseCode(tc.text); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseResponseCode(%q) = %#v, want %#v", tc.text, got, tc.want)
		}
	}
	// What a cell writes, the router reads back.
	for _, e := range []interface {
		error
		ResponseCode() string
	}{&WrongCell{Owner: "us-1", Epoch: 1 << 40}, &Moving{RetryAfter: 1500 * time.Millisecond}} {
		if got := ParseResponseCode("[" + e.ResponseCode() + "] text"); !reflect.DeepEqual(got, error(e)) {
			t.Errorf("round trip of %v: %v", e, got)
		}
	}
}

func TestHeaders(t *testing.T) {
	h := http.Header{}
	if FromHeader(h) != nil || EpochOf(h) != 0 {
		t.Fatal("empty headers carry an answer or an epoch")
	}
	SetEpoch(h, 42)
	if EpochOf(h) != 42 {
		t.Fatalf("epoch %d", EpochOf(h))
	}
	h.Set(HeaderMapEpoch, "x")
	if EpochOf(h) != 0 {
		t.Fatal("malformed epoch read")
	}
	wc := &WrongCell{Owner: "eu-2", Epoch: 9}
	wc.SetHeader(h)
	if got := FromHeader(h); !reflect.DeepEqual(got, error(wc)) {
		t.Fatalf("WRONG_CELL headers read as %v", got)
	}
	h = http.Header{}
	(&Moving{RetryAfter: 250 * time.Millisecond}).SetHeader(h)
	if got := FromHeader(h); !reflect.DeepEqual(got, error(&Moving{RetryAfter: 250 * time.Millisecond})) {
		t.Fatalf("MOVING headers read as %v", got)
	}
}

func TestFromConnect(t *testing.T) {
	if FromConnect(nil) != nil {
		t.Fatal("nil became an error")
	}
	plain := connect.NewError(connect.CodeNotFound, errors.New("no such user"))
	if FromConnect(plain) != error(plain) {
		t.Fatal("a plain Connect error was changed")
	}
	other := errors.New("dial tcp: refused")
	if FromConnect(other) != other {
		t.Fatal("a non-Connect error was changed")
	}
	ce := connect.NewError(connect.CodeFailedPrecondition, errors.New("WRONG_CELL"))
	(&WrongCell{Owner: "eu-2", Epoch: 3}).SetHeader(ce.Meta())
	var wc *WrongCell
	if err := FromConnect(ce); !errors.As(err, &wc) || wc.Owner != "eu-2" || wc.Epoch != 3 || !errors.Is(err, ErrWrongCell) {
		t.Fatalf("WRONG_CELL Connect error read as %v", err)
	}
	ce = connect.NewError(connect.CodeUnavailable, errors.New("MOVING"))
	(&Moving{RetryAfter: time.Second}).SetHeader(ce.Meta())
	if err := FromConnect(ce); !errors.Is(err, ErrMoving) {
		t.Fatalf("MOVING Connect error read as %v", err)
	}
}

func TestToken(t *testing.T) {
	tok := FormatToken("ann@x.example", []byte("0123456789abcdef0123456789abcdef"))
	sub, secret, ok := ParseToken(tok)
	if !ok || sub != "ann@x.example" || len(secret) != 43 {
		t.Fatalf("ParseToken(%q) = %q, %q, %v", tok, sub, secret, ok)
	}
	for _, bad := range []string{"", "cm1.", "cm1.YQ", "cm2.YQ.x", "cm1..x", "cm1.!!.x", "Bearer " + tok} {
		if _, _, ok := ParseToken(bad); ok {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}
