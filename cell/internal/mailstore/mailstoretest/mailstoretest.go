// Package mailstoretest gives tests a mail store on a fresh database of a
// throwaway PostgreSQL (internal/pgserver), a blob store in a temporary
// directory, and an account in them.
package mailstoretest

import (
	"log/slog"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/internal/pgserver"
)

// New opens a store on a new database of pg and a blob store (files in a
// temporary directory, read together with the store's inline blobs as the
// cell does), both closed or removed when the test ends, and creates the account address (domain
// demo.example, jurisdiction eu, 1 GiB quota) in the store.
func New(t testing.TB, pg *pgserver.Server, address string) (*mailstore.Store, blobstore.Tiered, mail.Account) {
	t.Helper()
	dsn, err := pg.NewDB()
	if err != nil {
		t.Fatal(err)
	}
	store, err := mailstore.Open(t.Context(), dsn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	files, err := blobstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := store.CreateAccount(t.Context(), mail.Account{Address: address, Domain: "demo.example",
		PlacementKey: address, Jurisdiction: "eu", KeyHash: 1, PasswordHash: "x", QuotaBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	return store, blobstore.Tiered{Store: files, Inline: store}, a
}
