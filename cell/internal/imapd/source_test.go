package imapd

import (
	"log/slog"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/cellmail/cellmail/controlplane/routing"
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
		{"router first", "10.1.2.3", func(se *session) { se.fromRouter(id("203.0.113.9"), "10.1.2.3") }, "203.0.113.9"},
		{"loopback router", "127.0.0.1", func(se *session) { se.fromRouter(id("2001:db8::1"), "127.0.0.1") }, "2001:db8::1"},
		{"untrusted peer", "198.51.100.1", func(se *session) { se.fromRouter(id("203.0.113.9"), "198.51.100.1") }, ""},
		{"second ID", "10.1.2.3", func(se *session) {
			se.fromRouter(id("203.0.113.9"), "10.1.2.3")
			se.fromRouter(id("192.0.2.1"), "10.1.2.3")
		}, "203.0.113.9"},
		{"client's ID first", "10.1.2.3", func(se *session) {
			se.fromRouter(&imap.IDData{Name: "thunderbird"}, "10.1.2.3")
			se.fromRouter(id("192.0.2.1"), "10.1.2.3")
		}, ""},
		{"after a login", "10.1.2.3", func(se *session) {
			se.loginTried = true
			se.fromRouter(id("192.0.2.1"), "10.1.2.3")
		}, ""},
		{"not an address", "10.1.2.3", func(se *session) { se.fromRouter(id("evil, 1.2.3.4"), "10.1.2.3") }, ""},
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

// The router's map epoch, which the fence checks at login, is taken as the
// client's address is: from the first ID, from a trusted proxy only.
func TestRouterEpoch(t *testing.T) {
	srv := New(Config{Logger: slog.New(slog.DiscardHandler)})
	id := func(epoch string) *imap.IDData {
		return &imap.IDData{Extra: map[string]string{"x-originating-ip": "203.0.113.9", routing.EpochIDField: epoch}}
	}
	for _, tc := range []struct {
		name  string
		steps func(se *session)
		want  uint64
	}{
		{"router first", func(se *session) { se.fromRouter(id("17"), "10.1.2.3") }, 17},
		{"epoch alone", func(se *session) {
			se.fromRouter(&imap.IDData{Extra: map[string]string{routing.EpochIDField: "9"}}, "127.0.0.1")
		}, 9},
		{"untrusted peer", func(se *session) { se.fromRouter(id("17"), "198.51.100.1") }, 0},
		{"second ID", func(se *session) {
			se.fromRouter(id("17"), "10.1.2.3")
			se.fromRouter(id("99"), "10.1.2.3")
		}, 17},
		{"after a login", func(se *session) {
			se.loginTried = true
			se.fromRouter(id("17"), "10.1.2.3")
		}, 0},
		{"not a number", func(se *session) { se.fromRouter(id("-1"), "10.1.2.3") }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			se := &session{srv: srv}
			tc.steps(se)
			if se.epoch != tc.want {
				t.Fatalf("epoch = %d, want %d", se.epoch, tc.want)
			}
		})
	}
}
