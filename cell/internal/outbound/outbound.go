// Package outbound sends users' mail to remote domains (DESIGN.md §4):
// sender workers take due entries of the outbound table, find the
// domain's mail exchangers (RFC 5321 §5.1: MX records by preference, the
// domain's own address records when there is no MX, a null MX (RFC 7505)
// refused for good), and hand the message over SMTP with opportunistic
// STARTTLS (RFC 3207), signed with the sending domain's DKIM key (RFC 6376,
// go-msgauth). Each recipient gets its own result: delivered; refused for
// good (5xx) and answered with a delivery status notification (RFC 3464)
// in the sender's INBOX; or tried again with exponential backoff and
// jitter until the entry expires (default 5 days), then bounced.
//
// go-smtp's client dot-stuffs the body on the wire; bodies are composed by
// the cell with CRLF line endings.
package outbound

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
	"github.com/cellmail/cellmail/internal/oneline"
)

// Store is the outbound table and what bounces need.
type Store interface {
	ClaimOutbound(ctx context.Context, n int, lease time.Duration) ([]mailstore.OutboundEntry, error)
	FinishOutbound(ctx context.Context, id string, state int16, detail string) error
	RetryOutbound(ctx context.Context, id, reason string, wait time.Duration) error
	DKIMKey(ctx context.Context, domain string, create func() (string, []byte, error)) (string, []byte, error)
	MailboxByUse(ctx context.Context, accountID string, use mail.SpecialUse) (mail.Mailbox, error)
}

// Resolver is the DNS the sender uses; *net.Resolver is one.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// Sender delivers the outbound table.
type Sender struct {
	Store    Store
	DSN      *delivery.Deliverer // files bounces
	Resolver Resolver
	// Hostname is the name in EHLO, DSNs and Message-IDs.
	Hostname string
	// Port is the remote SMTP port (25; tests use another).
	Port int
	// Selector names the DKIM keys this cell creates ("cellmail" default).
	Selector string
	Log      *slog.Logger
	// PerDomain bounds concurrent connections to one domain (default 4).
	PerDomain int
	// IsHosted and DeliverHosted, when set, take the entries for our own
	// domains (queued because the recipient's cell could not take them at
	// once): they go to the owning cell, never through public MX.
	IsHosted      func(domain string) bool
	DeliverHosted func(ctx context.Context, from, rcpt string, raw []byte) (permanent bool, err error)

	wake  chan struct{}
	once  sync.Once
	keys  sync.Map // domain → *signingKey
	slots sync.Map // domain → chan struct{}
}

type signingKey struct {
	selector string
	signer   crypto.Signer
}

func (s *Sender) init() {
	s.once.Do(func() {
		s.wake = make(chan struct{}, 1)
		if s.Port == 0 {
			s.Port = 25
		}
		if s.Selector == "" {
			s.Selector = "cellmail"
		}
		if s.PerDomain == 0 {
			s.PerDomain = 4
		}
		if s.Hostname == "" {
			s.Hostname = "cellmail.local"
		}
	})
}

// Wake asks the sender to look at the table now.
func (s *Sender) Wake() {
	s.init()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

const (
	lease = 10 * time.Minute // longer than a delivery attempt takes
	batch = 64
)

// Run sends until ctx ends: when woken, and every second.
func (s *Sender) Run(ctx context.Context) {
	s.init()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			n, err := s.Once(ctx)
			if err != nil {
				s.Log.Warn("outbound pass failed", "err", err)
				break
			}
			if n < batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}

// Once sends one batch of due entries and returns how many it took.
func (s *Sender) Once(ctx context.Context) (int, error) {
	s.init()
	entries, err := s.Store.ClaimOutbound(ctx, batch, lease)
	if err != nil {
		return 0, err
	}
	// One SMTP transaction per domain and message, with all its recipients.
	type key struct{ domain, from, body string }
	groups := map[key][]mailstore.OutboundEntry{}
	var order []key
	for _, e := range entries {
		h := sha256.Sum256(e.Body)
		k := key{e.Domain, e.MailFrom, string(h[:])}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], e)
	}
	var wg sync.WaitGroup
	for _, k := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slot := s.slot(k.domain)
			slot <- struct{}{}
			defer func() { <-slot }()
			s.deliver(ctx, groups[k])
		}()
	}
	wg.Wait()
	return len(entries), nil
}

