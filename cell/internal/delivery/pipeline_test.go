package delivery_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/clamd"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/cell/internal/msgauth"
	"github.com/cellmail/cellmail/cell/internal/spam"
	"github.com/cellmail/cellmail/internal/clamdtest"
	"github.com/cellmail/cellmail/internal/dnstest"
	"github.com/cellmail/cellmail/internal/pgserver"
	"github.com/cellmail/cellmail/internal/trace"
)

var pg *pgserver.Server

func TestMain(m *testing.M) { os.Exit(pgserver.TestMain(m, "delivery", &pg)) }

type fixture struct {
	store   *mailstore.Store
	blobs   blobstore.Tiered
	p       *delivery.Pipeline
	account mail.Account
	boxes   map[mail.SpecialUse]mail.Mailbox
	key     ed25519.PrivateKey
}

func setup(t testing.TB, withClamd bool) *fixture {
	t.Helper()
	store, blobs, a := mailstoretest.New(t, pg, "bob@demo.example")
	log := slog.New(slog.DiscardHandler)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		`sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`s1._domainkey.sender.example. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`,
		`_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"`)
	lim := message.DefaultLimits()
	lim.MaxDepth = 5
	p := &delivery.Pipeline{D: delivery.New(blobs, store, lim), Store: store, Log: log,
		Auth: &msgauth.Checker{AuthServID: "mx.test", Resolver: dns.Resolver(), Timeout: 5 * time.Second}}
	if withClamd {
		p.Virus = &clamd.Client{Addr: clamdtest.Start(t)}
	}
	list, _, err := store.ListMailboxes(t.Context(), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	boxes := map[mail.SpecialUse]mail.Mailbox{}
	for _, b := range list {
		boxes[b.SpecialUse] = b
	}
	return &fixture{store: store, blobs: blobs, p: p, account: a, boxes: boxes, key: priv}
}

// unlimited creates an account without a quota.
func (f *fixture) unlimited(t testing.TB, address string) mail.Account {
	t.Helper()
	a, err := f.store.CreateAccount(t.Context(), mail.Account{Address: address, Domain: "demo.example",
		PlacementKey: address, Jurisdiction: "eu", KeyHash: 1, PasswordHash: "x"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// spool accepts raw from ip as the LMTP endpoint does (with the edge's
// trace field) and returns the claimed entry.
func (f *fixture) spool(t *testing.T, ip, mailFrom, raw string) mailstore.SpoolEntry {
	t.Helper()
	field := trace.Field(trace.Info{Helo: "mta.sender.example", IP: netip.MustParseAddr(ip), By: "mx.test",
		Protocol: "ESMTP", ID: "x", Time: time.Now()})
	full := []byte(field + raw)
	ref, _, err := f.blobs.Put(t.Context(), bytes.NewReader(full))
	if err != nil {
		t.Fatal(err)
	}
	e := mailstore.SpoolEntry{AccountID: f.account.ID, MailFrom: mailFrom, Rcpt: f.account.Address, BlobRef: ref,
		DeliveryKey: delivery.Key(mailFrom, f.account.Address, []byte(raw))}
	if err := f.store.Spool(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	got, err := f.store.ClaimSpool(t.Context(), 10, time.Minute)
	if err != nil || len(got) != 1 {
		t.Fatalf("claim: %v %v", got, err)
	}
	return got[0]
}

func (f *fixture) messages(t *testing.T, use mail.SpecialUse) []mail.Message {
	t.Helper()
	ms, err := f.store.ListMessages(t.Context(), f.account.ID, f.boxes[use].ID, mail.ListFilter{}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func (f *fixture) raw(t *testing.T, m mail.Message) string {
	t.Helper()
	b, err := blobstore.OpenMessage(t.Context(), f.blobs, m.BlobRef, m.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, _ := io.ReadAll(b)
	return string(data)
}

const plain = "From: Ann <ann@sender.example>\r\nTo: bob@demo.example\r\nSubject: %s\r\n" +
	"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%s@sender.example>\r\n\r\n%s\r\n"

func (f *fixture) signed(t *testing.T, subject, body string) string {
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(fmt.Sprintf(plain, subject, subject, body)), &dkim.SignOptions{
		Domain: "sender.example", Selector: "s1", Signer: f.key, HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"}})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestAuthenticatedMessageReachesInboxOnce(t *testing.T) {
	f := setup(t, false)
	e := f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, "hello", "Hi Bob."))
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	// A duplicate record, and the same entry processed again (a worker that
	// crashed before committing its offsets): no second copy.
	if err := f.p.HandleIDs(t.Context(), []string{e.ID}); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Process(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	in := f.messages(t, mail.UseInbox)
	if len(in) != 1 || in[0].Subject != "hello" {
		t.Fatalf("inbox %+v", in)
	}
	raw := f.raw(t, in[0])
	for _, want := range []string{"Authentication-Results: mx.test;", "spf=pass", "dkim=pass", "dmarc=pass", "X-Spam-Status: No",
		"Received: from mta.sender.example ([192.0.2.10])"} {
		if !strings.Contains(raw, want) {
			t.Errorf("stored message lacks %q:\n%s", want, raw[:min(len(raw), 800)])
		}
	}
	if pending, _ := f.store.PendingSpool(t.Context(), []string{e.ID}); len(pending) != 0 {
		t.Errorf("entry still pending after delivery")
	}
}

func TestForgedSenderGoesToJunk(t *testing.T) {
	f := setup(t, false)
	// From an address sender.example does not authorise, unsigned: DMARC
	// fails under p=reject.
	e := f.spool(t, "198.51.100.66", "ceo@sender.example", fmt.Sprintf(plain, "wire transfer", "w1", "Pay now."))
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	if in := f.messages(t, mail.UseInbox); len(in) != 0 {
		t.Fatalf("forged message in INBOX: %+v", in)
	}
	junk := f.messages(t, mail.UseJunk)
	if len(junk) != 1 {
		t.Fatalf("junk %+v", junk)
	}
	raw := f.raw(t, junk[0])
	if !strings.Contains(raw, "dmarc=fail") || !strings.Contains(raw, "X-Spam-Status: Yes") || !strings.Contains(raw, "DMARC_REJECT") {
		t.Errorf("verdicts not recorded:\n%s", raw[:min(len(raw), 800)])
	}
}

// Mail from a hosted sender carries no edge trace field: no SPF/DKIM/DMARC
// verdict is made for it, and a verdict in our name that its sender wrote
// is renamed all the same.
func TestHostedSendersForgedResultsAreRenamed(t *testing.T) {
	f := setup(t, false)
	raw := "Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n" + fmt.Sprintf(plain, "hosted", "h1", "hi")
	e := mailstore.SpoolEntry{AccountID: f.account.ID, MailFrom: "ann@demo.example", Rcpt: f.account.Address, Body: []byte(raw),
		DeliveryKey: delivery.Key("ann@demo.example", f.account.Address, []byte(raw))}
	if err := f.store.Spool(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	got, err := f.store.ClaimSpool(t.Context(), 10, time.Minute)
	if err != nil || len(got) != 1 {
		t.Fatalf("claim: %v %v", got, err)
	}
	if err := f.p.HandleEntries(t.Context(), got); err != nil {
		t.Fatal(err)
	}
	in := f.messages(t, mail.UseInbox)
	if len(in) != 1 {
		t.Fatalf("INBOX %+v", in)
	}
	stored := f.raw(t, in[0])
	if strings.Contains("\n"+stored, "\nAuthentication-Results: mx.test") || !strings.Contains(stored, "X-Original-Authentication-Results: mx.test; dkim=pass") {
		t.Fatalf("a hosted sender's forged verdict was kept:\n%s", stored)
	}
}

func TestGTUBEGoesToJunkAndForgedResultsAreRenamed(t *testing.T) {
	f := setup(t, false)
	body := fmt.Sprintf(plain, "test", "g1", spam.GTUBE)
	body = "Authentication-Results: mx.test; dmarc=pass header.from=sender.example\r\n" + body
	e := f.spool(t, "192.0.2.10", "bounce@sender.example", body)
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	junk := f.messages(t, mail.UseJunk)
	if len(junk) != 1 {
		t.Fatalf("junk %+v", junk)
	}
	raw := f.raw(t, junk[0])
	if strings.Count("\n"+raw, "\nAuthentication-Results:") != 1 {
		t.Errorf("a forged Authentication-Results with our id survived:\n%s", raw)
	}
	if !strings.Contains(raw, "X-Original-Authentication-Results: mx.test; dmarc=pass") {
		t.Errorf("forged field not renamed:\n%s", raw)
	}
}

func TestEICARIsQuarantined(t *testing.T) {
	f := setup(t, true)
	msg := "From: ann@sender.example\r\nTo: bob@demo.example\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=eicar.com\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(clamdtest.EICAR)) + "\r\n--b--\r\n"
	e := f.spool(t, "192.0.2.10", "bounce@sender.example", msg)
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	in := f.messages(t, mail.UseInbox)
	if len(in) != 1 || !strings.Contains(in[0].Subject, "quarantined") || in[0].HasAttachments {
		t.Fatalf("inbox %+v: want only the quarantine notice", in)
	}
	if raw := f.raw(t, in[0]); !strings.Contains(raw, "Eicar") || strings.Contains(raw, "EICAR-STANDARD") {
		t.Errorf("notice:\n%s", raw)
	}
	if junk := f.messages(t, mail.UseJunk); len(junk) != 0 {
		t.Fatalf("virus filed in Junk")
	}
	// The quarantined message's blob is kept (the collector sees it used).
	refs, err := f.store.Referenced(t.Context(), []string{e.BlobRef})
	if err != nil || !refs[e.BlobRef] {
		t.Errorf("quarantined blob not referenced: %v %v", refs, err)
	}
	// A clean message still passes the scanner.
	e2 := f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, "clean", "Nothing here."))
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e2}); err != nil {
		t.Fatal(err)
	}
	if in := f.messages(t, mail.UseInbox); len(in) != 2 {
		t.Fatalf("clean message not delivered: %+v", in)
	}
}

func TestVirusScannerDownDelaysNotDelivers(t *testing.T) {
	f := setup(t, false)
	f.p.Virus = &clamd.Client{Addr: "127.0.0.1:1", Timeout: time.Second}
	e := f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, "later", "x"))
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	if in := f.messages(t, mail.UseInbox); len(in) != 0 {
		t.Fatalf("delivered unscanned: %+v", in)
	}
	pending, err := f.store.PendingSpool(t.Context(), []string{e.ID})
	if err != nil || len(pending) != 1 || pending[0].Attempts != 1 {
		t.Fatalf("entry not kept for retry: %+v %v", pending, err)
	}
	// Scanner back: the retried entry is delivered.
	f.p.Virus = nil
	if err := f.p.HandleEntries(t.Context(), pending); err != nil {
		t.Fatal(err)
	}
	if in := f.messages(t, mail.UseInbox); len(in) != 1 {
		t.Fatalf("retry not delivered: %+v", in)
	}
}

func TestFiltersFileAndLabel(t *testing.T) {
	f := setup(t, false)
	_, err := f.store.SetFilters(t.Context(), f.account.ID, []mail.Filter{
		{Field: "subject", Contains: "INVOICE", MailboxID: f.boxes[mail.UseArchive].ID, MarkSeen: true, Labels: []string{"bills"}, Stop: true},
		{Field: "from", Contains: "sender.example", Flag: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SetFilters(t.Context(), f.account.ID, []mail.Filter{{Field: "body", Contains: "x"}}); err == nil {
		t.Fatal("a filter on an unknown field was accepted")
	}
	e1 := f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, "Your invoice 42", "x"))
	e2 := f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, "lunch", "y"))
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e1, e2}); err != nil {
		t.Fatal(err)
	}
	arch := f.messages(t, mail.UseArchive)
	if len(arch) != 1 || !arch[0].Flags.Seen || arch[0].Flags.Flagged || len(arch[0].Labels) != 1 || arch[0].Labels[0] != "bills" {
		t.Fatalf("archive %+v", arch)
	}
	in := f.messages(t, mail.UseInbox)
	if len(in) != 1 || !in[0].Flags.Flagged || in[0].Flags.Seen {
		t.Fatalf("inbox %+v", in)
	}
}

