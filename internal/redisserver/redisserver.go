// Package redisserver runs a private redis-server from the system's
// packages on a loopback port, for the dev stack and tests.
package redisserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Server is a running redis-server.
type Server struct {
	Addr string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Config says where Redis keeps its data and listens.
type Config struct {
	Dir     string
	Port    int    // 0: any free port
	LogFile string // default Dir/redis.log
	// Persist turns on the append-only file (the dev stack); tests run
	// without persistence.
	Persist bool
}

// Start runs redis-server and waits until it answers PING; it dies with
// the calling process.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not installed: run `make deps`")
	}
	if cfg.Port == 0 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		cfg.Port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if cfg.LogFile == "" {
		cfg.LogFile = filepath.Join(cfg.Dir, "redis.log")
	}
	logf, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	aof := "no"
	if cfg.Persist {
		aof = "yes"
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(cfg.Port), "--bind", "127.0.0.1", "--dir", cfg.Dir,
		"--appendonly", aof, "--save", "", "--daemonize", "no", "--protected-mode", "yes")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", cfg.Port), cmd: cmd, done: make(chan struct{})}
	go func() { s.err = cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for s.ping() != nil {
		select {
		case <-s.done:
			return nil, fmt.Errorf("redis exited (%v): see %s", s.err, cfg.LogFile)
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("redis not ready in 15s: see %s", cfg.LogFile)
		}
	}
	return s, nil
}

func (s *Server) ping() error {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redis answered %q", line)
	}
	return nil
}

// Stop shuts Redis down (SIGTERM), killing it after 10 s.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}
