package msgauth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/cellmail/cellmail/internal/dnstest"
)

const body = "From: Ann <ann@sender.example>\r\nTo: bob@demo.example\r\nSubject: hello\r\n" +
	"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\nHi Bob.\r\n"

func sign(t *testing.T, key ed25519.PrivateKey, domain, raw string) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: domain, Selector: "s1", Signer: key,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func setup(t *testing.T) (*Checker, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		`sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`s1._domainkey.sender.example. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`,
		`_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`bulk.sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.20 -all"`,
		`helo.example. 300 IN TXT "v=spf1 ip4:192.0.2.30 -all"`,
		`other.example. 300 IN TXT "v=spf1 +all"`,
		`s1._domainkey.other.example. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`,
	)
	return &Checker{AuthServID: "mx.test", Resolver: dns.Resolver(), Timeout: 5 * time.Second}, priv
}

func TestVerdicts(t *testing.T) {
	c, key := setup(t)
	ctx := t.Context()
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	cases := []struct {
		name       string
		ip         netip.Addr
		helo, from string
		raw        []byte
		spf, dmarc authres.ResultValue
		dkim       []authres.ResultValue
		policy     dmarc.Policy
	}{
		{"aligned SPF and DKIM", ip("192.0.2.10"), "mta.sender.example", "bounce@sender.example", sign(t, key, "sender.example", body),
			authres.ResultPass, authres.ResultPass, []authres.ResultValue{authres.ResultPass}, dmarc.PolicyReject},
		{"SPF fail, no signature: DMARC fails under p=reject", ip("198.51.100.1"), "x", "bounce@sender.example", []byte(body),
			authres.ResultFail, authres.ResultFail, nil, dmarc.PolicyReject},
		{"relaxed alignment: SPF passes for a subdomain", ip("192.0.2.20"), "x", "b@bulk.sender.example", []byte(body),
			authres.ResultPass, authres.ResultPass, nil, dmarc.PolicyReject},
		{"unaligned passes do not make DMARC pass", ip("198.51.100.1"), "x", "b@other.example", sign(t, key, "other.example", body),
			authres.ResultPass, authres.ResultFail, []authres.ResultValue{authres.ResultPass}, dmarc.PolicyReject},
		{"tampered body fails DKIM", ip("198.51.100.1"), "x", "b@nowhere.example",
			bytes.Replace(sign(t, key, "sender.example", body), []byte("Hi Bob."), []byte("Pay me."), 1),
			authres.ResultNone, authres.ResultFail, []authres.ResultValue{authres.ResultFail}, dmarc.PolicyReject},
		{"null sender: SPF on HELO, never aligned", ip("192.0.2.30"), "helo.example", "", []byte(body),
			authres.ResultPass, authres.ResultFail, nil, dmarc.PolicyReject},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := c.Check(ctx, tc.ip, tc.helo, tc.from, tc.raw)
			if v.SPF != tc.spf || v.DMARC != tc.dmarc || v.Policy != tc.policy {
				t.Errorf("spf %s dmarc %s policy %q; want %s %s %q", v.SPF, v.DMARC, v.Policy, tc.spf, tc.dmarc, tc.policy)
			}
			var got []authres.ResultValue
			for _, d := range v.DKIM {
				got = append(got, d.Result)
			}
			if len(got) != len(tc.dkim) || (len(got) > 0 && got[0] != tc.dkim[0]) {
				t.Errorf("dkim %v (%+v), want %v", got, v.DKIM, tc.dkim)
			}
			f := c.Field(v, tc.from, tc.helo)
			if !strings.HasPrefix(f, "Authentication-Results: mx.test;") || !strings.Contains(f, "spf="+string(tc.spf)) ||
				!strings.Contains(f, "dmarc="+string(tc.dmarc)) || !strings.HasSuffix(f, "\r\n") || strings.Count(f, "\n") != 1 {
				t.Errorf("field %q", f)
			}
		})
	}
}

func TestNoDNSIsTempErrorNotAHang(t *testing.T) {
	dns := dnstest.Start(t)
	dead := dns.Addr
	dns.Close() // nothing answers on this port now
	c := &Checker{Resolver: dnstest.ResolverAt(dead), Timeout: 2 * time.Second}
	v := c.Check(t.Context(), netip.MustParseAddr("192.0.2.10"), "x", "a@sender.example", []byte(body))
	if v.SPF != authres.ResultTempError && v.SPF != authres.ResultNone {
		t.Errorf("spf %s with no DNS", v.SPF)
	}
	if v.DMARC != authres.ResultTempError && v.DMARC != authres.ResultPermError {
		t.Errorf("dmarc %s with no DNS", v.DMARC)
	}
}
