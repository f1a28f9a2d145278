// Package redistest runs a real redis-server on a loopback port for tests.
//
// Each Server gets its own port and data directory, persists nothing
// (--save "" --appendonly no) and is stopped when the test ends. Stop and
// Start may be called in between to simulate an outage and a recovery on the
// same address; Pause and Resume simulate a hung server.
package redistest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long Start waits for redis-server to answer PING.
const startTimeout = 10 * time.Second

// Server is one redis-server process bound to 127.0.0.1. Addr stays the same
// across Stop and Start.
type Server struct {
	// Addr is host:port of the server, valid whether it runs or not.
	Addr string

	t    testing.TB
	bin  string
	port int
	dir  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	out    *syncBuffer   // the current process's stdout and stderr
}

// Start starts a redis-server on a free loopback port and returns it running.
// The server is stopped at the end of the test.
func Start(t testing.TB) *Server {
	t.Helper()
	s := New(t)
	s.Start()
	return s
}

// New reserves a free loopback port for a redis-server without starting it,
// so a test can begin with Redis down. Call Start to start it; it is stopped
// at the end of the test.
func New(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		bin = "/usr/bin/redis-server"
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("redistest: pick a port: %v", err)
	}
	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		bin:  bin,
		port: port,
		dir:  t.TempDir(),
	}
	t.Cleanup(s.Stop)
	return s
}

// Start starts the server on its port and waits until it answers PING. It
// fails the test if the server is already running or does not come up.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatalf("redistest: %s already running", s.Addr)
	}
	out := &syncBuffer{}
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
	)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: start %s: %v", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status of a killed server says nothing useful
		close(exited)
	}()
	s.cmd, s.exited, s.out = cmd, exited, out

	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(s.Addr)
		if err == nil {
			return
		}
		select {
		case <-exited:
			s.cmd = nil
			s.t.Fatalf("redistest: redis-server on %s exited during start-up: %v\n%s", s.Addr, err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			s.t.Fatalf("redistest: redis-server on %s not answering PING after %v: %v\n%s", s.Addr, startTimeout, err, out.String())
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Stop kills the server (SIGKILL, like a crash) and waits until the process
// has exited, so its port refuses connections on return. Stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill() // fails only if it has already exited
	<-s.exited
	s.cmd = nil
}

// Pause stops the server process (SIGSTOP) without closing its sockets, like
// a hung server: connections stay open and commands get no reply. Resume
// undoes it.
func (s *Server) Pause() {
	s.t.Helper()
	s.signal(syscall.SIGSTOP)
}

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() {
	s.t.Helper()
	s.signal(syscall.SIGCONT)
}

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		s.t.Fatalf("redistest: %s is not running", s.Addr)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("redistest: signal %v to redis-server on %s: %v", sig, s.Addr, err)
	}
}

// freePort asks the kernel for a free loopback port. Another process may take
// it before redis-server binds it; Start then fails with redis-server's log.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ping sends one inline PING and expects +PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
