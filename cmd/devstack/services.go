package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process of the stack.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// start runs a child with its output in logPath. Children are killed when
// the stack process dies (Pdeathsig), so a killed devstack leaves no orphan.
func start(name, logPath string, cred *syscall.Credential, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// stop asks the child to stop with sig, then kills it after grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitFor polls check until it succeeds, the child exits or timeout passes.
func waitFor(ctx context.Context, p *proc, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before it was ready (%v); see its log", p.name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// portFree fails with a clear message when a port is taken.
func portFree(port int, what string) error {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d (%s) is taken: stop what holds it, or pick other ports with -base-port", port, what)
	}
	return ln.Close()
}

// postgres is a private PostgreSQL server for the stack.
type postgres struct {
	bin  string
	dir  string
	port int
	cred *syscall.Credential
	proc *proc
}

func findPostgres() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(a, b int) bool { return version(dirs[a]) > version(dirs[b]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL is not installed: run `make deps` (it installs Debian's postgresql and redis-server)")
}

func version(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// credential is the postgres user's when running as root: PostgreSQL
// refuses to run as root.
func pgCredential() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root needs the postgres user (installed with postgresql): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

func startPostgres(ctx context.Context, dir, logDir string, port int) (*postgres, error) {
	bin, err := findPostgres()
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := pgCredential()
	if err != nil {
		return nil, err
	}
	pg := &postgres{bin: bin, dir: dir, port: port, cred: cred}
	data := filepath.Join(dir, "data")
	sock := filepath.Join(dir, "run")
	for _, d := range []string{dir, sock} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if uid >= 0 {
			_ = os.Chown(d, uid, gid)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		p, err := start("initdb", filepath.Join(logDir, "postgres-initdb.log"), cred, filepath.Join(bin, "initdb"),
			"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C")
		if err != nil {
			return nil, err
		}
		<-p.done
		if p.err != nil {
			return nil, fmt.Errorf("initdb failed (%v): see %s", p.err, filepath.Join(logDir, "postgres-initdb.log"))
		}
	}
	pg.proc, err = start("postgres", filepath.Join(logDir, "postgres.log"), cred, filepath.Join(bin, "postgres"),
		"-D", data, "-p", strconv.Itoa(port), "-k", sock, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200")
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, pg.proc, 30*time.Second, "postgres", func() error {
		return exec.Command(filepath.Join(bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(port)).Run()
	})
	if err != nil {
		pg.stop()
		return nil, err
	}
	return pg, nil
}

// ensureDB creates a database unless it exists.
func (pg *postgres) ensureDB(name string) error {
	psql := func(sql string) (string, error) {
		out, err := exec.Command(filepath.Join(pg.bin, "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(pg.port),
			"-U", "postgres", "-d", "postgres", "-tAc", sql).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := psql(fmt.Sprintf("SELECT 1 FROM pg_database WHERE datname = '%s'", name))
	if err != nil {
		return fmt.Errorf("psql: %v: %s", err, out)
	}
	if out == "1" {
		return nil
	}
	if out, err := psql(fmt.Sprintf(`CREATE DATABASE "%s"`, name)); err != nil {
		return fmt.Errorf("create database %s: %v: %s", name, err, out)
	}
	return nil
}

func (pg *postgres) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.port, db)
}

// stop is PostgreSQL's fast shutdown (SIGINT): clean, without waiting for
// clients.
func (pg *postgres) stop() { pg.proc.stop(syscall.SIGINT, 20*time.Second) }

func startRedis(ctx context.Context, dir, logDir string, port int) (*proc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not installed: run `make deps`")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p, err := start("redis", filepath.Join(logDir, "redis.log"), nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes",
		"--save", "", "--daemonize", "no", "--protected-mode", "yes")
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, p, 15*time.Second, "redis", func() error { return redisPing(port) })
	if err != nil {
		p.stop(syscall.SIGTERM, 5*time.Second)
		return nil, err
	}
	return p, nil
}

func redisPing(port int) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
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
