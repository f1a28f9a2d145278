// Package store keeps the placement map in etcd: the key layout of
// DESIGN.md §2 under /cellmail/v1/, changes as single transactions that
// compare revisions, list-then-watch reads, lease-bound liveness keys and
// leader election. It is the only package that imports the etcd client.
//
// # Contract
//
//   - Every write to the map (cells/*/info, domains/, ranges/, pins/) goes
//     through Update, which raises map/epoch by exactly one in the same
//     transaction. Epochs therefore only rise, and comparing map/epoch's
//     revision detects any concurrent change of the map.
//   - Update returns ErrConflict (the admin API's aborted) when a key the
//     change read was changed by someone else in the meantime; when only
//     unrelated keys changed it re-runs the change on fresh data.
//   - Errors returned by the change function are returned unchanged and
//     nothing is written.
//   - Reads inside a change see one consistent revision.
//   - List returns the whole map at one revision; Watch continues from a
//     revision and reports ErrCompacted when that revision is gone, after
//     which the reader must List again.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

// DefaultPrefix is the root of every cellmail key in etcd.
const DefaultPrefix = "/cellmail/v1/"

// Sentinel errors.
var (
	ErrConflict   = errors.New("a concurrent change won")
	ErrCompacted  = errors.New("watch revision compacted")
	ErrNotLeader  = errors.New("leadership lost")
	errTooManyRun = errors.New("map kept changing under the update")
)

// Config says how to reach etcd.
type Config struct {
	Endpoints   []string
	DialTimeout time.Duration
	Prefix      string // DefaultPrefix when empty
	Username    string
	Password    string
}

// Store is a handle on the map in etcd. It is safe for concurrent use.
type Store struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
}

// Open connects to etcd. It does not wait for etcd to answer: a store opened
// while etcd is down starts working when etcd comes back.
func Open(cfg Config, log *slog.Logger) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("store: no etcd endpoints")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(), // errors reach callers; slog logs them once
	})
	if err != nil {
		return nil, fmt.Errorf("store: connect etcd: %w", err)
	}
	return &Store{cli: cli, prefix: cfg.Prefix, log: log}, nil
}

// Close releases the connection.
func (s *Store) Close() error { return s.cli.Close() }

// Prefix is the root key of the map.
func (s *Store) Prefix() string { return s.prefix }

// Key layout (DESIGN.md §2).

// CellKey is cells/<cell>/info.
func (s *Store) CellKey(cell string) string { return s.prefix + "cells/" + cell + "/info" }

// AliveKey is cells/<cell>/alive/<instance>.
func (s *Store) AliveKey(cell, instance string) string {
	return s.prefix + "cells/" + cell + "/alive/" + instance
}

// DomainKey is domains/<domain>.
func (s *Store) DomainKey(domain string) string { return s.prefix + "domains/" + domain }

// RangePrefix is ranges/<jurisdiction>/.
func (s *Store) RangePrefix(jur string) string { return s.prefix + "ranges/" + jur + "/" }

// RangeKey is ranges/<jurisdiction>/<start>, the start in 14 hex digits so
// that key order is numeric order.
func (s *Store) RangeKey(jur string, start uint64) string {
	return fmt.Sprintf("%s%014x", s.RangePrefix(jur), start)
}

// PinKey is pins/<placement key>.
func (s *Store) PinKey(key string) string { return s.prefix + "pins/" + key }

// EpochKey is map/epoch.
func (s *Store) EpochKey() string { return s.prefix + "map/epoch" }

// KV is one key of the map with its revision.
type KV struct {
	Key         string
	Value       []byte
	ModRevision int64
}

// Tx is a change in progress: reads at one revision, buffered writes.
type Tx struct {
	s        *Store
	ctx      context.Context
	rev      int64
	epoch    uint64
	epochRev int64
	reads    map[string]int64 // key → mod revision seen (0: absent)
	prefixes map[string]prefixSeen
	ops      []clientv3.Op
}

type prefixSeen struct {
	count  int64
	maxRev int64
}

// NewEpoch is the epoch this change will commit as.
func (tx *Tx) NewEpoch() uint64 { return tx.epoch + 1 }

