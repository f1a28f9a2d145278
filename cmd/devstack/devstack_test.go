package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's promise: `make run` brings the whole system up, mailctl
// routes addresses of both jurisdictions, a killed cell takes down only its
// own users, Ctrl-C stops everything, and a second run reuses the data.
func TestDevStackSmoke(t *testing.T) {
	bin, dir := buildAndDir(t)

	st, stop := startStack(t, bin, dir)
	mailctl := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "mailctl"), args...)
		cmd.Env = append(os.Environ(), "CELLMAIL_CONTROLPLANE="+st.Controlplane, "CELLMAIL_TOKEN="+st.AdminToken)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("mailctl %v: %v\n%s", args, err, out)
		}
		return out
	}
	route := func(addr string) (cell, jur string) {
		var r struct{ Cell, Jurisdiction string }
		if err := json.Unmarshal(mailctl("route", addr, "-o", "json"), &r); err != nil {
			t.Fatal(err)
		}
		return r.Cell, r.Jurisdiction
	}
	owners := map[string]string{}
	for a, jur := range map[string]string{
		"alice@demo-eu.example": "eu", "carol@demo-eu.example": "eu", "dave@demo-eu.example": "eu",
		"bob@demo-us.example": "us", "ceo@acme-eu.example": "eu",
	} {
		cell, got := route(a)
		if got != jur || !strings.HasPrefix(cell, jur+"-") {
			t.Fatalf("%s routed to cell %s of jurisdiction %s, want jurisdiction %s", a, cell, got, jur)
		}
		owners[a] = cell
		if got := whoami(t, st.Router.URL, a); got != cell {
			t.Fatalf("%s answered by %q through the router, owner %s", a, got, cell)
		}
	}

	// kill -9 one cell: its users are unavailable, the others still served.
	victim := st.Cells[1]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, victim.PID)
	for a, cell := range owners {
		got := whoami(t, st.Router.URL, a)
		if cell == victim.Name && got != "" {
			t.Fatalf("%s answered by %s while its cell is dead", a, got)
		}
		if cell != victim.Name && got != cell {
			t.Fatalf("%s not served (%q) while only %s is down", a, got, victim.Name)
		}
	}

	pids := []int{st.Router.PID}
	for _, c := range st.Cells {
		pids = append(pids, c.PID)
	}
	stop()
	for _, pid := range pids {
		waitDead(t, pid)
	}

	// A second run reuses the data: same tokens, no second bootstrap.
	st2, stop2 := startStack(t, bin, dir)
	defer stop2()
	if st2.AdminToken != st.AdminToken {
		t.Fatal("second run made new tokens")
	}
	st = st2
	var ranges struct{ Ranges []json.RawMessage }
	if err := json.Unmarshal(mailctl("ranges", "list", "--jurisdiction", "eu", "-o", "json"), &ranges); err != nil {
		t.Fatal(err)
	}
	if len(ranges.Ranges) != 2 {
		t.Fatalf("eu has %d ranges after a restart, want 2", len(ranges.Ranges))
	}
	for a, cell := range owners {
		if got := whoami(t, st.Router.URL, a); got != cell {
			t.Fatalf("after restart %s answered by %q, want %s", a, got, cell)
		}
	}
}

// buildAndDir builds the binaries and makes a data directory the postgres
// user can reach.
func buildAndDir(t *testing.T) (bin, dir string) {
	t.Helper()
	bin = t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/cellmail/cellmail/cmd/...")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "devstack-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

// startStack runs devstack on free high ports and waits for stack.json.
func startStack(t *testing.T, bin, dir string, extra ...string) (*Stack, func()) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		// Below Linux's ephemeral range (32768–60999): a stack port there
		// can be taken by any outgoing connection between devstack's check
		// and the bind, and a process then exits before it is ready.
		base := 20000 + rand.IntN(127)*100
		os.Remove(filepath.Join(dir, "stack.json"))
		var out bytes.Buffer
		cmd := exec.Command(filepath.Join(bin, "devstack"), append([]string{"-dir", dir, "-base-port", fmt.Sprint(base), "-bin", bin}, extra...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.After(3 * time.Minute)
		for {
			b, err := os.ReadFile(filepath.Join(dir, "stack.json"))
			if err == nil {
				var st Stack
				if err := json.Unmarshal(b, &st); err != nil {
					t.Fatal(err)
				}
				stop := func() {
					_ = cmd.Process.Signal(syscall.SIGINT)
					select {
					case err := <-exited:
						if err != nil {
							t.Errorf("devstack exited with %v after Ctrl-C:\n%s", err, out.String())
						}
					case <-time.After(time.Minute):
						_ = cmd.Process.Kill()
						t.Errorf("devstack did not stop within a minute of Ctrl-C")
					}
				}
				return &st, stop
			}
			select {
			case err := <-exited:
				if strings.Contains(out.String(), "is taken") && attempt < 5 {
					break
				}
				t.Fatalf("devstack exited before it was up (%v):\n%s", err, out.String())
			case <-deadline:
				_ = cmd.Process.Kill()
				t.Fatalf("devstack not up in 3 minutes:\n%s", out.String())
			case <-time.After(50 * time.Millisecond):
				continue
			}
			break
		}
	}
}

// whoami calls the cell API through the router; "" when not served.
func whoami(t *testing.T, routerURL, addr string) string {
	t.Helper()
	body := fmt.Sprintf(`{"address":%q}`, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, routerURL+"/cellmail.cell.v1.CellService/WhoAmI", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ Cell, Code string }
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		if r.Code != "unavailable" {
			t.Fatalf("%s: %s %s", addr, resp.Status, r.Code)
		}
		return ""
	}
	return r.Cell
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// A zombie still answers signal 0; read its state instead.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) || (err == nil && strings.Contains(string(b), ") Z ")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
