// Package queue is the cell's adapter to its Kafka-protocol broker
// (Redpanda in production; franz-go's kfake in tests and the dev stack),
// with franz-go. Topics (DESIGN.md §4):
//
//   - inbound: one record per spool entry (key: account id, value: spool
//     id). Large data never goes in a record: the spool row and the blob
//     store hold the message.
//   - changes: one JSON record per message filed (key: account id), for
//     the search indexer, caches and push.
//   - errors: one JSON record per failed processing attempt, with its
//     reason (the entry itself is retried from the spool with backoff).
//   - outbound: a notification per send with outbound mail (key: account
//     id), so the cell's senders in other processes start at once; the
//     outbound table holds the mail.
//
// Records are produced with acks from all in-sync replicas and
// idempotently; consumption is a consumer group whose offsets are committed
// only after the batch was processed, so a crash re-delivers, and the
// pipeline skips entries already delivered.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// Topic names.
const (
	TopicInbound  = "inbound"
	TopicOutbound = "outbound"
	TopicChanges  = "changes"
	TopicErrors   = "errors"
)

// Topics is every topic a cell uses (created by the operator, or seeded in
// the dev broker).
var Topics = []string{TopicInbound, TopicOutbound, TopicChanges, TopicErrors}

// Producer publishes to the cell's topics, with two clients: one for the
// records a caller waits for (inbound, errors, outbound), sent at once;
// one for change events, which nothing waits for, lingering so that a
// burst of deliveries is one produce request and one broker write.
type Producer struct {
	brokers []string
	log     *slog.Logger
	mu      sync.Mutex
	cls     [2]*kgo.Client // by clientKind
}

type clientKind int

const (
	syncClient   clientKind = iota // no linger: ProduceSync callers wait
	eventsClient                   // lingers EventLinger
)

// EventLinger is how long a change event may wait for others to share its
// produce request (and the broker's fsync): the events feed search, caches
// and push, for which milliseconds do not matter; the Redis wake-up that
// IMAP IDLE and the API's long polls use is published at once.
const EventLinger = 10 * time.Millisecond

// NewProducer connects lazily to brokers.
func NewProducer(brokers []string, log *slog.Logger) (*Producer, error) {
	p := &Producer{brokers: brokers, log: log}
	for k := range p.cls {
		cl, err := newProducerClient(brokers, clientKind(k))
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("queue: %w", err)
		}
		p.cls[k] = cl
	}
	return p, nil
}

// client is the current client of a kind.
func (p *Producer) client(k clientKind) *kgo.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cls[k]
}

// check replaces the client after an error saying the broker's topics are
// not the ones it knew (a cluster rebuilt after losing its data): the
// client caches topic ids and producer ids and would fail for good.
func (p *Producer) check(k clientKind, cl *kgo.Client, err error) {
	if !errors.Is(err, kerr.UnknownTopicID) && !errors.Is(err, kerr.UnknownProducerID) && !errors.Is(err, kerr.InvalidProducerIDMapping) {
		return
	}
	fresh, nerr := newProducerClient(p.brokers, k)
	if nerr != nil {
		return
	}
	p.mu.Lock()
	if p.cls[k] != cl {
		p.mu.Unlock()
		fresh.Close()
		return
	}
	p.cls[k] = fresh
	p.mu.Unlock()
	p.log.Warn("broker no longer knows our topics or producer id; new client", "err", err)
	go cl.Close()
}

func newProducerClient(brokers []string, k clientKind) (*kgo.Client, error) {
	linger := time.Duration(0)
	if k == eventsClient {
		linger = EventLinger
	}
	return kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(linger),
		kgo.RecordDeliveryTimeout(10*time.Second),
		kgo.ProduceRequestTimeout(5*time.Second),
		kgo.RetryTimeout(10*time.Second))
}

// Close closes the clients, after sending the change events still
// lingering (2 seconds at most).
func (p *Producer) Close() {
	if ev := p.client(eventsClient); ev != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = ev.Flush(ctx)
		cancel()
	}
	for k := range p.cls {
		if cl := p.client(clientKind(k)); cl != nil {
			cl.Close()
		}
	}
}

// PublishInbound sends one record per entry and returns once the broker
// acknowledged all of them.
func (p *Producer) PublishInbound(ctx context.Context, entries []mailstore.SpoolEntry) error {
	recs := make([]*kgo.Record, len(entries))
	for i, e := range entries {
		recs[i] = &kgo.Record{Topic: TopicInbound, Key: []byte(e.AccountID), Value: []byte(e.ID)}
	}
	cl := p.client(syncClient)
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		p.check(syncClient, cl, err)
		return fmt.Errorf("queue: produce inbound: %w", err)
	}
	return nil
}

