package api_test

import (
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
	"github.com/cellmail/cellmail/cell/internal/api"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/internal/pgserver"
)

var pg *pgserver.Server

func TestMain(m *testing.M) { os.Exit(pgserver.TestMain(m, "api", &pg)) }

const operatorToken = "operator-token-0123456789"

// The OperatorService answers only the operator token; a held entry is
// listed, released once (pending and due, the senders woken), and a second
// release, or a drop of an entry already sent on its way, is not_found
// and changes nothing.
func TestOperatorQueue(t *testing.T) {
	store, blobs, a := mailstoretest.New(t, pg, "alice@demo.example")
	woken := 0
	log := slog.New(slog.DiscardHandler)
	m := api.NewMailServer(api.MailConfig{Server: api.NewServer(nil, nil, api.NoSubjects{}, log), Store: store, Blobs: blobs,
		Limits: message.DefaultLimits(), OperatorToken: operatorToken, WakeOutbound: func(string) { woken++ }, Logger: log})
	_, h := cellv1connect.NewOperatorServiceHandler(m.Operator("cm-test"), connect.WithInterceptors(m.OperatorInterceptor()))
	srv := httptest.NewServer(h)
	defer srv.Close()
	op := cellv1connect.NewOperatorServiceClient(srv.Client(), srv.URL)
	with := func(tok string, req connect.AnyRequest) {
		req.Header().Set("Authorization", "Bearer "+tok)
	}
	ctx := t.Context()
	if err := store.EnqueueOutbound(ctx, a.ID, a.Address, []string{"x@remote.example"}, []byte("Subject: x\r\n\r\nx\r\n"),
		time.Hour, "held for review: likely spam"); err != nil {
		t.Fatal(err)
	}
	list := connect.NewRequest(&cellv1.ListQueueRequest{})
	if _, err := op.ListQueue(ctx, list); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("list without a token: %v", err)
	}
	with("wrong-token-0123456789", list)
	if _, err := op.ListQueue(ctx, list); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("list with a wrong token: %v", err)
	}
	with(operatorToken, list)
	got, err := op.ListQueue(ctx, list)
	if err != nil || len(got.Msg.Entries) != 1 || got.Msg.Entries[0].State != "held" || got.Msg.Entries[0].LastError == "" {
		t.Fatalf("list: %v %v", got, err)
	}
	id := got.Msg.Entries[0].Id
	retry := connect.NewRequest(&cellv1.RetryQueueEntryRequest{Id: id})
	with(operatorToken, retry)
	if _, err := op.RetryQueueEntry(ctx, retry); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("retry of a held entry: %v, want not_found (release it)", err)
	}
	release := connect.NewRequest(&cellv1.ReleaseQueueEntryRequest{Id: id})
	with(operatorToken, release)
	rel, err := op.ReleaseQueueEntry(ctx, release)
	if err != nil || rel.Msg.Entry.State != "pending" || woken != 1 {
		t.Fatalf("release: %v %v, senders woken %d times", rel, err, woken)
	}
	if _, err := op.ReleaseQueueEntry(ctx, release); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("second release: %v, want not_found", err)
	}
	get := connect.NewRequest(&cellv1.GetQueueEntryRequest{Id: "not-an-id"})
	with(operatorToken, get)
	if _, err := op.GetQueueEntry(ctx, get); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("get of a bad id: %v, want not_found", err)
	}
	drop := connect.NewRequest(&cellv1.DropQueueEntryRequest{Id: id})
	with(operatorToken, drop)
	if d, err := op.DropQueueEntry(ctx, drop); err != nil || d.Msg.Entry.State != "dropped" {
		t.Fatalf("drop: %v %v", d, err)
	}
	dkim := connect.NewRequest(&cellv1.GetDKIMRecordRequest{Domain: "Demo.Example"})
	with(operatorToken, dkim)
	rec, err := op.GetDKIMRecord(ctx, dkim)
	if err != nil || rec.Msg.Name != "cm-test._domainkey.demo.example" || rec.Msg.Txt == "" {
		t.Fatalf("dkim: %v %v", rec, err)
	}
}
