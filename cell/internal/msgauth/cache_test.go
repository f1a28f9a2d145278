package msgauth

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cellmail/cellmail/internal/dnstest"
)

// The cache answers repeated questions itself, "no such name" included,
// until the TTL ends; a failure is not kept.
func TestCacheKeepsAnswersNotFailures(t *testing.T) {
	dns := dnstest.Start(t)
	dns.MustAdd(t, `sender.example. 300 IN TXT "v=spf1 -all"`, `sender.example. 300 IN MX 10 mx.sender.example.`,
		`mx.sender.example. 300 IN A 192.0.2.1`, `flaky.example. 300 IN TXT "x"`)
	c := NewCache(dns.Resolver(), time.Minute, 100)
	now := time.Now()
	c.now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		txt, err := c.LookupTXT(ctx, "sender.example")
		if err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
			t.Fatalf("TXT %q %v", txt, err)
		}
		txt[0] = "changed by a caller"
		if mx, err := c.LookupMX(ctx, "sender.example"); err != nil || len(mx) != 1 || mx[0].Host != "mx.sender.example." {
			t.Fatalf("MX %v %v", mx, err)
		}
		if ips, err := c.LookupIPAddr(ctx, "mx.sender.example"); err != nil || len(ips) != 1 {
			t.Fatalf("A %v %v", ips, err)
		}
		var dnsErr *net.DNSError
		if _, err := c.LookupTXT(ctx, "_dmarc.nowhere.example"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Fatalf("absent name: %v", err)
		}
	}
	// TXT and MX of sender.example: two questions; mx.sender.example: A
	// and AAAA; the absent name once.
	if n := dns.Asked("sender.example."); n != 2 {
		t.Fatalf("sender.example asked %d times, want 2", n)
	}
	if n := dns.Asked("_dmarc.nowhere.example."); n != 1 {
		t.Fatalf("absent name asked %d times, want 1 (NXDOMAIN kept)", n)
	}
	asked := dns.Asked("mx.sender.example.")
	if _, err := c.LookupIPAddr(ctx, "mx.sender.example"); err != nil || dns.Asked("mx.sender.example.") != asked {
		t.Fatalf("A asked again before the TTL: %v", err)
	}
	// A SERVFAIL is not kept: the next lookup asks again and gets the record.
	dns.Fail("flaky.example.", true)
	if _, err := c.LookupTXT(ctx, "flaky.example"); err == nil {
		t.Fatal("SERVFAIL answered")
	}
	dns.Fail("flaky.example.", false)
	if txt, err := c.LookupTXT(ctx, "flaky.example"); err != nil || len(txt) != 1 {
		t.Fatalf("after SERVFAIL: %q %v", txt, err)
	}
	// After the TTL: asked again.
	now = now.Add(time.Minute)
	if _, err := c.LookupTXT(ctx, "sender.example"); err != nil || dns.Asked("sender.example.") != 3 {
		t.Fatalf("not asked again after the TTL (%d questions): %v", dns.Asked("sender.example."), err)
	}
}

// The cache never holds more than its bound.
func TestCacheIsBounded(t *testing.T) {
	dns := dnstest.Start(t)
	c := NewCache(dns.Resolver(), time.Minute, 10)
	for i := range 35 {
		c.LookupTXT(context.Background(), "n"+string(rune('a'+i%26))+string(rune('a'+i/26))+".example")
		if len(c.entries) > 10 {
			t.Fatalf("%d entries, bound 10", len(c.entries))
		}
	}
}
