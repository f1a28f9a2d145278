package delivery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/cell/internal/mailstore/mailstoretest"
	"github.com/cellmail/cellmail/cell/internal/message"
	"github.com/cellmail/cellmail/cell/internal/queue"
)

// broker is a kfake cluster that can be stopped and started again on the
// same port, with its data directory (or a fresh one: data lost).
type broker struct {
	t    *testing.T
	port int
	dir  string
	c    *kfake.Cluster
}

func newBroker(t *testing.T) *broker {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	b := &broker{t: t, port: port, dir: t.TempDir()}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *broker) start() {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(b.port), kfake.DataDir(b.dir), kfake.SyncWrites(),
		kfake.SeedTopics(4, queue.Topics...))
	if err != nil {
		b.t.Fatal(err)
	}
	b.c = c
}

func (b *broker) stop() {
	if b.c != nil {
		b.c.Close()
		b.c = nil
	}
}

func (b *broker) addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

type cellFixture struct {
	store   *mailstore.Store
	blobs   blobstore.Tiered
	p       *delivery.Pipeline
	account mail.Account
	inbox   mail.Mailbox
	n       int
}

func newCell(t *testing.T) *cellFixture {
	store, blobs, a := mailstoretest.New(t, pg, "bob@demo.example")
	log := slog.New(slog.DiscardHandler)
	inbox, err := store.MailboxByUse(t.Context(), a.ID, mail.UseInbox)
	if err != nil {
		t.Fatal(err)
	}
	p := &delivery.Pipeline{D: delivery.New(blobs, store, message.DefaultLimits()), Store: store, Log: log}
	return &cellFixture{store: store, blobs: blobs, p: p, account: a, inbox: inbox}
}

// accept spools n messages as LMTP does.
func (c *cellFixture) accept(t *testing.T, n int) {
	t.Helper()
	c.acceptRelayed(t, n, false)
}

// acceptRelayed spools n messages as LMTP does, committed as relayed when
// relayed is set (the LMTP endpoint then publishes them itself), and
// returns the committed entries.
func (c *cellFixture) acceptRelayed(t *testing.T, n int, relayed bool) []mailstore.SpoolEntry {
	t.Helper()
	var entries []mailstore.SpoolEntry
	for range n {
		c.n++
		raw := fmt.Sprintf("From: a@sender.example\r\nSubject: msg %d\r\nMessage-ID: <%d@x>\r\n\r\nbody %d\r\n", c.n, c.n, c.n)
		ref, _, err := c.blobs.Put(t.Context(), strings.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, mailstore.SpoolEntry{AccountID: c.account.ID, MailFrom: "a@sender.example",
			Rcpt: c.account.Address, BlobRef: ref, DeliveryKey: delivery.Key("a@sender.example", c.account.Address, []byte(raw)),
			Relayed: relayed})
	}
	if err := c.store.Spool(t.Context(), entries); err != nil {
		t.Fatal(err)
	}
	return entries
}

// waitDelivered waits until every accepted message is in the INBOX, then
// checks each is there exactly once.
func (c *cellFixture) waitDelivered(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		mb, err := c.store.Mailbox(t.Context(), c.account.ID, c.inbox.ID)
		if err != nil {
			t.Fatal(err)
		}
		if int(mb.Total) >= c.n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	seen := map[string]int{}
	var before uint32
	for {
		ms, err := c.store.ListMessages(t.Context(), c.account.ID, c.inbox.ID, mail.ListFilter{}, before, 200)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			seen[m.Subject]++
			before = m.UID
		}
		if len(ms) < 200 {
			break
		}
	}
	missing, dup := 0, 0
	for i := 1; i <= c.n; i++ {
		switch seen[fmt.Sprintf("msg %d", i)] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing > 0 || dup > 0 || len(seen) != c.n {
		t.Fatalf("of %d accepted: %d missing, %d duplicated, %d distinct stored", c.n, missing, dup, len(seen))
	}
}

func run(t *testing.T, ctx context.Context, f func(ctx context.Context)) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f(ctx) }()
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop
}