// Delivered publishes a change event, asynchronously (the journal in the
// database is the record of truth; the event is a notification): it
// lingers up to EventLinger for others, and when the client already holds
// as many unsent records as it may (the broker down for long), the event
// is dropped with a warning rather than holding up delivery.
func (p *Producer) Delivered(ctx context.Context, ev mail.Delivered) error {
	v, _ := json.Marshal(map[string]any{"kind": "message_added", "account": ev.AccountID, "mailbox": ev.MailboxID,
		"message": ev.MessageID, "modseq": ev.Modseq, "spool": ev.SpoolID})
	cl := p.client(eventsClient)
	cl.TryProduce(context.WithoutCancel(ctx), &kgo.Record{Topic: TopicChanges, Key: []byte(ev.AccountID), Value: v},
		func(_ *kgo.Record, err error) {
			if err != nil {
				p.check(eventsClient, cl, err)
				p.log.Warn("change event not published", "err", err)
			}
		})
	return nil
}

// Failed publishes a failed attempt to the error topic and waits for it.
func (p *Producer) Failed(ctx context.Context, ev mail.DeliveryFailed) error {
	v, _ := json.Marshal(map[string]any{"spool": ev.SpoolID, "account": ev.AccountID, "reason": ev.Reason,
		"attempt": ev.Attempt, "retry_in_seconds": int(ev.Backoff.Seconds()), "final": ev.Final, "at": time.Now().UTC()})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cl := p.client(syncClient)
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: TopicErrors, Key: []byte(ev.AccountID), Value: v}).FirstErr(); err != nil {
		p.check(syncClient, cl, err)
		return fmt.Errorf("queue: produce error record: %w", err)
	}
	return nil
}

// Handler processes the spool ids of a batch of inbound records. An error
// means "not processed, try these again".
type Handler func(ctx context.Context, ids []string) error

// ConsumeInbound runs a member of the cell's inbound worker group until ctx
// ends: it polls records, hands their ids to handle (again, with backoff,
// while it fails), then marks their offsets for the next commit.
func ConsumeInbound(ctx context.Context, brokers []string, group string, log *slog.Logger, handle Handler) error {
	return consumeTopic(ctx, brokers, group, TopicInbound, log, handle)
}

// NotifyOutbound publishes a record to the `outbound` topic saying a cell
// committed outbound mail: the senders of the cell's group (other
// processes) look at the outbound table at once instead of on their next
// pass. The table is the record of truth; a lost notification only delays.
func (p *Producer) NotifyOutbound(ctx context.Context, accountID string) error {
	cl := p.client(syncClient)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: TopicOutbound, Key: []byte(accountID), Value: []byte(accountID)}).FirstErr(); err != nil {
		p.check(syncClient, cl, err)
		return fmt.Errorf("queue: produce outbound: %w", err)
	}
	return nil
}

// ConsumeOutbound runs a member of the cell's sender group until ctx ends,
// calling wake for each batch of `outbound` records.
func ConsumeOutbound(ctx context.Context, brokers []string, group string, log *slog.Logger, wake func()) error {
	return consumeTopic(ctx, brokers, group, TopicOutbound, log, func(context.Context, []string) error {
		wake()
		return nil
	})
}

func consumeTopic(ctx context.Context, brokers []string, group, topic string, log *slog.Logger, handle Handler) error {
	for {
		err := consume(ctx, brokers, group, topic, log, handle)
		if !errors.Is(err, errRecreate) {
			return err
		}
		log.Warn("broker no longer knows our topic or membership; rejoining with a new client")
	}
}

var errRecreate = errors.New("queue: client must be recreated")

func consume(ctx context.Context, brokers []string, group, topic string, log *slog.Logger, handle Handler) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		// A worker killed without leaving the group holds its partitions
		// until its session times out: keep that short (Kafka's minimum),
		// so its records go to the others within seconds.
		kgo.SessionTimeout(6*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(15*time.Second),
		// Offsets of handled records are marked, and committed each second
		// and before a rebalance gives their partitions away, not after
		// every batch: a crash re-delivers at most a second of records,
		// which processing skips (their entries are delivered), and a
		// lone message does not cost the broker a commit (a write and
		// an fsync) of its own.
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	defer func() {
		cl.AllowRebalance() // Close leaves the group, which waits for a blocked rebalance
		cl.Close()
	}()
	for {
		fetches := cl.PollRecords(ctx, 256)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return ctx.Err()
		}
		recreate := false
		fetches.EachError(func(topic string, part int32, err error) {
			// A broker that restarted (or lost its data) may no longer know
			// our topic or our group membership; a fresh client rejoins at
			// once instead of waiting on a session that is gone.
			recreate = recreate || errors.Is(err, kerr.UnknownTopicID) || errors.Is(err, kerr.UnknownMemberID) ||
				errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.FencedInstanceID)
			if !errors.Is(err, context.Canceled) {
				log.Warn("inbound fetch failed", "partition", part, "err", err)
			}
		})
		if recreate {
			return errRecreate
		}
		var ids []string
		var records []*kgo.Record
		fetches.EachRecord(func(r *kgo.Record) {
			ids = append(ids, string(r.Value))
			records = append(records, r)
		})
		if len(ids) > 0 {
			for attempt := 0; ; attempt++ {
				err := handle(ctx, ids)
				if err == nil {
					break
				}
				log.Warn("inbound batch failed; retrying it", "records", len(ids), "attempt", attempt+1, "err", err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(min(time.Duration(1<<min(attempt, 5))*100*time.Millisecond, 5*time.Second)):
				}
			}
			cl.MarkCommitRecords(records...)
		}
		cl.AllowRebalance()
	}
}
