package api

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// Operator endpoints of the outbound queue (mailctl queue), operator token
// only:
//
//	GET  /v1/queue[?all=1]       pending entries (or all), oldest first
//	GET  /v1/queue/{id}          one entry
//	POST /v1/queue/{id}/retry    make a pending entry due now
//	POST /v1/queue/{id}/release  send a held entry (likely spam) after all
//	POST /v1/queue/{id}/drop     take a pending or held entry out, undelivered
func (m *MailServer) QueueHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/queue", m.operator(func(w http.ResponseWriter, r *http.Request) {
		items, err := m.store.ListOutbound(r.Context(), r.URL.Query().Get("all") == "1", 1000)
		if err != nil {
			m.log.Error("queue list", "err", err)
			http.Error(w, "queue not available", http.StatusServiceUnavailable)
			return
		}
		out := make([]queueJSON, len(items))
		for i, q := range items {
			out[i] = toQueueJSON(q)
		}
		writeJSON(w, map[string]any{"entries": out})
	}))
	mux.HandleFunc("GET /v1/queue/{id}", m.operator(func(w http.ResponseWriter, r *http.Request) {
		e, state, next, err := m.store.OutboundByID(r.Context(), r.PathValue("id"))
		if err != nil {
			http.Error(w, "no such queue entry", http.StatusNotFound)
			return
		}
		writeJSON(w, toQueueJSON(mailstore.QueueItem{OutboundEntry: e, State: state, NextAttempt: next, Size: len(e.Body)}))
	}))
	mux.HandleFunc("POST /v1/queue/{id}/retry", m.operator(func(w http.ResponseWriter, r *http.Request) {
		ok, err := m.store.RetryOutboundNow(r.Context(), r.PathValue("id"))
		m.queueResult(w, ok, err)
		if ok {
			m.wakeOutbound("")
		}
	}))
	mux.HandleFunc("POST /v1/queue/{id}/release", m.operator(func(w http.ResponseWriter, r *http.Request) {
		ok, err := m.store.ReleaseOutbound(r.Context(), r.PathValue("id"), "released by an operator at "+time.Now().UTC().Format(time.RFC3339))
		m.queueResult(w, ok, err)
		if ok {
			m.wakeOutbound("")
		}
	}))
	mux.HandleFunc("POST /v1/queue/{id}/drop", m.operator(func(w http.ResponseWriter, r *http.Request) {
		ok, err := m.store.DropOutbound(r.Context(), r.PathValue("id"), "dropped by an operator at "+time.Now().UTC().Format(time.RFC3339))
		m.queueResult(w, ok, err)
	}))
}

func (m *MailServer) queueResult(w http.ResponseWriter, ok bool, err error) {
	switch {
	case err != nil:
		m.log.Error("queue change", "err", err)
		http.Error(w, "queue not available", http.StatusServiceUnavailable)
	case !ok:
		http.Error(w, "no pending queue entry with that id", http.StatusNotFound)
	default:
		writeJSON(w, map[string]bool{"ok": true})
	}
}

// operator wraps h with the operator-token check.
func (m *MailServer) operator(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if m.operatorToken == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(m.operatorToken)) != 1 {
			http.Error(w, "operator token required", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

type queueJSON struct {
	ID          string    `json:"id"`
	State       string    `json:"state"`
	From        string    `json:"from"`
	Rcpt        string    `json:"rcpt"`
	Domain      string    `json:"domain"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	LastError   string    `json:"last_error"`
	Size        int       `json:"size"`
}

var queueStates = map[int16]string{mailstore.OutboundPending: "pending", mailstore.OutboundDelivered: "delivered",
	mailstore.OutboundBounced: "bounced", mailstore.OutboundDropped: "dropped", mailstore.OutboundHeld: "held"}

func toQueueJSON(q mailstore.QueueItem) queueJSON {
	return queueJSON{ID: q.ID, State: queueStates[q.State], From: q.MailFrom, Rcpt: q.Rcpt, Domain: q.Domain,
		Attempts: q.Attempts, NextAttempt: q.NextAttempt, Created: q.Created, Expires: q.Expires, LastError: q.LastError, Size: q.Size}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
