package e2e_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// BenchmarkOutbound measures sending through the router: the webmail
// API's SendMessage to a remote recipient (latency until the send is
// durable and answered), SMTP submission on the STARTTLS port with 1 and 8
// connections (latency per message), and outbound throughput: messages
// per second from the first send until the remote domain's MX (a local
// go-smtp server) has received every one, DKIM-signed.
func BenchmarkOutbound(b *testing.B) {
	s := newStack(b)
	url := s.startRouter(nil)
	u := s.userTB(b, url, "sender@eu.example")
	// One account per submission connection: logins are rate-limited per
	// account (10 in 15 minutes), as they should be.
	var senders []string
	for i := range 8 {
		a := fmt.Sprintf("sender%d@eu.example", i)
		s.userTB(b, url, a)
		senders = append(senders, a)
	}
	ctx := context.Background()
	run := 0
	waitDelivered := func(b *testing.B, rcpts []string, start time.Time) {
		deadline := time.Now().Add(5 * time.Minute)
		for _, rc := range rcpts {
			for remoteMX.message(rc) == nil {
				if time.Now().After(deadline) {
					b.Fatalf("%s never delivered", rc)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		b.ReportMetric(float64(len(rcpts))/time.Since(start).Seconds(), "delivered-msg/s")
	}
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}

	b.Run("api-send", func(b *testing.B) {
		run++
		var lat []time.Duration
		var rcpts []string
		start := time.Now()
		for i := range b.N {
			rc := fmt.Sprintf("api-%d-%d@remote.test", run, i)
			rcpts = append(rcpts, rc)
			t0 := time.Now()
			_, err := u.c.SendMessage(ctx, withToken(u.access, &mailv1.SendMessageRequest{
				To: []*mailv1.EmailAddress{{Email: rc}}, Subject: "bench", Text: strings.Repeat("x", 10000)}))
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		report(b, lat)
		waitDelivered(b, rcpts, start)
	})

	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("submission-conns-%d", conns), func(b *testing.B) {
			run++
			per := (b.N + conns - 1) / conns
			var mu sync.Mutex
			var lat []time.Duration
			var rcpts []string
			body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100)
			start := time.Now()
			var wg sync.WaitGroup
			for w := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(s.submission)
					if err != nil {
						b.Error(err)
						return
					}
					defer c.Close()
					if err := c.Hello("bench.client"); err != nil {
						b.Error(err)
						return
					}
					if err := c.StartTLS(testTLSClient); err != nil {
						b.Error(err)
						return
					}
					if err := c.Auth(sasl.NewPlainClient("", senders[w], "correct horse battery")); err != nil {
						b.Error(err)
						return
					}
					for i := range per {
						rc := fmt.Sprintf("sub-%d-%d-%d@remote.test", run, w, i)
						t0 := time.Now()
						if err := c.SendMail(senders[w], []string{rc}, strings.NewReader(body)); err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						lat = append(lat, time.Since(t0))
						rcpts = append(rcpts, rc)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if b.Failed() {
				return
			}
			b.ReportMetric(float64(len(rcpts))/time.Since(start).Seconds(), "accepted-msg/s")
			report(b, lat)
			waitDelivered(b, rcpts, start)
		})
	}
}

// testTLSClient trusts the routers' self-signed test certificates.
var testTLSClient = &tls.Config{InsecureSkipVerify: true}
