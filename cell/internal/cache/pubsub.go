package cache

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// Publish sends msg to the current subscribers of channel. Delivery is at
// most once and only to subscribers connected at that moment: pub/sub carries
// wake-ups, and a subscriber must be able to recover a missed one (by
// re-reading state after Subscribe resubscribes, or by polling slowly).
// An unusable Redis yields an error wrapping ErrUnavailable.
func (c *Cache) Publish(ctx context.Context, channel string, msg []byte) error {
	client, err := c.conn()
	if err != nil {
		return fmt.Errorf("cache: publish %q: %w", channel, err)
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := client.B().Publish().Channel(channel).Message(rueidis.BinaryString(msg)).Build()
	if err := client.Do(opCtx, cmd).Error(); err != nil {
		return fmt.Errorf("cache: publish %q: %w", channel, c.check(ctx, err))
	}
	return nil
}

// Subscribe calls fn with each message published to channel until ctx is
// done, then returns ctx's error. It waits for Redis while it is unavailable
// and resubscribes after every reconnect; messages published in between are
// lost (see Publish). After Close it returns an error wrapping
// ErrUnavailable; on a Redis error reply to SUBSCRIBE (e.g. an ACL denial) it
// returns that error.
//
// fn is called from one goroutine at a time, in order. Each Subscribe holds
// its own Redis connection, so a slow fn delays only its own messages (Redis
// disconnects a subscriber that falls too far behind, and Subscribe then
// resubscribes); but connections are not free, so subscribe once per process
// and fan out in process rather than once per IMAP session.
func (c *Cache) Subscribe(ctx context.Context, channel string, fn func(msg []byte)) error {
	return c.subscribe(ctx, channel, func(dc rueidis.DedicatedClient) rueidis.Completed {
		return dc.B().Subscribe().Channel(channel).Build()
	}, func(m rueidis.PubSubMessage) { fn([]byte(m.Message)) })
}

// PSubscribe is Subscribe for the channels matching a glob pattern (Redis
// PSUBSCRIBE); fn also gets the channel. One pattern subscription per
// process fans out to every IMAP session of the process.
func (c *Cache) PSubscribe(ctx context.Context, pattern string, fn func(channel string, msg []byte)) error {
	return c.subscribe(ctx, pattern, func(dc rueidis.DedicatedClient) rueidis.Completed {
		return dc.B().Psubscribe().Pattern(pattern).Build()
	}, func(m rueidis.PubSubMessage) { fn(m.Channel, []byte(m.Message)) })
}

func (c *Cache) subscribe(ctx context.Context, channel string, build func(rueidis.DedicatedClient) rueidis.Completed, fn func(rueidis.PubSubMessage)) error {
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.life, cancel) // Close ends the subscription
	defer stop()
	// end words the return once subCtx is done: the caller's ctx error if
	// the caller stopped, ErrUnavailable if the Cache was closed.
	end := func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("cache: subscribe %q: %w", channel, err)
		}
		return fmt.Errorf("cache: subscribe %q: closed: %w", channel, ErrUnavailable)
	}

	backoff := minBackoff
	for {
		client, err := c.waitUp(subCtx)
		if err != nil {
			return end()
		}
		started := time.Now()
		err = c.receive(subCtx, client, build, fn)
		if subCtx.Err() != nil {
			return end()
		}
		if rerr, ok := rueidis.IsRedisErr(err); ok && !serverBusy(rerr) {
			return fmt.Errorf("cache: subscribe %q: %w", channel, err)
		}
		if err != nil {
			c.markDown(err)
		}
		// A subscription that ends at once (err == nil means the server
		// unsubscribed us) must not turn into a busy loop.
		if time.Since(started) > maxBackoff {
			backoff = minBackoff
		}
		t := time.NewTimer(jitter(backoff))
		select {
		case <-subCtx.Done():
			t.Stop()
			return end()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// receive runs one subscription on a dedicated connection until it ends.
func (c *Cache) receive(ctx context.Context, client rueidis.Client, build func(rueidis.DedicatedClient) rueidis.Completed, fn func(rueidis.PubSubMessage)) error {
	// A dedicated connection: on the shared pipeline, rueidis hands
	// messages to Receive through a 16-slot channel filled by the
	// connection's reader, so a slow fn would stall every Get and Set
	// behind it. Releasing the connection also unsubscribes it, which
	// Receive alone does not do.
	dc, release := client.Dedicate()
	defer release()
	return dc.Receive(ctx, build(dc), fn)
}
