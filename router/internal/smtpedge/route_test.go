package smtpedge

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/controlplane/routing"
)

// fenced is an LMTP cell that takes the routing contract's epoch parameter
// and, while wrong is set, answers every RCPT as a cell that no longer owns
// the subject does.
type fenced struct {
	sink
	wrong  *routing.WrongCell
	mu     sync.Mutex
	epochs []string // the XCELLMAIL-EPOCH of each RCPT
}

func (f *fenced) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &fencedSession{sinkSession{k: &f.sink}, f}, nil
}

type fencedSession struct {
	sinkSession
	f *fenced
}

func (s *fencedSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.f.mu.Lock()
	s.f.epochs = append(s.f.epochs, opts.Params[routing.EpochParam])
	wrong := s.f.wrong
	s.f.mu.Unlock()
	if wrong != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "[" + wrong.ResponseCode() + "] Mailbox is served by another cell"}
	}
	return s.sinkSession.Rcpt(to, opts)
}

func (f *fenced) serve(t *testing.T) string {
	t.Helper()
	srv := smtp.NewServer(f)
	srv.LMTP, srv.Domain, srv.RcptParams = true, "cell", []string{routing.EpochParam}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// movedMaps is a stale map copy (old owns sink.example at epoch 3) and
// etcd's (new owns it at epoch 4).
type movedMaps struct{ cur, fresh *placement.Map }

func (m *movedMaps) Map() *placement.Map                            { return m.cur }
func (m *movedMaps) Lookup(address string) (placement.Route, error) { return m.cur.Lookup(address) }
func (m *movedMaps) Refresh(_ context.Context, address string) (placement.Route, error) {
	m.cur = m.fresh
	return m.cur.Lookup(address)
}

// A cell that answers [CELLMAIL-WRONG-CELL] gets nothing more: the edge
// refreshes the subject, sends the RCPT (with the newer epoch) to the owner,
// and the message lands there; the sender sees one 250. When the owner too
// disowns it, the sender gets a plain 451 4.4.0, not the cells' codes.
func TestWrongCellReroutes(t *testing.T) {
	old := &fenced{wrong: &routing.WrongCell{Owner: "new", Epoch: 4}}
	nu := &fenced{}
	oldAddr, newAddr := old.serve(t), nu.serve(t)
	at := func(epoch uint64, owner string) *placement.Map {
		m, err := placement.NewMap(epoch, []placement.Cell{{Name: "old", Jurisdiction: 1, LMTPAddr: oldAddr}, {Name: "new", Jurisdiction: 1, LMTPAddr: newAddr}},
			[]placement.Domain{{Name: "sink.example", Jurisdiction: 1, Mode: placement.ModeConsumer}},
			[]placement.Range{{Jurisdiction: 1, Cell: owner, Epoch: epoch}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	maps := &movedMaps{cur: at(3, "old"), fresh: at(4, "new")}
	e := New(routing.New(maps, routing.Config{}), Config{Logger: slog.New(slog.DiscardHandler)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.Serve(ln)
	t.Cleanup(func() { e.Close() })
	h := &harness{addr: ln.Addr().String()}

	out := h.session(t, []byte(hello+"DATA\r\nSubject: moved\r\n\r\nbody\r\n.\r\nQUIT\r\n"))
	if queued(out) != 1 || nu.stored.Load() != 1 || old.stored.Load() != 0 {
		t.Fatalf("replies %q; stored at the new owner %d, at the old %d", out, nu.stored.Load(), old.stored.Load())
	}
	if strings.Contains(out, routing.CodeWrongCell) {
		t.Fatalf("the sender saw the cells' routing code: %q", out)
	}
	old.mu.Lock()
	nu.mu.Lock()
	oldEpochs, newEpochs := strings.Join(old.epochs, ","), strings.Join(nu.epochs, ",")
	old.mu.Unlock()
	nu.mu.Unlock()
	if oldEpochs != "3" || newEpochs != "4" {
		t.Fatalf("epochs sent: old %v, new %v; want 3 then 4", oldEpochs, newEpochs)
	}

	// Two cells disown the subject: at most two hops, then 451 4.4.0.
	maps.cur = at(3, "old")
	nu.mu.Lock()
	nu.wrong = &routing.WrongCell{Owner: "old", Epoch: 4}
	nu.mu.Unlock()
	out = h.session(t, []byte(hello+"QUIT\r\n"))
	if !strings.Contains(out, "451 4.4.0 Mailbox temporarily unavailable") || strings.Contains(out, routing.CodeWrongCell) {
		t.Fatalf("two WRONG_CELLs: %q, want a plain 451 4.4.0", out)
	}
	old.mu.Lock()
	nu.mu.Lock()
	defer old.mu.Unlock()
	defer nu.mu.Unlock()
	if len(old.epochs) != 2 || len(nu.epochs) != 2 {
		t.Fatalf("RCPTs: old %v, new %v; want one more each", old.epochs, nu.epochs)
	}
}