// Get reads one record into m. It reports false when the key is absent.
func (tx *Tx) Get(key string, m proto.Message) (bool, error) {
	resp, err := tx.s.cli.Get(tx.ctx, key, clientv3.WithRev(tx.rev))
	if err != nil {
		return false, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		tx.reads[key] = 0
		return false, nil
	}
	kv := resp.Kvs[0]
	tx.reads[key] = kv.ModRevision
	if err := proto.Unmarshal(kv.Value, m); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

// List reads every key under a prefix, in key order.
func (tx *Tx) List(prefix string) ([]KV, error) {
	resp, err := tx.s.cli.Get(tx.ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(tx.rev))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	seen := prefixSeen{count: int64(len(resp.Kvs))}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		seen.maxRev = max(seen.maxRev, kv.ModRevision)
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	tx.prefixes[prefix] = seen
	return out, nil
}

// Put writes a record when the change commits.
func (tx *Tx) Put(key string, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	tx.ops = append(tx.ops, clientv3.OpPut(key, string(b)))
	return nil
}

// Delete removes a key when the change commits.
func (tx *Tx) Delete(key string) { tx.ops = append(tx.ops, clientv3.OpDelete(key)) }

// maxUpdateRuns bounds how often Update re-runs a change that lost only to
// unrelated changes.
const maxUpdateRuns = 8

// Update runs change on a consistent view of the map and commits its writes
// together with map/epoch+1 in one transaction. It returns the new epoch.
// See the package documentation for its conflict rules. A change that
// writes nothing commits nothing and returns the current epoch.
func (s *Store) Update(ctx context.Context, change func(tx *Tx) error) (uint64, error) {
	for run := 0; run < maxUpdateRuns; run++ {
		tx, err := s.begin(ctx)
		if err != nil {
			return 0, err
		}
		if err := change(tx); err != nil {
			return 0, err
		}
		if len(tx.ops) == 0 {
			return tx.epoch, nil
		}
		epochVal, err := proto.Marshal(&pb.MapEpoch{Epoch: tx.epoch + 1})
		if err != nil {
			return 0, fmt.Errorf("encode epoch: %w", err)
		}
		ops := append(tx.ops, clientv3.OpPut(s.EpochKey(), string(epochVal)))
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.EpochKey()), "=", tx.epochRev)).
			Then(ops...).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("commit: %w", err)
		}
		if resp.Succeeded {
			return tx.epoch + 1, nil
		}
		conflict, err := s.changedSince(ctx, tx)
		if err != nil {
			return 0, err
		}
		if conflict {
			return 0, ErrConflict
		}
		s.log.Debug("map changed under an update; running it again", "run", run+1)
	}
	return 0, errTooManyRun
}

func (s *Store) begin(ctx context.Context) (*Tx, error) {
	resp, err := s.cli.Get(ctx, s.EpochKey())
	if err != nil {
		return nil, fmt.Errorf("read epoch: %w", err)
	}
	tx := &Tx{s: s, ctx: ctx, rev: resp.Header.Revision, reads: map[string]int64{}, prefixes: map[string]prefixSeen{}}
	if len(resp.Kvs) == 1 {
		var e pb.MapEpoch
		if err := proto.Unmarshal(resp.Kvs[0].Value, &e); err != nil {
			return nil, fmt.Errorf("decode epoch: %w", err)
		}
		tx.epoch, tx.epochRev = e.Epoch, resp.Kvs[0].ModRevision
	}
	return tx, nil
}

// changedSince reports whether any key or prefix the change read differs now.
func (s *Store) changedSince(ctx context.Context, tx *Tx) (bool, error) {
	for key, rev := range tx.reads {
		resp, err := s.cli.Get(ctx, key, clientv3.WithKeysOnly())
		if err != nil {
			return false, fmt.Errorf("recheck %s: %w", key, err)
		}
		now := int64(0)
		if len(resp.Kvs) == 1 {
			now = resp.Kvs[0].ModRevision
		}
		if now != rev {
			return true, nil
		}
	}
	for prefix, seen := range tx.prefixes {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false, fmt.Errorf("recheck %s: %w", prefix, err)
		}
		now := prefixSeen{count: int64(len(resp.Kvs))}
		for _, kv := range resp.Kvs {
			now.maxRev = max(now.maxRev, kv.ModRevision)
		}
		if now != seen {
			return true, nil
		}
	}
	return false, nil
}

// List returns every key of the map (and liveness keys) at one revision.
func (s *Store) List(ctx context.Context) ([]KV, int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list map: %w", err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	return out, resp.Header.Revision, nil
}

