package mailstore_test

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

type bigBox struct {
	s       *mailstore.Store
	account string
	inbox   string
	ids     []string
}

// big is one account with a 100,000-message INBOX, built once per run.
var big = sync.OnceValues(func() (*bigBox, error) {
	dsn, err := pg.NewDB()
	if err != nil {
		return nil, err
	}
	s, err := mailstore.Open(context.Background(), dsn, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	a, err := s.CreateAccount(ctx, mail.Account{Address: "big@example.com", Domain: "example.com", PlacementKey: "big@example.com",
		Jurisdiction: "eu", PasswordHash: "x"})
	if err != nil {
		return nil, err
	}
	inbox, err := s.MailboxByUse(ctx, a.ID, mail.UseInbox)
	if err != nil {
		return nil, err
	}
	if err := s.BulkInsertForBenchmark(ctx, a.ID, inbox.ID, 100_000); err != nil {
		return nil, err
	}
	msgs, err := s.ListMessages(ctx, a.ID, inbox.ID, mail.ListFilter{}, 0, 1000)
	if err != nil {
		return nil, err
	}
	b := &bigBox{s: s, account: a.ID, inbox: inbox.ID}
	for _, m := range msgs {
		b.ids = append(b.ids, m.ID)
	}
	return b, nil
})

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func BenchmarkListMessages(b *testing.B) {
	bb, err := big()
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		before uint32
	}{{"first-page", 0}, {"deep-page-uid-1000", 1000}, {"middle-page-uid-50000", 50_000}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				page, err := bb.s.ListMessages(ctx, bb.account, bb.inbox, mail.ListFilter{}, tc.before, 50)
				if err != nil || len(page) != 50 {
					b.Fatalf("%d messages, %v", len(page), err)
				}
				lat = append(lat, time.Since(t0))
			}
			reportLatency(b, lat)
		})
	}
}

func BenchmarkGetMessage(b *testing.B) {
	bb, err := big()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	i := 0
	for b.Loop() {
		t0 := time.Now()
		if _, _, err := bb.s.Message(ctx, bb.account, bb.ids[i%len(bb.ids)]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		i++
	}
	reportLatency(b, lat)
}

// BenchmarkFlagUpdate1000 marks 1,000 messages read and unread again.
func BenchmarkFlagUpdate1000(b *testing.B) {
	bb, err := big()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	seen := false
	for b.Loop() {
		seen = !seen
		v := seen
		t0 := time.Now()
		n, err := bb.s.UpdateFlags(ctx, bb.account, bb.ids, mail.FlagChange{Seen: &v})
		if err != nil || n != len(bb.ids) {
			b.Fatalf("updated %d, %v", n, err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
	b.ReportMetric(float64(len(bb.ids)), "msgs/op")
}
