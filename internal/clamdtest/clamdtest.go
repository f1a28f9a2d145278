// Package clamdtest runs a real clamd (Debian's clamav-daemon, installed by
// scripts/deps.sh) for tests and the dev stack, with a signature database
// holding only a signature of the EICAR test file: ClamAV's own database cannot be
// downloaded here, and EICAR is what the tests scan for. Production points
// cells at a clamd with the full database (celld -clamd).
package clamdtest

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// EICAR is the anti-virus test file.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// Binary is where Debian installs clamd.
const Binary = "/usr/sbin/clamd"

// Start runs clamd on a free port until the test ends and returns its
// address.
func Start(tb testing.TB) string {
	tb.Helper()
	addr, stop, err := Run(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return addr
}

// Run starts clamd with its files in dir.
func Run(dir string) (addr string, stop func(), err error) {
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(db, 0o755); err != nil {
		return "", nil, err
	}
	// A body signature (ClamAV's .ndb format: name:target:offset:hex), so
	// the test string is found anywhere, as with the real database.
	if err := os.WriteFile(filepath.Join(db, "eicar.ndb"),
		[]byte("Eicar-Test-Signature:0:*:"+hex.EncodeToString([]byte(EICAR))+"\n"), 0o644); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(dir, "clamd.conf")
	user := ""
	if os.Geteuid() == 0 {
		user = "User root\n"
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("Foreground yes\nDatabaseDirectory %s\nTCPSocket %d\nTCPAddr 127.0.0.1\nLogFile %s\n%s",
		db, port, filepath.Join(dir, "clamd.log"), user)), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(Binary, "-c", conf)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("clamd (apt install clamav-daemon): %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() { _ = cmd.Process.Kill(); <-done }
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return addr, stop, nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "clamd.log"))
			return "", nil, fmt.Errorf("clamd exited: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("clamd did not listen on %s", addr)
		}
	}
}
