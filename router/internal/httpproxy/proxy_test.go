package httpproxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// twoCells is a map copy in which old owns every address of example.com
// until a refresh says new does.
type twoCells struct{ cur, fresh *placement.Map }

func newTwoCells(t *testing.T, oldURL, newURL string) *twoCells {
	t.Helper()
	at := func(epoch uint64, owner string) *placement.Map {
		m, err := placement.NewMap(epoch, []placement.Cell{{Name: "old", Jurisdiction: 1, APIURL: oldURL}, {Name: "new", Jurisdiction: 1, APIURL: newURL}},
			[]placement.Domain{{Name: "example.com", Jurisdiction: 1, Mode: placement.ModeConsumer}},
			[]placement.Range{{Jurisdiction: 1, Cell: owner, Epoch: epoch}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	return &twoCells{cur: at(1, "old"), fresh: at(2, "new")}
}

func (c *twoCells) Map() *placement.Map                            { return c.cur }
func (c *twoCells) Lookup(address string) (placement.Route, error) { return c.cur.Lookup(address) }
func (c *twoCells) Refresh(_ context.Context, address string) (placement.Route, error) {
	return c.fresh.Lookup(address)
}

// h2cServer serves h as the cells do: HTTP/2 over cleartext.
func h2cServer(h http.HandlerFunc) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	return srv
}

// A call's body is replayed to the new owner on WRONG_CELL when it was
// buffered (up to the pre-login bound); a larger one, streamed, is not
// replayed: the client is asked to retry (unavailable), and the new owner
// is what the router now resolves.
func TestWrongCellReplaysOnlyBufferedBodies(t *testing.T) {
	var oldGot, newGot atomic.Int64
	oldCell := h2cServer(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		oldGot.Add(n)
		(&routing.WrongCell{Owner: "new", Epoch: 2}).SetHeader(w.Header())
		w.WriteHeader(http.StatusPreconditionFailed)
	})
	defer oldCell.Close()
	newCell := h2cServer(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		newGot.Add(n)
		w.WriteHeader(http.StatusOK)
	})
	defer newCell.Close()
	p := New(routing.New(newTwoCells(t, oldCell.URL, newCell.URL), routing.Config{}), Config{})
	token := "Bearer cm1." + base64.RawURLEncoding.EncodeToString([]byte("a@example.com")) + ".x"
	call := func(size int) int {
		req := httptest.NewRequest(http.MethodPost, "/cellmail.mail.v1.MailService/SendMessage", bytes.NewReader(make([]byte, size)))
		req.Header.Set("Authorization", token)
		req.Header.Set("Content-Type", "application/proto")
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := call(1000); code != http.StatusOK || newGot.Load() != 1000 {
		t.Fatalf("small body: %d, new owner got %d bytes; want 200 and the whole body replayed", code, newGot.Load())
	}
	newGot.Store(0)
	if code := call(1 << 20); code != http.StatusServiceUnavailable || newGot.Load() != 0 {
		t.Fatalf("1 MiB body: %d, new owner got %d bytes; want 503 (retry) and nothing half-sent", code, newGot.Load())
	}
	if oldGot.Load() < 1<<20 {
		t.Fatalf("the old owner read %d bytes of the streamed body", oldGot.Load())
	}
	// Without a token, more than the pre-login bound is refused as read.
	req := httptest.NewRequest(http.MethodPost, "/cellmail.mail.v1.MailService/Login", strings.NewReader(strings.Repeat("a", PreLoginBodyBytes+1)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "resource_exhausted") {
		t.Fatalf("pre-login body over the bound: %d %s", rec.Code, rec.Body)
	}
}

// A cell answering MOVING holds the call, which is replayed (same body, the
// epoch again) when the wait is over: the client sees no error. A cell
// that stays MOVING past the contract's bound gets the client a 503.
func TestMovingHoldsTheCall(t *testing.T) {
	var calls, moving atomic.Int64
	moving.Store(1)
	cell := h2cServer(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls.Add(1)
		if r.Header.Get(routing.HeaderMapEpoch) != "1" || string(b) != "hello" {
			t.Errorf("call %d: epoch %q, body %q", calls.Load(), r.Header.Get(routing.HeaderMapEpoch), b)
		}
		if moving.Add(-1) >= 0 {
			(&routing.Moving{RetryAfter: 10 * time.Millisecond}).SetHeader(w.Header())
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	defer cell.Close()
	p := New(routing.New(newTwoCells(t, cell.URL, cell.URL), routing.Config{MaxWait: 200 * time.Millisecond}), Config{})
	call := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/cellmail.mail.v1.MailService/SendMessage", strings.NewReader("hello"))
		req.Header.Set("Authorization", "Bearer cm1."+base64.RawURLEncoding.EncodeToString([]byte("a@example.com"))+".x")
		req.Header.Set("Content-Type", "application/proto")
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		return rec
	}
	if rec := call(); rec.Code != http.StatusOK || calls.Load() != 2 || rec.Header().Get(routing.HeaderHops) != "1" {
		t.Fatalf("MOVING once: %d after %d calls (hops %q), want 200 after 2", rec.Code, calls.Load(), rec.Header().Get(routing.HeaderHops))
	}
	calls.Store(0)
	moving.Store(1000)
	if rec := call(); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "unavailable") || calls.Load() < 2 {
		t.Fatalf("MOVING for ever: %d %s after %d calls, want 503 unavailable", rec.Code, rec.Body, calls.Load())
	}
}
