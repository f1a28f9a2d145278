// Package msgauth authenticates an inbound message: SPF (RFC 7208) for the
// client IP and the envelope sender (falling back to the HELO name, §2.3),
// DKIM signatures (RFC 6376 §6), and DMARC (RFC 7489 §6.6) for the
// RFC5322.From domain with relaxed or strict alignment against the
// organisational domain (public suffix list). The verdicts are rendered as
// one Authentication-Results field (RFC 8601) and given to the spam step.
//
// Every DNS query goes through the Resolver, so tests run against a real
// DNS server on a local port and production against the cell's resolver;
// each check has a deadline, and a DNS failure is a temperror, never a
// delay without end.
package msgauth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"
)

// Resolver is the DNS as the checks use it; *net.Resolver is one.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// Checker runs the checks.
type Checker struct {
	// AuthServID names this service in Authentication-Results (RFC 8601 §2.5).
	AuthServID string
	Resolver   Resolver
	// Timeout bounds all DNS work of one message (default 10 s).
	Timeout time.Duration
}

// Verdict is what the checks found.
type Verdict struct {
	SPF       authres.ResultValue
	SPFDomain string // the domain SPF was checked for (MAIL FROM's, or HELO's)
	SPFHelo   bool   // SPF was checked for the HELO name (null sender)
	DKIM      []DKIMVerdict
	DMARC     authres.ResultValue
	// Policy is the From domain's DMARC policy, when it has one.
	Policy     dmarc.Policy
	FromDomain string
}

// DKIMVerdict is one signature's result.
type DKIMVerdict struct {
	Result authres.ResultValue
	Domain string
	Reason string
}

// maxSignatures bounds the DKIM work a message can cause.
const maxSignatures = 5

// Check authenticates raw (the message as received, without the edge's
// trace field) sent from ip, with the HELO name and envelope sender given.
func (c *Checker) Check(ctx context.Context, ip netip.Addr, helo, mailFrom string, raw []byte) Verdict {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var v Verdict
	v.SPF, v.SPFDomain, v.SPFHelo = c.spf(ctx, ip, helo, mailFrom)
	lookupTXT := func(name string) ([]string, error) { return c.Resolver.LookupTXT(ctx, name) }

	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: lookupTXT, MaxVerifications: maxSignatures})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		v.DKIM = append(v.DKIM, DKIMVerdict{Result: authres.ResultPermError, Reason: "unreadable message"})
	}
	for _, vf := range verifs {
		d := DKIMVerdict{Domain: vf.Domain, Result: authres.ResultPass}
		switch {
		case vf.Err == nil:
		case dkim.IsTempFail(vf.Err):
			d.Result, d.Reason = authres.ResultTempError, vf.Err.Error()
		case dkim.IsPermFail(vf.Err):
			d.Result, d.Reason = authres.ResultPermError, vf.Err.Error()
		default:
			d.Result, d.Reason = authres.ResultFail, vf.Err.Error()
		}
		v.DKIM = append(v.DKIM, d)
	}

	v.FromDomain = fromDomain(raw)
	v.DMARC, v.Policy = c.dmarc(lookupTXT, v)
	return v
}

func (c *Checker) spf(ctx context.Context, ip netip.Addr, helo, mailFrom string) (authres.ResultValue, string, bool) {
	if !ip.IsValid() {
		return authres.ResultNone, "", false
	}
	sender, onHelo := mailFrom, false
	if sender == "" { // RFC 7208 §2.4: the null sender is checked as postmaster@HELO
		sender, onHelo = "postmaster@"+helo, true
	}
	domain := sender[strings.LastIndexByte(sender, '@')+1:]
	res, _ := spf.CheckHostWithSender(net.IP(ip.Unmap().AsSlice()), helo, sender,
		spf.WithContext(ctx), spf.WithResolver(c.Resolver))
	switch res {
	case spf.Pass:
		return authres.ResultPass, domain, onHelo
	case spf.Fail:
		return authres.ResultFail, domain, onHelo
	case spf.SoftFail:
		return authres.ResultSoftFail, domain, onHelo
	case spf.Neutral:
		return authres.ResultNeutral, domain, onHelo
	case spf.TempError:
		return authres.ResultTempError, domain, onHelo
	case spf.PermError:
		return authres.ResultPermError, domain, onHelo
	}
	return authres.ResultNone, domain, onHelo
}

