// Package dnstest runs a real DNS server (github.com/miekg/dns) on a local
// port for tests: SPF, DKIM and DMARC lookups and MX resolution are
// exercised over the wire protocol, as in production, against records the
// test sets. It answers authoritatively for every name it has records for
// and NXDOMAIN for the rest.
package dnstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is a DNS server on 127.0.0.1 (UDP and TCP, same port).
type Server struct {
	Addr    string
	mu      sync.Mutex
	records map[string][]dns.RR // by lowercased FQDN
	servers []*dns.Server
	asked   map[string]int  // questions per lowercased FQDN
	failing map[string]bool // names answered with SERVFAIL
}

// Start starts a server that stops when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := Listen()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Listen starts a server on a free port.
func Listen() (*Server, error) {
	s := &Server{records: map[string][]dns.RR{}, asked: map[string]int{}, failing: map[string]bool{}}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			lastErr = err
			continue
		}
		s.Addr = pc.LocalAddr().String()
		h := dns.HandlerFunc(s.serve)
		s.servers = []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
		for _, srv := range s.servers {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go func() { _ = srv.ActivateAndServe() }()
			<-started
		}
		return s, nil
	}
	return nil, fmt.Errorf("dnstest: no free port for UDP and TCP: %w", lastErr)
}

// Close stops the server.
func (s *Server) Close() {
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
}

// Add adds records in zone-file syntax, e.g.
// `example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`. Long TXT strings
// are split into 255-octet character-strings as a zone file would.
func (s *Server) Add(records ...string) error {
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return fmt.Errorf("dnstest: %q: %w", r, err)
		}
		if txt, ok := rr.(*dns.TXT); ok {
			txt.Txt = splitTXT(strings.Join(txt.Txt, ""))
		}
		name := strings.ToLower(rr.Header().Name)
		s.mu.Lock()
		s.records[name] = append(s.records[name], rr)
		s.mu.Unlock()
	}
	return nil
}

// MustAdd is Add that fails the test.
func (s *Server) MustAdd(tb testing.TB, records ...string) {
	tb.Helper()
	if err := s.Add(records...); err != nil {
		tb.Fatal(err)
	}
}

// Asked counts the questions the server got about name (an FQDN, any
// case), of every type.
func (s *Server) Asked(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[strings.ToLower(name)]
}

// Fail makes the server answer SERVFAIL for name (an FQDN), or stop doing so.
func (s *Server) Fail(name string, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing[strings.ToLower(name)] = fail
}

func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	s.mu.Lock()
	s.asked[strings.ToLower(q.Name)]++
	if s.failing[strings.ToLower(q.Name)] {
		s.mu.Unlock()
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	rrs, found := s.records[strings.ToLower(q.Name)]
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, dns.Copy(rr))
		}
	}
	s.mu.Unlock()
	if !found {
		m.Rcode = dns.RcodeNameError
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		m.Truncate(dns.MinMsgSize)
	}
	_ = w.WriteMsg(m)
}

// Resolver is a Go resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	return ResolverAt(s.Addr)
}

// ResolverAt is a Go resolver that asks only the DNS server at addr.
func ResolverAt(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
