package delivery_test

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
)

// BenchmarkStorageFootprint accepts messages as the cell does (the
// Acceptor: spool rows, the message inside them when small, a blob when
// large) and files them through the pipeline, then reports the bytes of
// message content stored: blob files plus what the metadata store holds
// (inline blobs, prefixes, spool bodies). The mix: 10,000 messages of
// ~10 KB text, 20% of them with a 500 KB attachment (each its own random
// content), one account; then one message with a 500 KB attachment to 50
// recipients. Run with -benchtime 1x.
func BenchmarkStorageFootprint(b *testing.B) {
	f := setup(b, false)
	acc := delivery.NewAcceptor(delivery.AcceptorConfig{Store: f.store, Blobs: f.blobs})
	defer acc.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	text := strings.Repeat("All work and no play makes Jack a dull boy. ", 230) // ~10 KB
	attachment := func() string {
		data := make([]byte, 500<<10)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		enc := base64.StdEncoding.EncodeToString(data)
		var sb strings.Builder
		for len(enc) > 76 {
			sb.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		sb.WriteString(enc + "\r\n")
		return sb.String()
	}
	msg := func(i int, att string) []byte {
		h := fmt.Sprintf("From: Ann <ann@sender.example>\r\nTo: bob@demo.example\r\nSubject: message %d\r\n"+
			"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@sender.example>\r\nMIME-Version: 1.0\r\n", i, i)
		if att == "" {
			return []byte(h + "Content-Type: text/plain\r\n\r\n" + text + "\r\n")
		}
		return []byte(h + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n" + text +
			"\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" + att + "--b--\r\n")
	}
	rcpt := func(a mail.Account) delivery.Recipient {
		return delivery.Recipient{AccountID: a.ID, Address: a.Address}
	}
	file := func() {
		for {
			es, err := f.store.ClaimSpool(b.Context(), 256, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if len(es) == 0 {
				return
			}
			if err := f.p.HandleEntries(b.Context(), es); err != nil {
				b.Fatal(err)
			}
		}
	}
	measure := func() int64 {
		var files int64
		if err := f.blobs.Walk(b.Context(), func(_ string, size int64, _ time.Time) error { files += size; return nil }); err != nil {
			b.Fatal(err)
		}
		inDB, err := f.store.ContentBytesForBenchmark(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		return files + inDB
	}
	owner := f.unlimited(b, "owner@demo.example")
	var accepted int64
	for i := range 10_000 {
		att := ""
		if i%5 == 0 {
			att = attachment()
		}
		raw := msg(i, att)
		accepted += int64(len(raw))
		if err := acc.Accept(b.Context(), "ann@sender.example", []delivery.Recipient{rcpt(owner)}, raw); err != nil {
			b.Fatal(err)
		}
		if i%256 == 255 {
			file()
		}
	}
	file()
	mix := measure()
	b.ReportMetric(float64(mix)/1e6, "MB-stored-mix")
	b.ReportMetric(float64(accepted)/1e6, "MB-accepted-mix")

	var rcpts []delivery.Recipient
	for i := range 50 {
		rcpts = append(rcpts, rcpt(f.unlimited(b, fmt.Sprintf("u%d@demo.example", i))))
	}
	one := msg(-1, attachment())
	if err := acc.Accept(b.Context(), "ann@sender.example", rcpts, one); err != nil {
		b.Fatal(err)
	}
	file()
	b.ReportMetric(float64(measure()-mix)/1e6, "MB-stored-50rcpts")
	b.ReportMetric(float64(len(one))/1e6, "MB-message-50rcpts")
}
