package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// DKIMRecord is a cell's answer to GET /v1/dkim/{domain}: the TXT record
// to publish for its DKIM key of the domain.
type DKIMRecord struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	Name     string `json:"name"`
	TXT      string `json:"txt"`
}

// FetchDKIM asks the cell at apiURL for its DKIM record of domain, with an
// operator token (the cell makes the key on first use).
func FetchDKIM(ctx context.Context, apiURL, domain, token string) (DKIMRecord, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(apiURL, "/")+"/v1/dkim/"+url.PathEscape(domain), nil)
	if err != nil {
		return DKIMRecord{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return DKIMRecord{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return DKIMRecord{}, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var r DKIMRecord
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&r); err != nil {
		return DKIMRecord{}, err
	}
	return r, nil
}
