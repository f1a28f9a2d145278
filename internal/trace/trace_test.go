package trace

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

func TestFieldRoundTrip(t *testing.T) {
	in := Info{Helo: "mail.example.org", IP: netip.MustParseAddr("192.0.2.7"), By: "mx.cellmail.test",
		Protocol: "ESMTPS", ID: "abc123", Time: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}
	body := []byte("From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n")
	raw := append([]byte(Field(in)), body...)
	got, rest, ok := Split(raw)
	if !ok {
		t.Fatalf("Split did not find the field in %q", raw)
	}
	if !got.Time.Equal(in.Time) {
		t.Fatalf("time %v, want %v", got.Time, in.Time)
	}
	got.Time = in.Time
	if got != in {
		t.Fatalf("Split = %+v, want %+v", got, in)
	}
	if !bytes.Equal(rest, body) {
		t.Fatalf("rest = %q", rest)
	}
}

func TestFieldIPv6AndHostileHelo(t *testing.T) {
	in := Info{Helo: "evil (x) [1.2.3.4]; by\r\nX-Injected: 1", IP: netip.MustParseAddr("2001:db8::1"), By: "mx",
		Protocol: "ESMTP", ID: "id", Time: time.Unix(0, 0)}
	raw := []byte(Field(in) + "Subject: x\r\n\r\n")
	got, rest, ok := Split(raw)
	if !ok {
		t.Fatalf("not parsed: %q", raw)
	}
	if got.IP != in.IP || got.Helo != "evilx1.2.3.4byX-Injected:1" {
		t.Fatalf("got %+v", got)
	}
	if string(rest) != "Subject: x\r\n\r\n" {
		t.Fatalf("rest %q: the HELO must not add header fields", rest)
	}
}

func TestSplitRefusesOtherFields(t *testing.T) {
	for _, raw := range []string{
		"Subject: x\r\n\r\n",
		"Received: from a (b [1.2.3.4]) by c with SMTP id d; Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n",
		"Received: from a ([1.2.3.4]) by c (cellmail) with ESMTP id d; x", // unterminated
		"",
	} {
		if _, rest, ok := Split([]byte(raw)); ok || string(rest) != raw {
			t.Errorf("Split(%q) accepted", raw)
		}
	}
}