func (s *Sender) slot(domain string) chan struct{} {
	c, _ := s.slots.LoadOrStore(domain, make(chan struct{}, s.PerDomain))
	return c.(chan struct{})
}

// result is one recipient's outcome.
type result struct {
	err       error  // nil: delivered
	permanent bool   // 5xx or no way to deliver
	remote    string // the MX that answered
}

func (s *Sender) deliver(ctx context.Context, es []mailstore.OutboundEntry) {
	var res map[string]result
	if s.IsHosted != nil && s.DeliverHosted != nil && s.IsHosted(es[0].Domain) {
		res = map[string]result{}
		for _, e := range es {
			perm, err := s.DeliverHosted(ctx, e.MailFrom, e.Rcpt, e.Body)
			res[e.ID] = result{err: err, permanent: perm, remote: ownCell}
		}
	} else {
		res = s.send(ctx, es)
	}
	for _, e := range es {
		r := res[e.ID]
		switch {
		case r.err == nil:
			if err := s.Store.FinishOutbound(ctx, e.ID, mailstore.OutboundDelivered, "delivered to "+r.remote); err != nil {
				s.Log.Warn("outbound result not recorded", "id", e.ID, "err", err)
			}
		case r.permanent || time.Now().After(e.Expires):
			s.bounce(ctx, e, r)
		default:
			wait := Backoff(e.Attempts)
			if r.remote == ownCell {
				wait = HostedBackoff(e.Attempts)
			}
			s.Log.Info("outbound delivery deferred", "id", e.ID, "domain", e.Domain, "attempt", e.Attempts+1, "retry_in", wait.Round(time.Second), "err", r.err)
			if err := s.Store.RetryOutbound(ctx, e.ID, r.err.Error(), wait); err != nil {
				s.Log.Warn("outbound retry not recorded", "id", e.ID, "err", err)
			}
		}
	}
}

// Backoff is the wait after n failed attempts: one minute doubling, at
// most 4 hours, with ±20% jitter so retries to one domain spread out.
func Backoff(n int) time.Duration {
	return jitter(min(time.Minute<<min(n, 8), 4*time.Hour))
}

// jitter returns base ±20%, uniformly.
func jitter(base time.Duration) time.Duration {
	j, _ := rand.Int(rand.Reader, big.NewInt(int64(base/5)*2+1))
	return base - base/5 + time.Duration(j.Int64())
}

// ownCell marks a result of delivery to one of our own cells.
const ownCell = "(own cell)"

// HostedBackoff is the wait for a recipient of ours whose cell was not
// reachable: cells come back in seconds to minutes, so 5 seconds doubling,
// at most 5 minutes, with the same jitter.
func HostedBackoff(n int) time.Duration {
	return jitter(min(5*time.Second<<min(n, 6), 5*time.Minute))
}

// send makes one SMTP transaction for the entries (same domain, sender and
// body), trying the domain's exchangers in order.
func (s *Sender) send(ctx context.Context, es []mailstore.OutboundEntry) map[string]result {
	out := map[string]result{}
	all := func(r result) map[string]result {
		for _, e := range es {
			out[e.ID] = r
		}
		return out
	}
	hosts, err := s.exchangers(ctx, es[0].Domain)
	if err != nil {
		var pe *permanentError
		return all(result{err: err, permanent: errors.As(err, &pe)})
	}
	body, err := s.sign(ctx, es[0].MailFrom, es[0].Body)
	if err != nil {
		return all(result{err: err})
	}
	var last error = errors.New("no mail exchanger reachable")
	for _, host := range hosts {
		c, err := s.dial(ctx, host)
		if err != nil {
			last = fmt.Errorf("%s: %w", host, err)
			continue
		}
		res, err := s.transaction(c, host, es, body)
		c.Close()
		if err != nil && res == nil { // the connection failed before any answer about recipients
			last = fmt.Errorf("%s: %w", host, err)
			continue
		}
		return res
	}
	return all(result{err: last})
}

type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

