package router_test

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// BenchmarkIMAP measures, through the router's IMAP port (TLS), on a
// 10,000-message INBOX: SELECT plus UID FETCH 1:* (FLAGS ENVELOPE), and
// fetching 1,000 full bodies (UID FETCH 1:1000 BODY.PEEK[]). The mailbox is
// filled by APPEND over 8 connections (its rate is reported too). Memory
// is the Go heap of the test process, which runs the cells and the router
// (and the client): in use after the fetch, and allocated per operation.
func BenchmarkIMAP(b *testing.B) {
	const total = 10000
	s := newStack(b)
	url := s.startRouter(nil)
	u := s.userTB(b, url, "reader@eu.example")
	msg := func(i int) []byte {
		return fmt.Appendf(nil, "From: Sender %d <sender%d@elsewhere.test>\r\nTo: reader@eu.example\r\nSubject: message %d of the benchmark\r\n"+
			"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench%d@elsewhere.test>\r\nContent-Type: text/plain\r\n\r\n%s\r\n",
			i, i, i, i, slices.Repeat([]byte("A line of a 2 KB body for the IMAP benchmark.\r\n"), 40))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := imapLogin(b, s.imaps, u.addr, nil)
			for i := w; i < total; i += 8 {
				m := msg(i)
				ap := c.Append("INBOX", int64(len(m)), nil)
				if _, err := ap.Write(m); err != nil {
					errs <- err
					return
				}
				if err := ap.Close(); err != nil {
					errs <- err
					return
				}
				if _, err := ap.Wait(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	appendRate := float64(total) / time.Since(start).Seconds()

	c := imapLogin(b, s.imaps, u.addr, nil)
	var ms runtime.MemStats
	b.Run("select-fetch-flags-envelope", func(b *testing.B) {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		allocStart := ms.TotalAlloc
		for b.Loop() {
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil || sel.NumMessages != total {
				b.Fatalf("SELECT: %+v %v", sel, err)
			}
			msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Flags: true, Envelope: true, UID: true}).Collect()
			if err != nil || len(msgs) != total {
				b.Fatalf("FETCH: %d %v", len(msgs), err)
			}
		}
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-inuse-MiB")
		b.ReportMetric(float64(ms.TotalAlloc-allocStart)/float64(b.N)/(1<<20), "alloc-MiB/op")
		b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		b.ReportMetric(appendRate, "append-msgs/s")
	})
	b.Run("fetch-1000-bodies", func(b *testing.B) {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		allocStart := ms.TotalAlloc
		for b.Loop() {
			msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 1000}},
				&imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
			if err != nil || len(msgs) != 1000 {
				b.Fatalf("FETCH bodies: %d %v", len(msgs), err)
			}
		}
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-inuse-MiB")
		b.ReportMetric(float64(ms.TotalAlloc-allocStart)/float64(b.N)/(1<<20), "alloc-MiB/op")
		b.ReportMetric(1000*float64(b.N)/b.Elapsed().Seconds(), "bodies/s")
	})
}
