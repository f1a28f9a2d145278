package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

// startSink runs the mail exchanger of the test remote domain
// remote.example (a real SMTP server, go-smtp): it refuses reject@ with
// 550 5.1.1, keeps every other message as a file in dir, and logs whether
// its DKIM signature verifies against the stack's DNS.
func startSink(addr, dir string, resolver *net.Resolver, logPath string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	k := &sink{dir: dir, resolver: resolver, log: slog.New(slog.NewTextHandler(logf, nil))}
	srv := smtp.NewServer(k)
	srv.Domain = "mx.remote.example"
	srv.MaxMessageBytes = 64 << 20
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("remote sink: %w", err)
	}
	go srv.Serve(ln)
	return func() { srv.Close(); logf.Close() }, nil
}

type sink struct {
	dir      string
	resolver *net.Resolver
	log      *slog.Logger
	n        atomic.Int64
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{k: k}, nil }

type sinkSession struct {
	k     *sink
	from  string
	rcpts []string
}

func (s *sinkSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *sinkSession) Logout() error { return nil }
func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(strings.ToLower(to), "reject@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	n := s.k.n.Add(1)
	name := filepath.Join(s.k.dir, fmt.Sprintf("%d-%d.eml", time.Now().Unix(), n))
	if err := os.WriteFile(name, raw, 0o644); err != nil {
		return err
	}
	result := "none"
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: func(domain string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.k.resolver.LookupTXT(ctx, domain)
	}})
	for _, v := range verifs {
		if v.Err == nil {
			result = "pass (d=" + v.Domain + ")"
		} else {
			result = "fail (d=" + v.Domain + "): " + v.Err.Error()
		}
	}
	if err != nil && len(verifs) == 0 {
		result = "error: " + err.Error()
	}
	s.k.log.Info("remote.example received a message", "from", s.from, "to", s.rcpts, "file", name, "dkim", result)
	return nil
}