// exchangers lists where to deliver for domain, best first.
func (s *Sender) exchangers(ctx context.Context, domain string) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	mxs, err := s.Resolver.LookupMX(lctx, domain)
	var dnsErr *net.DNSError
	if err != nil && errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		if _, aerr := s.Resolver.LookupIPAddr(lctx, domain); aerr != nil {
			return nil, &permanentError{fmt.Sprintf("domain %s has no mail exchanger and no address", domain)}
		}
		return []string{domain}, nil // RFC 5321 §5.1: the implicit MX
	}
	if err != nil {
		return nil, fmt.Errorf("MX lookup for %s: %w", domain, err)
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, &permanentError{fmt.Sprintf("domain %s accepts no mail (null MX, RFC 7505)", domain)}
	}
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	hosts := make([]string, 0, len(mxs))
	for _, mx := range mxs {
		hosts = append(hosts, strings.TrimSuffix(mx.Host, "."))
	}
	return hosts, nil
}

func (s *Sender) dial(ctx context.Context, host string) (*smtp.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	addrs, err := s.Resolver.LookupIPAddr(dctx, host)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	var conn net.Conn
	for _, a := range addrs {
		if conn, err = d.DialContext(dctx, "tcp", net.JoinHostPort(a.IP.String(), strconv.Itoa(s.Port))); err == nil {
			break
		}
	}
	if conn == nil {
		if err == nil {
			err = errors.New("no address")
		}
		return nil, err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = 5*time.Minute, 10*time.Minute
	if err := c.Hello(s.Hostname); err != nil {
		c.Close()
		return nil, err
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		// Opportunistic: encrypt when offered; certificates are not checked
		// (there is no policy saying they must be, as MTA-STS or DANE would).
		if err := c.StartTLS(&tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}); err != nil {
			c.Close()
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
	}
	return c, nil
}

// transaction sends one message: per-recipient RCPT results, then DATA for
// those accepted. res is nil when the transaction failed before any
// recipient was answered.
func (s *Sender) transaction(c *smtp.Client, host string, es []mailstore.OutboundEntry, body []byte) (map[string]result, error) {
	res := map[string]result{}
	verdict := func(err error) result {
		var se *smtp.SMTPError
		return result{err: err, permanent: errors.As(err, &se) && se.Code >= 500, remote: host}
	}
	if err := c.Mail(es[0].MailFrom, nil); err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return nil, err
		}
		for _, e := range es {
			res[e.ID] = verdict(err)
		}
		return res, nil
	}
	var accepted []mailstore.OutboundEntry
	for _, e := range es {
		if err := c.Rcpt(e.Rcpt, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return nil, err
			}
			res[e.ID] = verdict(err)
			continue
		}
		accepted = append(accepted, e)
	}
	if len(accepted) == 0 {
		return res, nil
	}
	err := func() error {
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(body); err != nil {
			return err
		}
		return w.Close()
	}()
	for _, e := range accepted {
		if err != nil {
			res[e.ID] = verdict(err)
		} else {
			res[e.ID] = result{remote: host}
		}
	}
	_ = c.Quit()
	return res, nil
}

// sign adds a DKIM-Signature of the sender's domain.
func (s *Sender) sign(ctx context.Context, from string, body []byte) ([]byte, error) {
	domain := strings.ToLower(from[strings.LastIndexByte(from, '@')+1:])
	k, err := s.key(ctx, domain)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	err = dkim.Sign(&out, bytes.NewReader(body), &dkim.SignOptions{Domain: domain, Selector: k.selector, Signer: k.signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
			"References", "MIME-Version", "Content-Type"}})
	if err != nil {
		return nil, fmt.Errorf("dkim sign: %w", err)
	}
	return out.Bytes(), nil
}

func (s *Sender) key(ctx context.Context, domain string) (*signingKey, error) {
	if k, ok := s.keys.Load(domain); ok {
		return k.(*signingKey), nil
	}
	sel, der, err := s.Store.DKIMKey(ctx, domain, NewDKIMKey(s.Selector))
	if err != nil {
		return nil, err
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("dkim key of %s: %w", domain, err)
	}
	k := &signingKey{selector: sel, signer: priv.(crypto.Signer)}
	s.keys.Store(domain, k)
	return k, nil
}

