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

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/router/internal/route"
)

// twoCells resolves every address to old first and, once refreshed, to
// new.
type twoCells struct{ old, new route.Target }

func (c twoCells) Resolve(string) (route.Target, error) { return c.old, nil }
func (c twoCells) Refresh(context.Context, string) (route.Target, error) {
	return c.new, nil
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
		w.Header().Set(headerWrongCell, "new")
		w.Header().Set(headerOwnerEpoch, "2")
		w.WriteHeader(http.StatusPreconditionFailed)
	})
	defer oldCell.Close()
	newCell := h2cServer(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		newGot.Add(n)
		w.WriteHeader(http.StatusOK)
	})
	defer newCell.Close()
	p := New(twoCells{old: route.Target{Cell: placement.Cell{Name: "old", APIURL: oldCell.URL}},
		new: route.Target{Cell: placement.Cell{Name: "new", APIURL: newCell.URL}}}, Config{})
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
