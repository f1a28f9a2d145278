package imapproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// fakeCell is a cell's IMAP server as far as the proxy's login goes: it
// records the ID each connection starts with and answers LOGIN with the
// next of answers ("OK" once they run out).
type fakeCell struct {
	mu      sync.Mutex
	ids     []string
	answers []string
}

func (f *fakeCell) serve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.conn(c)
		}
	}()
	return ln.Addr().String()
}

func (f *fakeCell) conn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "* OK fake cell\r\n")
	id, err := br.ReadString('\n')
	if err != nil {
		return
	}
	f.mu.Lock()
	f.ids = append(f.ids, strings.TrimSpace(id))
	answer := "OK LOGIN completed"
	if len(f.answers) > 0 {
		answer, f.answers = f.answers[0], f.answers[1:]
	}
	f.mu.Unlock()
	fmt.Fprintf(c, "I OK ID completed\r\n")
	// L LOGIN {n}, the user name and {m}, the password: literals after "+".
	line, _ := br.ReadString('\n')
	for range 2 {
		n, _ := strconv.Atoi(line[strings.LastIndexByte(line, '{')+1 : strings.LastIndexByte(line, '}')])
		fmt.Fprintf(c, "+ go on\r\n")
		if _, err := io.ReadFull(br, make([]byte, n)); err != nil {
			return
		}
		if line, err = br.ReadString('\n'); err != nil {
			return
		}
	}
	fmt.Fprintf(c, "L %s\r\n", answer)
	_, _ = io.Copy(io.Discard, br) // hold the connection as a logged-in cell does
}

// oneCell routes every address of example.com to the fake cell.
type oneCell struct{ m *placement.Map }

func (o oneCell) Map() *placement.Map                            { return o.m }
func (o oneCell) Lookup(address string) (placement.Route, error) { return o.m.Lookup(address) }
func (o oneCell) Refresh(_ context.Context, address string) (placement.Route, error) {
	return o.m.Lookup(address)
}

// The proxy's login tells the cell the map epoch in its first ID, waits
// out a cell's NO [CELLMAIL-MOVING] and logs in; the client gets the OK.
// A cell that keeps disowning the user gets the client a plain NO
// [UNAVAILABLE], never the cells' code.
func TestCellLoginFollowsTheContract(t *testing.T) {
	cell := &fakeCell{answers: []string{"NO [CELLMAIL-MOVING 10] moving", "NO [CELLMAIL-MOVING 10] moving"}}
	addr := cell.serve(t)
	m, err := placement.NewMap(42, []placement.Cell{{Name: "c", Jurisdiction: 1, IMAPAddr: addr}},
		[]placement.Domain{{Name: "example.com", Jurisdiction: 1, Mode: placement.ModeConsumer}},
		[]placement.Range{{Jurisdiction: 1, Cell: "c", Epoch: 42}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := New(routing.New(oneCell{m}, routing.Config{MaxWait: time.Second}), Config{Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, line, err := p.cellLogin(ctx, "192.0.2.7", "ann@example.com", "pw")
	if err != nil || !strings.HasPrefix(line, "OK") {
		t.Fatalf("login after MOVING twice: %q, %v", line, err)
	}
	cc.c.Close()
	cell.mu.Lock()
	ids := cell.ids
	cell.mu.Unlock()
	want := `I ID ("x-originating-ip" "192.0.2.7" "x-cellmail-epoch" "42")`
	if len(ids) != 3 || ids[0] != want || ids[2] != want {
		t.Fatalf("IDs %q, want three of %q", ids, want)
	}

	cell.mu.Lock()
	cell.answers = []string{"NO [CELLMAIL-WRONG-CELL c 43] not here", "NO [CELLMAIL-WRONG-CELL c 44] not here"}
	cell.mu.Unlock()
	if _, _, err := p.cellLogin(ctx, "192.0.2.7", "ann@example.com", "pw"); err == nil || strings.Contains(err.Error(), "[CELLMAIL") {
		t.Fatalf("two WRONG_CELLs: %v, want an error that is not the cell's line", err)
	}
	cell.mu.Lock()
	defer cell.mu.Unlock()
	if last := cell.ids[len(cell.ids)-1]; !strings.HasSuffix(last, `"x-cellmail-epoch" "43")`) {
		t.Fatalf("second hop's ID %q, want the epoch the first cell gave (43)", last)
	}
}