// NewDKIMKey makes a 2048-bit RSA key (what every verifier accepts; RFC
// 8301) under selector, PKCS #8 encoded.
func NewDKIMKey(selector string) func() (string, []byte, error) {
	return func() (string, []byte, error) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		return selector, der, err
	}
}

// DKIMRecord is the DNS TXT record to publish at
// <selector>._domainkey.<domain> for a key DKIMKey stored.
func DKIMRecord(pkcs8 []byte) (string, error) {
	priv, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public())
	if err != nil {
		return "", err
	}
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub), nil
}

// bounce ends an entry that cannot be delivered: a delivery status
// notification (RFC 3464) goes to the sender's INBOX (none for the null
// sender), then the entry is marked bounced. A crash in between sends the
// same notice again, which the INBOX stores once (its delivery key).
func (s *Sender) bounce(ctx context.Context, e mailstore.OutboundEntry, r result) {
	status, diag := "5.0.0", "X-Cellmail; "+oneline.ASCII(r.err.Error(), 500)
	var se *smtp.SMTPError
	if errors.As(r.err, &se) {
		status = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		if se.EnhancedCode == (smtp.EnhancedCode{}) || se.EnhancedCode == smtp.NoEnhancedCode {
			status = fmt.Sprintf("%d.0.0", se.Code/100)
		}
		diag = fmt.Sprintf("smtp; %d %s", se.Code, oneline.ASCII(se.Message, 500))
	}
	if !r.permanent { // temporary failures until the entry expired
		status = "4.4.7" // RFC 3463: delivery time expired
	}
	if e.MailFrom != "" {
		inbox, err := s.Store.MailboxByUse(ctx, e.AccountID, mail.UseInbox)
		if err != nil {
			s.Log.Warn("bounce not filed; retrying later", "id", e.ID, "err", err)
			_ = s.Store.RetryOutbound(ctx, e.ID, r.err.Error(), time.Minute)
			return
		}
		dsn := s.dsn(e, r.remote, status, diag)
		if _, err := s.DSN.Deliver(ctx, e.AccountID, inbox.ID, dsn, delivery.Options{Key: "dsn:" + e.ID, ReceivedAt: time.Now()}); err != nil {
			s.Log.Warn("bounce not filed; retrying later", "id", e.ID, "err", err)
			_ = s.Store.RetryOutbound(ctx, e.ID, r.err.Error(), time.Minute)
			return
		}
	}
	if err := s.Store.FinishOutbound(ctx, e.ID, mailstore.OutboundBounced, status+" "+diag); err != nil {
		s.Log.Warn("outbound result not recorded", "id", e.ID, "err", err)
	}
	s.Log.Info("outbound message bounced", "id", e.ID, "domain", e.Domain, "status", status)
}

// dsn renders the delivery status notification (RFC 3464 §2, RFC 3462
// multipart/report) for one recipient, with the original's header.
func (s *Sender) dsn(e mailstore.OutboundEntry, remote, status, diag string) []byte {
	boundary := "dsn-" + e.ID
	header := e.Body
	if i := bytes.Index(header, []byte("\r\n\r\n")); i >= 0 {
		header = header[:i+2]
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", s.Hostname)
	fmt.Fprintf(&b, "To: <%s>\r\n", e.MailFrom)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <dsn.%s@%s>\r\n", e.ID, s.Hostname)
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Your message to %s could not be delivered.\r\n\r\n", e.Rcpt)
	if remote != "" {
		fmt.Fprintf(&b, "The mail server %s answered:\r\n  %s\r\n", remote, strings.TrimPrefix(diag, "smtp; "))
	} else {
		fmt.Fprintf(&b, "Reason: %s\r\n", strings.TrimPrefix(diag, "X-Cellmail; "))
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\n\r\n", s.Hostname, e.Created.UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Final-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n", e.Rcpt, status)
	if remote != "" {
		fmt.Fprintf(&b, "Remote-MTA: dns; %s\r\n", remote)
	}
	fmt.Fprintf(&b, "Diagnostic-Code: %s\r\n", diag)
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary)
	b.Write(header)
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}