func TestPipelineSurvivesBrokerRestartAndDataLoss(t *testing.T) {
	b := newBroker(t)
	c := newCell(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	prod, err := queue.NewProducer([]string{b.addr()}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	c.p.Events = prod
	relay := delivery.NewRelay(c.store, prod, log)
	relay.Stale = time.Second
	run(t, t.Context(), relay.Run)
	consume := func(ctx context.Context) {
		_ = queue.ConsumeInbound(ctx, []string{b.addr()}, "test-inbound", log, c.p.HandleIDs)
	}
	stopConsumer := run(t, t.Context(), consume)

	// Steady state.
	c.accept(t, 200)
	relay.Wake()
	c.waitDelivered(t, 30*time.Second)

	// The broker restarts (same data directory) while mail keeps arriving.
	b.stop()
	c.accept(t, 50) // relayed once the broker is back
	relay.Wake()
	b.start()
	c.accept(t, 50)
	relay.Wake()
	c.waitDelivered(t, 30*time.Second)

	// The queue loses its data with records not yet consumed: the sweeper
	// relays the entries again.
	stopConsumer()
	c.accept(t, 40)
	relay.Wake()
	waitFor(t, func() bool { // all relayed (claimed), none processed
		n, err := c.store.SpoolBacklog(t.Context())
		return err == nil && n == 40 && relayedAll(t, relay)
	})
	b.stop()
	b.dir = t.TempDir()
	b.start()
	run(t, t.Context(), consume)
	c.waitDelivered(t, 30*time.Second)
	if n, err := c.store.SpoolBacklog(t.Context()); err != nil || n != 0 {
		t.Fatalf("backlog %d (%v) after everything was delivered", n, err)
	}
}

// Entries the LMTP endpoint commits as relayed and publishes itself are
// all delivered: when the broker is down at the time (released to the
// relay's claim), and when they are never published (the accepting
// process died after the commit: the sweeper relays them once stale).
func TestDirectRelayLosesNothing(t *testing.T) {
	b, c, prod := newBrokerCell(t)
	log := slog.New(slog.DiscardHandler)
	relay := delivery.NewRelay(c.store, prod, log)
	relay.Stale = time.Second
	run(t, t.Context(), relay.Run)
	run(t, t.Context(), func(ctx context.Context) {
		_ = queue.ConsumeInbound(ctx, []string{b.addr()}, "test-inbound", log, c.p.HandleIDs)
	})
	for range 10 {
		relay.Publish(c.acceptRelayed(t, 10, true))
	}
	c.waitDelivered(t, 30*time.Second)

	b.stop()
	relay.Publish(c.acceptRelayed(t, 30, true))
	b.start()
	c.waitDelivered(t, 60*time.Second)

	c.acceptRelayed(t, 20, true) // committed, never published
	c.waitDelivered(t, 30*time.Second)
	if n, err := c.store.SpoolBacklog(t.Context()); err != nil || n != 0 {
		t.Fatalf("backlog %d (%v) after everything was delivered", n, err)
	}
}

// newBrokerCell starts a broker and a cell fixture, and a producer to the
// broker closed when the test ends.
func newBrokerCell(t *testing.T) (*broker, *cellFixture, *queue.Producer) {
	b := newBroker(t)
	c := newCell(t)
	prod, err := queue.NewProducer([]string{b.addr()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	return b, c, prod
}

// relayedAll reports that the relay has nothing left to claim.
func relayedAll(t *testing.T, r *delivery.Relay) bool {
	n, err := r.Once(t.Context())
	return err == nil && n == 0
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFailuresGoToTheErrorTopicAndAreRetried(t *testing.T) {
	b, c, prod := newBrokerCell(t)
	log := slog.New(slog.DiscardHandler)
	c.p.Events = prod
	// An entry whose blob is missing cannot be processed.
	if err := c.store.Spool(t.Context(), []mailstore.SpoolEntry{{AccountID: c.account.ID, MailFrom: "a@x", Rcpt: c.account.Address,
		BlobRef: strings.Repeat("ab", 32), DeliveryKey: "k-missing"}}); err != nil {
		t.Fatal(err)
	}
	relay := delivery.NewRelay(c.store, prod, log)
	run(t, t.Context(), relay.Run)
	run(t, t.Context(), func(ctx context.Context) {
		_ = queue.ConsumeInbound(ctx, []string{b.addr()}, "test-inbound", log, c.p.HandleIDs)
	})

	var rec map[string]any
	readTopic(t, b, queue.TopicErrors, func(r *kgo.Record) bool {
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			t.Fatal(err)
		}
		return true
	})
	if rec["attempt"] != float64(1) || rec["final"] != false || !strings.Contains(fmt.Sprint(rec["reason"]), "blob") {
		t.Fatalf("error record %v", rec)
	}
	// Still pending, due again after the backoff.
	n, err := c.store.SpoolBacklog(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("backlog %d %v: the failed entry must be kept", n, err)
	}
}

// Entries accepted one at a time within the relay's Linger travel as one
// record batch: one produce, one fetch, one call of the pipeline (so one
// delivery transaction), not one each; and each delivery's change event
// reaches the changes topic.
func TestDirectEntriesShareABatch(t *testing.T) {
	b, c, prod := newBrokerCell(t)
	log := slog.New(slog.DiscardHandler)
	c.p.Events = prod
	relay := delivery.NewRelay(c.store, prod, log)
	if relay.Linger <= 0 {
		t.Fatalf("relay linger %v: entries are not batched", relay.Linger)
	}
	relay.Linger = time.Second // longer than the ten arrivals below take
	run(t, t.Context(), relay.Run)
	var mu sync.Mutex
	var calls []int
	run(t, t.Context(), func(ctx context.Context) {
		_ = queue.ConsumeInbound(ctx, []string{b.addr()}, "test-inbound", log, func(ctx context.Context, ids []string) error {
			mu.Lock()
			calls = append(calls, len(ids))
			mu.Unlock()
			return c.p.HandleIDs(ctx, ids)
		})
	})
	entries := c.acceptRelayed(t, 10, true)
	for _, e := range entries { // as ten LMTP transactions in a row, 10 ms apart
		relay.Publish([]mailstore.SpoolEntry{e})
		time.Sleep(10 * time.Millisecond) // the arrivals' pace, not a wait for a condition
	}
	c.waitDelivered(t, 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || calls[0] != 10 {
		t.Fatalf("the pipeline was called with %v entries, want all 10 at once", calls)
	}

	events := map[string]bool{} // by spool id
	readTopic(t, b, queue.TopicChanges, func(r *kgo.Record) bool {
		var ev map[string]any
		if err := json.Unmarshal(r.Value, &ev); err != nil || ev["kind"] != "message_added" || ev["account"] != c.account.ID ||
			string(r.Key) != c.account.ID {
			t.Fatalf("change event %s (%v)", r.Value, err)
		}
		events[fmt.Sprint(ev["spool"])] = true
		return len(events) == len(entries)
	})
	for _, e := range entries {
		if !events[e.ID] {
			t.Errorf("no change event for spool entry %s", e.ID)
		}
	}
}

// readTopic reads topic from its start, giving each record to enough,
// until enough says so (20 seconds at most).
func readTopic(t *testing.T, b *broker, topic string, enough func(*kgo.Record) bool) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.addr()), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for done := false; !done; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("topic %s: not the records wanted in 20s", topic)
		}
		fs.EachRecord(func(r *kgo.Record) { done = done || enough(r) })
	}
}
