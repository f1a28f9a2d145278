package api

import (
	"net/http"

	"github.com/cellmail/cellmail/cell/internal/outbound"
	"github.com/cellmail/cellmail/controlplane/placement"
)

// ServeDKIM answers an operator's GET /v1/dkim/{domain}: the DNS record to
// publish for this cell's DKIM key of the domain, making the key if the
// cell has none yet. Operator token only.
func (m *MailServer) ServeDKIM(selector string) http.HandlerFunc {
	return m.operator(func(w http.ResponseWriter, r *http.Request) {
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
		writeJSON(w, map[string]string{"domain": domain, "selector": sel, "name": sel + "._domainkey." + domain, "txt": txt})
	})
}
