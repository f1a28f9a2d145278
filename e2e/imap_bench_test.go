package e2e_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// BenchmarkIMAP measures, through the router's IMAP port (TLS), on a
// 10,000-message INBOX: SELECT plus UID FETCH 1:* (FLAGS ENVELOPE), and
// fetching 1,000 full bodies (UID FETCH 1:1000 BODY.PEEK[]). The mailbox is
// filled by APPEND over 8 connections (its rate is reported too). Memory
// is the Go heap of the test process, which runs the cells and the router
// (and the client): in use after the fetch, and allocated per operation;
// and the process's resident size (PostgreSQL's is not counted).
func BenchmarkIMAP(b *testing.B) {
	s := newStack(b)
	url := s.startRouter(nil)
	u := s.userTB(b, url, "reader@eu.example")
	imapWorkload(b, s.imaps, u.addr, "correct horse battery", func(b *testing.B) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-inuse-MiB")
		b.ReportMetric(rssMiB(os.Getpid()), "rss-MiB")
	})
}

// BenchmarkIMAPDovecot runs BenchmarkIMAP's workload against Dovecot
// (Debian's dovecot-imapd, maildir, implicit TLS on a private port), for a
// comparison on the same machine; mox, which the issue names, is not
// reachable through this machine's Go module proxy. Memory is the resident
// size of all of Dovecot's processes.
func BenchmarkIMAPDovecot(b *testing.B) {
	addr, master := startDovecot(b)
	imapWorkload(b, addr, "reader@example.test", "benchpass", func(b *testing.B) {
		b.ReportMetric(treeRSSMiB(master), "rss-MiB")
	})
}

// imapWorkload fills the INBOX of user at addr (implicit TLS) with 10,000
// messages by APPEND over 8 connections, then measures SELECT plus UID
// FETCH 1:* (FLAGS ENVELOPE) and the fetch of 1,000 full bodies; mem
// reports the server's memory after each.
func imapWorkload(b *testing.B, addr, user, pass string, mem func(b *testing.B)) {
	const total = 10000
	login := func() *imapclient.Client {
		c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		if err := c.Login(user, pass).Wait(); err != nil {
			b.Fatalf("IMAP login %s: %v", user, err)
		}
		return c
	}
	msg := func(i int) []byte {
		return fmt.Appendf(nil, "From: Sender %d <sender%d@elsewhere.test>\r\nTo: %s\r\nSubject: message %d of the benchmark\r\n"+
			"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench%d@elsewhere.test>\r\nContent-Type: text/plain\r\n\r\n%s\r\n",
			i, i, user, i, i, slices.Repeat([]byte("A line of a 2 KB body for the IMAP benchmark.\r\n"), 40))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := login()
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

	c := login()
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
		mem(b)
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
		mem(b)
		b.ReportMetric(float64(ms.TotalAlloc-allocStart)/float64(b.N)/(1<<20), "alloc-MiB/op")
		b.ReportMetric(1000*float64(b.N)/b.Elapsed().Seconds(), "bodies/s")
	})
}

// startDovecot runs Dovecot on a private directory and port, with one
// static password for every user, and returns its IMAPS address and the
// master's pid. Debian's dovecot-imapd must be installed (make bench
// installs it).
func startDovecot(b *testing.B) (string, int) {
	const bin = "/usr/sbin/dovecot"
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("Dovecot is not installed (scripts/deps.sh bench installs it): %v", err)
	}
	dir, err := os.MkdirTemp("", "dovecot-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		b.Fatal(err)
	}
	// Mail is kept as the dovecot user when run as root (Dovecot will not
	// run mail processes as root), else as the caller.
	mailUser := ""
	if os.Getuid() == 0 {
		du, err := osuser.Lookup("dovecot")
		if err != nil {
			b.Fatal(err)
		}
		uid, _ := strconv.Atoi(du.Uid)
		gid, _ := strconv.Atoi(du.Gid)
		if err := os.Chown(home, uid, gid); err != nil {
			b.Fatal(err)
		}
		mailUser = "uid=dovecot gid=dovecot"
	} else {
		me, err := osuser.Current()
		if err != nil {
			b.Fatal(err)
		}
		mailUser = fmt.Sprintf("uid=%s gid=%s", me.Uid, me.Gid)
	}
	cfg := testTLS(b)
	var certPEM, keyPEM bytes.Buffer
	_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: cfg.Certificates[0].Certificate[0]})
	keyDER, err := x509.MarshalECPrivateKey(cfg.Certificates[0].PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		b.Fatal(err)
	}
	_ = pem.Encode(&keyPEM, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	for name, data := range map[string][]byte{"cert.pem": certPEM.Bytes(), "key.pem": keyPEM.Bytes()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <%[1]s/cert.pem
ssl_key = <%[1]s/key.pem
auth_mechanisms = plain
first_valid_uid = 1
passdb {
  driver = static
  args = password=benchpass
}
userdb {
  driver = static
  args = %[2]s home=%[1]s/home/%%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = %[3]d
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0666
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
`, dir, mailUser, port)
	confPath := filepath.Join(dir, "dovecot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "-F", "-c", confPath)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(b, "Dovecot to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr, cmd.Process.Pid
}

// rssMiB is a process's resident size.
func rssMiB(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// treeRSSMiB is the resident size of a process and its children.
func treeRSSMiB(root int) float64 {
	total := rssMiB(root)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ")".
		if i := bytes.LastIndexByte(stat, ')'); i > 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(root) {
				total += rssMiB(pid)
			}
		}
	}
	return total
}
