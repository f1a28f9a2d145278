package imapd

import (
	"log/slog"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// The client's address is taken from the first ID of a connection, before
// any login, and only from a trusted proxy; anything else keeps the peer's.
func TestOriginatingIP(t *testing.T) {
	srv := New(Config{Logger: slog.New(slog.DiscardHandler)}) // default: loopback and private peers
	id := func(ip string) *imap.IDData { return &imap.IDData{Extra: map[string]string{"x-originating-ip": ip}} }
	for _, tc := range []struct {
		name  string
		peer  string
		steps func(se *session)
		want  string
	}{
		{"router first", "10.1.2.3", func(se *session) { se.originatingIP(id("203.0.113.9"), "10.1.2.3") }, "203.0.113.9"},
		{"loopback router", "127.0.0.1", func(se *session) { se.originatingIP(id("2001:db8::1"), "127.0.0.1") }, "2001:db8::1"},
		{"untrusted peer", "198.51.100.1", func(se *session) { se.originatingIP(id("203.0.113.9"), "198.51.100.1") }, ""},
		{"second ID", "10.1.2.3", func(se *session) {
			se.originatingIP(id("203.0.113.9"), "10.1.2.3")
			se.originatingIP(id("192.0.2.1"), "10.1.2.3")
		}, "203.0.113.9"},
		{"client's ID first", "10.1.2.3", func(se *session) {
			se.originatingIP(&imap.IDData{Name: "thunderbird"}, "10.1.2.3")
			se.originatingIP(id("192.0.2.1"), "10.1.2.3")
		}, ""},
		{"after a login", "10.1.2.3", func(se *session) {
			se.loginTried = true
			se.originatingIP(id("192.0.2.1"), "10.1.2.3")
		}, ""},
		{"not an address", "10.1.2.3", func(se *session) { se.originatingIP(id("evil, 1.2.3.4"), "10.1.2.3") }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			se := &session{srv: srv}
			tc.steps(se)
			if se.client != tc.want {
				t.Fatalf("client = %q, want %q", se.client, tc.want)
			}
		})
	}
}
