package api

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/cellmail/cellmail/cell/internal/outbound"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// ServeDKIM answers an operator's GET /v1/dkim/{domain}: the DNS record to
// publish for this cell's DKIM key of the domain, making the key if the
// cell has none yet. Operator token only.
func (m *MailServer) ServeDKIM(selector string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if m.operatorToken == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(m.operatorToken)) != 1 {
			http.Error(w, "operator token required", http.StatusUnauthorized)
			return
		}
		domain, err := placement.CanonicalDomain(r.PathValue("domain"))
		if err != nil {
			http.Error(w, "bad domain", http.StatusBadRequest)
			return
		}
		sel, key, err := m.store.DKIMKey(r.Context(), domain, outbound.NewDKIMKey(selector))
		if err != nil {
			m.log.Error("dkim key", "domain", domain, "err", err)
			http.Error(w, "key not available", http.StatusServiceUnavailable)
			return
		}
		txt, err := outbound.DKIMRecord(key)
		if err != nil {
			http.Error(w, "key not readable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"domain": domain, "selector": sel,
			"name": sel + "._domainkey." + domain, "txt": txt})
	}
}
