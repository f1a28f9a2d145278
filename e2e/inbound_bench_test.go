package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
)

// BenchmarkInboundSMTP sends 10 KB messages through the router's SMTP edge
// to one cell, from many distinct senders, over 1, 8 and 32 connections.
// It reports messages accepted per second, stored per second (until the
// last one is visible through the API), p50/p99 SMTP transaction time and
// the machine's CPU per message; then the same with Postfix's smtp-source
// as the client, reporting the servers' CPU per message without the
// client's.
func BenchmarkInboundSMTP(b *testing.B) {
	s := newStack(b)
	url := s.startRouter(nil)
	u := s.userTB(b, url, "bench@us.example")
	inbox := u.boxTB(b, mailv1.SpecialUse_SPECIAL_USE_INBOX)
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 100)
	stored, run := 0, 0
	for _, conns := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("conns-%d", conns), func(b *testing.B) {
			run++ // b.Run calls this more than once: keep every message unique
			var mu sync.Mutex
			var lat []time.Duration
			per := (b.N + conns - 1) / conns
			cpu0 := machineCPU(b)
			start := time.Now()
			var wg sync.WaitGroup
			for w := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(s.smtp)
					if err != nil {
						b.Error(err)
						return
					}
					defer c.Close()
					for i := range per {
						t0 := time.Now()
						if err := c.Mail(fmt.Sprintf("sender%d-%d@remote.test", w, i), nil); err != nil {
							b.Error(err)
							return
						}
						if err := c.Rcpt("bench@us.example", nil); err != nil {
							b.Error(err)
							return
						}
						wc, err := c.Data()
						if err != nil {
							b.Error(err)
							return
						}
						fmt.Fprintf(wc, "Message-ID: <%d.%d.%d@remote.test>\r\n%s", run, w, i, body)
						if err := wc.Close(); err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						lat = append(lat, time.Since(t0))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			accepted := time.Since(start)
			stored += per * conns
			waitStored(b, u, inbox.Id, stored)
			all := time.Since(start)
			cpu := machineCPU(b) - cpu0
			slices.Sort(lat)
			b.ReportMetric(cpu.Seconds()*1000/float64(per*conns), "machine-cpu-ms/msg")
			b.ReportMetric(float64(per*conns)/accepted.Seconds(), "accepted-msg/s")
			b.ReportMetric(float64(per*conns)/all.Seconds(), "stored-msg/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
	// The same load from Postfix's smtp-source, a real client in its own
	// process (scripts/deps.sh bench fetches it): the machine's CPU less
	// its own is the servers' alone (router, cell, PostgreSQL, Redis).
	// smtp-source uses one sender and does not time transactions.
	source, err := filepath.Abs("../bin/postfix/smtp-source")
	if err != nil {
		b.Fatal(err)
	}
	for _, conns := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("smtp-source-conns-%d", conns), func(b *testing.B) {
			if _, err := os.Stat(source); err != nil {
				b.Fatalf("smtp-source not found (%v): run scripts/deps.sh bench", err)
			}
			n := max(b.N, conns)
			cpu0 := machineCPU(b)
			start := time.Now()
			cmd := exec.Command(source, "-d", "-s", strconv.Itoa(conns), "-m", strconv.Itoa(n), "-l", "10240",
				"-M", "client.remote.test", "-f", "sender@remote.test", "-t", "bench@us.example", s.smtp)
			cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Dir(source))
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("smtp-source: %v: %s", err, out)
			}
			accepted := time.Since(start)
			client := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			stored += n
			waitStored(b, u, inbox.Id, stored)
			all := time.Since(start)
			cpu := machineCPU(b) - cpu0
			b.ReportMetric((cpu-client).Seconds()*1000/float64(n), "server-cpu-ms/msg")
			b.ReportMetric(client.Seconds()*1000/float64(n), "client-cpu-ms/msg")
			b.ReportMetric(float64(n)/accepted.Seconds(), "accepted-msg/s")
			b.ReportMetric(float64(n)/all.Seconds(), "stored-msg/s")
		})
	}
}

// waitStored waits until the mailbox holds n messages, polling its counter
// through the API (5 minutes at most).
func waitStored(b *testing.B, u *user, mailboxID string, n int) {
	deadline := time.Now().Add(5 * time.Minute)
	for u.totalTB(b, mailboxID) < n {
		if time.Now().After(deadline) {
			b.Fatal("messages not stored in 5 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// machineCPU is the CPU time the whole machine has spent busy (all
// processes: router, cells, PostgreSQL, Redis, and this benchmark's own
// SMTP clients), from /proc/stat. Per message it is an upper bound of the
// servers' CPU per message.
func machineCPU(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}
