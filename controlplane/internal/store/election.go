package store

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is held while its context is live.
type Leadership struct {
	ctx      context.Context
	cancel   context.CancelFunc
	election *concurrency.Election
	session  *concurrency.Session
}

// Context is cancelled when leadership is lost (the session's lease expired,
// etcd unreachable for longer than the TTL) or resigned.
func (l *Leadership) Context() context.Context { return l.ctx }

// Resign gives leadership up and releases the session.
func (l *Leadership) Resign(ctx context.Context) error {
	defer l.cancel()
	defer l.session.Close()
	if err := l.election.Resign(ctx); err != nil {
		return fmt.Errorf("resign: %w", err)
	}
	return nil
}

// Campaign blocks until this process leads the election of the given name
// (under locks/<name>/), or ctx ends. ttlSeconds bounds how long a dead
// leader holds on.
func (s *Store) Campaign(ctx context.Context, name, value string, ttlSeconds int) (*Leadership, error) {
	session, err := concurrency.NewSession(s.cli, concurrency.WithTTL(ttlSeconds), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("election session: %w", err)
	}
	e := concurrency.NewElection(session, s.prefix+"locks/"+name)
	if err := e.Campaign(ctx, value); err != nil {
		session.Close()
		return nil, fmt.Errorf("campaign %s: %w", name, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-session.Done():
		case <-lctx.Done():
		}
		cancel()
	}()
	return &Leadership{ctx: lctx, cancel: cancel, election: e, session: session}, nil
}
