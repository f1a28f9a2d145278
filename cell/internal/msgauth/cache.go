package msgauth

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"time"
)

// Cache is a Resolver that remembers answers, as the caching resolver next
// to every mail server does: the same sender domains' SPF, DKIM and DMARC
// records are asked for message after message. An answer, or a "no such
// name", is kept for TTL at most; a failure (a timeout, a SERVFAIL) is not
// kept, so the next message asks again. net.Resolver does not give the
// records' TTLs, so TTL is a cap: keep it short (a minute), well under the
// TTLs these records are published with, which then bound how stale an
// answer can be.
type Cache struct {
	r   Resolver
	ttl time.Duration
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
}

type cacheKey struct {
	kind byte // 'T' TXT, 'M' MX, 'I' IP, 'A' PTR
	name string
}

type cacheEntry struct {
	value   any
	err     error
	expires time.Time
}

// NewCache caches r's answers for ttl, at most max of them.
func NewCache(r Resolver, ttl time.Duration, max int) *Cache {
	return &Cache{r: r, ttl: ttl, max: max, now: time.Now, entries: map[cacheKey]cacheEntry{}}
}

// LookupTXT implements Resolver.
func (c *Cache) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return cached(c, ctx, cacheKey{'T', name}, c.r.LookupTXT, slices.Clone)
}

// LookupMX implements Resolver.
func (c *Cache) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return cached(c, ctx, cacheKey{'M', name}, c.r.LookupMX, func(mx []*net.MX) []*net.MX {
		out := make([]*net.MX, len(mx))
		for i, m := range mx {
			cp := *m
			out[i] = &cp
		}
		return out
	})
}

// LookupIPAddr implements Resolver.
func (c *Cache) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return cached(c, ctx, cacheKey{'I', host}, c.r.LookupIPAddr, func(ips []net.IPAddr) []net.IPAddr {
		out := make([]net.IPAddr, len(ips))
		for i, ip := range ips {
			out[i] = net.IPAddr{IP: slices.Clone(ip.IP), Zone: ip.Zone}
		}
		return out
	})
}

// LookupAddr implements Resolver.
func (c *Cache) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return cached(c, ctx, cacheKey{'A', addr}, c.r.LookupAddr, slices.Clone)
}

// cached answers from the cache, or asks lookup and keeps its answer. The
// value handed out is a copy (clone), so a caller cannot change what the
// next one gets.
func cached[T any](c *Cache, ctx context.Context, key cacheKey, lookup func(context.Context, string) (T, error), clone func(T) T) (T, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		v, _ := e.value.(T)
		return clone(v), e.err
	}
	v, err := lookup(ctx, key.name)
	var dnsErr *net.DNSError
	if err != nil && !(errors.As(err, &dnsErr) && dnsErr.IsNotFound) {
		return v, err // not an answer: asked again next time
	}
	c.mu.Lock()
	if len(c.entries) >= c.max {
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			clear(c.entries) // full of live entries: start again (bounded memory)
		}
	}
	c.entries[key] = cacheEntry{value: v, err: err, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return clone(v), err
}