// Event is one change seen by Watch. A deleted key has no value.
type Event struct {
	KV
	Deleted bool
}

// WatchBatch is what Watch delivers: the events of one or more revisions,
// or a progress notification (no events) that says the reader is current
// up to Revision, or an error after which the channel closes.
type WatchBatch struct {
	Events   []Event
	Revision int64
	Err      error
}

// Watch delivers the map's changes after revision rev until ctx ends or an
// error (ErrCompacted among them) is delivered.
func (s *Store) Watch(ctx context.Context, rev int64) <-chan WatchBatch {
	out := make(chan WatchBatch, 16)
	wctx := clientv3.WithRequireLeader(ctx)
	wch := s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	go func() {
		defer close(out)
		send := func(b WatchBatch) bool {
			select {
			case out <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 {
				send(WatchBatch{Err: fmt.Errorf("%w: at %d", ErrCompacted, resp.CompactRevision)})
				return
			}
			if err := resp.Err(); err != nil {
				send(WatchBatch{Err: fmt.Errorf("watch: %w", err)})
				return
			}
			b := WatchBatch{Revision: resp.Header.Revision}
			for _, ev := range resp.Events {
				b.Events = append(b.Events, Event{
					KV:      KV{Key: string(ev.Kv.Key), Value: ev.Kv.Value, ModRevision: ev.Kv.ModRevision},
					Deleted: ev.Type == clientv3.EventTypeDelete,
				})
			}
			if !send(b) {
				return
			}
		}
		if ctx.Err() == nil {
			send(WatchBatch{Err: errors.New("watch: channel closed")})
		}
	}()
	return out
}

// Epoch is a linearizable read of map/epoch (0 when the map is empty).
func (s *Store) Epoch(ctx context.Context) (uint64, error) {
	resp, err := s.cli.Get(ctx, s.EpochKey())
	if err != nil {
		return 0, fmt.Errorf("read epoch: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	var e pb.MapEpoch
	if err := proto.Unmarshal(resp.Kvs[0].Value, &e); err != nil {
		return 0, fmt.Errorf("decode epoch: %w", err)
	}
	return e.Epoch, nil
}

// ReadKey is a linearizable read of what decides one subject's owner: its
// pin, its domain, the range holding hash h in jurisdiction jur, and the
// epoch, all at one revision.
func (s *Store) ReadKey(ctx context.Context, jur string, h uint64, pinKey, domain string) ([]KV, int64, error) {
	rangeFrom := s.RangePrefix(jur)
	rangeTo := s.RangeKey(jur, h) + "\x00" // keys ≤ the key of h
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.PinKey(pinKey)),
		clientv3.OpGet(s.DomainKey(domain)),
		clientv3.OpGet(rangeFrom, clientv3.WithRange(rangeTo), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1)),
		clientv3.OpGet(s.EpochKey()),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("read key: %w", err)
	}
	var out []KV
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			out = append(out, KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
		}
	}
	return out, resp.Header.Revision, nil
}

// KeepAlive holds cells/<cell>/alive/<instance> bound to a lease of ttl
// until ctx ends, then revokes it. When the lease is lost (etcd down longer
// than ttl) it is granted again once etcd answers.
func (s *Store) KeepAlive(ctx context.Context, cell, instance string, info *pb.Liveness, ttl time.Duration) error {
	val, err := proto.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode liveness: %w", err)
	}
	key := s.AliveKey(cell, instance)
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := s.holdLease(ctx, key, string(val), ttl)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("liveness lease lost; granting again", "key", key, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (s *Store) holdLease(ctx context.Context, key, val string, ttl time.Duration) error {
	lease, err := s.cli.Grant(ctx, int64(max(ttl/time.Second, 1)))
	if err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_, _ = s.cli.Revoke(rctx, lease.ID)
	}()
	if _, err := s.cli.Put(ctx, key, val, clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	ch, err := s.cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keepalive: %w", err)
	}
	for range ch {
	}
	return errors.New("keepalive channel closed")
}

// ParseRangeKey returns the jurisdiction and start of a range key.
func (s *Store) ParseRangeKey(key string) (string, uint64, bool) {
	rest, ok := strings.CutPrefix(key, s.prefix+"ranges/")
	if !ok {
		return "", 0, false
	}
	jur, hex, ok := strings.Cut(rest, "/")
	if !ok {
		return "", 0, false
	}
	start, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return "", 0, false
	}
	return jur, start, true
}