// dmarc evaluates RFC 7489 §6.6: a pass needs an aligned SPF pass or an
// aligned DKIM pass.
func (c *Checker) dmarc(lookupTXT func(string) ([]string, error), v Verdict) (authres.ResultValue, dmarc.Policy) {
	if v.FromDomain == "" {
		return authres.ResultNone, ""
	}
	opts := &dmarc.LookupOptions{LookupTXT: lookupTXT}
	rec, err := dmarc.LookupWithOptions(v.FromDomain, opts)
	org := orgDomain(v.FromDomain)
	sub := false
	if errors.Is(err, dmarc.ErrNoPolicy) && org != v.FromDomain { // §6.6.3: the organisational domain's record
		rec, err = dmarc.LookupWithOptions(org, opts)
		sub = true
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		return authres.ResultNone, ""
	case err != nil && dmarc.IsTempFail(err):
		return authres.ResultTempError, ""
	case err != nil:
		return authres.ResultPermError, ""
	}
	policy := rec.Policy
	if sub && rec.SubdomainPolicy != "" {
		policy = rec.SubdomainPolicy
	}
	aligned := func(d string, mode dmarc.AlignmentMode) bool {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if mode == dmarc.AlignmentStrict {
			return d == v.FromDomain
		}
		return d != "" && orgDomain(d) == org
	}
	if v.SPF == authres.ResultPass && !v.SPFHelo && aligned(v.SPFDomain, rec.SPFAlignment) {
		return authres.ResultPass, policy
	}
	for _, d := range v.DKIM {
		if d.Result == authres.ResultPass && aligned(d.Domain, rec.DKIMAlignment) {
			return authres.ResultPass, policy
		}
	}
	return authres.ResultFail, policy
}

func orgDomain(d string) string {
	o, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return o
}

// fromDomain is the domain of the single RFC5322.From address, lowercased;
// empty when there is none or more than one (RFC 7489 §6.6.1).
func fromDomain(raw []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return ""
	}
	from := h.Values("From")
	if len(from) != 1 {
		return ""
	}
	v := from[0]
	if i := strings.LastIndexByte(v, '<'); i >= 0 {
		v = v[i+1:]
		if j := strings.IndexByte(v, '>'); j >= 0 {
			v = v[:j]
		}
	}
	v = strings.TrimSpace(v)
	at := strings.LastIndexByte(v, '@')
	if at < 0 || strings.ContainsAny(v, ", ") {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(v[at+1:], "."))
}

// Field renders the verdict as an Authentication-Results field (RFC 8601
// §2.2), CRLF-terminated.
func (c *Checker) Field(v Verdict, mailFrom, helo string) string {
	var results []authres.Result
	spfRes := &authres.SPFResult{Value: v.SPF}
	if v.SPFHelo {
		spfRes.Helo = helo
	} else {
		spfRes.From = mailFrom
	}
	results = append(results, spfRes)
	if len(v.DKIM) == 0 {
		results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
	}
	for _, d := range v.DKIM {
		results = append(results, &authres.DKIMResult{Value: d.Result, Domain: d.Domain, Reason: d.Reason})
	}
	results = append(results, &authres.DMARCResult{Value: v.DMARC, From: v.FromDomain})
	id := c.AuthServID
	if id == "" {
		id = "cellmail"
	}
	return "Authentication-Results: " + authres.Format(id, results) + "\r\n"
}