func TestUnparseableMessageIsStillDelivered(t *testing.T) {
	f := setup(t, false)
	nested := "Subject: deep\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
	for i := 0; i < 8; i++ {
		nested += fmt.Sprintf("--a\r\nContent-Type: message/rfc822\r\n\r\nSubject: level %d\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n", i)
	}
	e := f.spool(t, "192.0.2.10", "bounce@sender.example", nested)
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	all := append(f.messages(t, mail.UseInbox), f.messages(t, mail.UseJunk)...)
	if len(all) == 0 {
		p, _ := f.store.PendingSpool(t.Context(), []string{e.ID})
		t.Fatalf("not delivered; pending %+v", p)
	}
	if len(all) != 1 || all[0].Subject != "deep" {
		t.Fatalf("got %+v", all)
	}
}

// A batch larger than a commit group, with an entry given twice (a
// duplicate queue record) and one filed by a filter into a mailbox deleted
// since: every entry is delivered exactly once, the filtered one to the
// INBOX, and the spool is empty.
func TestBatchDeliversEachOnce(t *testing.T) {
	f := setup(t, false)
	gone, err := f.store.CreateMailbox(t.Context(), f.account.ID, "Gone", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SetFilters(t.Context(), f.account.ID, []mail.Filter{{Field: "subject", Contains: "to-gone", MailboxID: gone.ID}}); err != nil {
		t.Fatal(err)
	}
	if err := f.store.DeleteMailbox(t.Context(), f.account.ID, gone.ID); err != nil {
		t.Fatal(err)
	}
	var batch []mailstore.SpoolEntry
	n := delivery.CommitGroup + 8
	for i := range n {
		subject := fmt.Sprintf("batch %d", i)
		if i == 5 {
			subject = "to-gone"
		}
		batch = append(batch, f.spool(t, "192.0.2.10", "bounce@sender.example", f.signed(t, subject, fmt.Sprint(i))))
	}
	batch = append(batch, batch[3])
	if err := f.p.HandleEntries(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	in := f.messages(t, mail.UseInbox)
	subjects := map[string]int{}
	for _, m := range in {
		subjects[m.Subject]++
	}
	if len(in) != n || len(subjects) != n || subjects["to-gone"] != 1 {
		t.Fatalf("%d messages in the INBOX (%d distinct), want %d: %v", len(in), len(subjects), n, subjects)
	}
	if left, _ := f.store.SpoolBacklog(t.Context()); left != 0 {
		t.Fatalf("%d spool entries still pending", left)
	}
}

// Each byte is stored once: a spooled message with attachments is filed
// as the spool's own blob plus a prefix of the fields the pipeline adds —
// no second copy of the message, no decoded copy of its attachments — and
// each attachment reads back from the message.
func TestMessageStoredOnce(t *testing.T) {
	f := setup(t, false)
	var b strings.Builder
	b.WriteString("From: a@sender.example\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")
	parts := 8
	for i := range parts {
		data := bytes.Repeat([]byte{byte('a' + i)}, 48<<10)
		fmt.Fprintf(&b, "--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=p%d.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n", i)
		enc := base64.StdEncoding.EncodeToString(data)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	b.WriteString("--b--\r\n")
	e := f.spool(t, "192.0.2.10", "a@sender.example", b.String())
	if err := f.p.HandleEntries(t.Context(), []mailstore.SpoolEntry{e}); err != nil {
		t.Fatal(err)
	}
	in := f.messages(t, mail.UseInbox)
	if len(in) != 1 {
		t.Fatalf("INBOX %+v", in)
	}
	m, atts, err := f.store.Message(t.Context(), f.account.ID, in[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.BlobRef != e.BlobRef || !bytes.Contains(m.Prefix, []byte("X-Spam-Status:")) {
		t.Fatalf("message stored as blob %s with prefix %q, want the spool's blob %s", m.BlobRef, m.Prefix, e.BlobRef)
	}
	var blobs []string
	if err := f.blobs.Walk(t.Context(), func(ref string, _ int64, _ time.Time) error {
		blobs = append(blobs, ref)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(blobs) != 1 || blobs[0] != e.BlobRef {
		t.Fatalf("blob store holds %v, want only the spool's %s", blobs, e.BlobRef)
	}
	raw := f.raw(t, m)
	if int64(len(raw)) != m.Size || !strings.HasPrefix(raw, string(m.Prefix)) {
		t.Fatalf("stored message of %d bytes, size %d", len(raw), m.Size)
	}
	if len(atts) != parts {
		t.Fatalf("%d attachments", len(atts))
	}
	for i, a := range atts {
		if a.BlobRef != "" || a.Size != 48<<10 {
			t.Fatalf("attachment %d stored apart (%q) or sized %d", i, a.BlobRef, a.Size)
		}
		_, body, err := message.OpenPart(strings.NewReader(raw), a.PartID, message.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(body)
		if len(data) != 48<<10 || data[0] != byte('a'+i) {
			t.Fatalf("attachment %d read back wrong: %d bytes", i, len(data))
		}
	}
}
