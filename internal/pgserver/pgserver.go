// Package pgserver runs a private PostgreSQL server from the system's
// packages on a loopback port with its own data directory, as the
// postgres user when the caller is root (PostgreSQL refuses root). The dev
// stack and the tests use it; PostgreSQL stands in for YugabyteDB.
package pgserver

import (
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
	"sync/atomic"
	"syscall"
	"time"
)

// Server is a running PostgreSQL.
type Server struct {
	Port   int
	bin    string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	nextDB atomic.Int64
}

// Config says where the server keeps its data and listens.
type Config struct {
	Dir     string // data lives in Dir/data, the socket in Dir/run
	Port    int    // 0: any free port
	LogFile string // default Dir/postgres.log
	// Fsync off speeds up tests; the dev stack keeps it on.
	NoFsync bool
}

// Bin finds the newest installed PostgreSQL's bin directory.
func Bin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(a, b int) bool { return major(dirs[a]) > major(dirs[b]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL is not installed: run `make deps` (Debian's postgresql)")
}

func major(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

func credential() (*syscall.Credential, int, int, error) {
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

// Start initialises the data directory when it is new and starts the
// server; it dies with the calling process.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := credential()
	if err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		if cfg.Port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if cfg.LogFile == "" {
		cfg.LogFile = filepath.Join(cfg.Dir, "postgres.log")
	}
	data, sock := filepath.Join(cfg.Dir, "data"), filepath.Join(cfg.Dir, "run")
	for _, d := range []string{cfg.Dir, sock} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		// The postgres user must reach the directory (t.TempDir is 0700).
		_ = os.Chmod(d, 0o755)
		if uid >= 0 {
			_ = os.Chown(d, uid, gid)
		}
	}
	logf, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	attr := func() *syscall.SysProcAttr {
		return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync")
		initdb.Stdout, initdb.Stderr, initdb.SysProcAttr = logf, logf, attr()
		if err := initdb.Run(); err != nil {
			return nil, fmt.Errorf("initdb failed (%v): see %s", err, cfg.LogFile)
		}
	}
	args := []string{"-D", data, "-p", strconv.Itoa(cfg.Port), "-k", sock, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"}
	if cfg.NoFsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr, cmd.SysProcAttr = logf, logf, attr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	s := &Server{Port: cfg.Port, bin: bin, cmd: cmd, done: make(chan struct{})}
	go func() { s.err = cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if exec.Command(filepath.Join(bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(cfg.Port)).Run() == nil {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("postgres exited (%v): see %s", s.err, cfg.LogFile)
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("postgres not ready in 30s: see %s", cfg.LogFile)
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Stop is PostgreSQL's fast shutdown (SIGINT), then a kill after 20 s.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Kill stops the server abruptly (SIGKILL), as a crash would.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// DSN is the URL of a database on the server.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// EnsureDB creates a database unless it exists.
func (s *Server) EnsureDB(name string) error {
	if strings.ContainsAny(name, `"'\`) {
		return fmt.Errorf("bad database name %q", name)
	}
	out, err := s.psql(fmt.Sprintf("SELECT 1 FROM pg_database WHERE datname = '%s'", name))
	if err != nil {
		return err
	}
	if out == "1" {
		return nil
	}
	_, err = s.psql(fmt.Sprintf(`CREATE DATABASE "%s"`, name))
	return err
}

// NewDB creates a fresh database with a unique name and returns its DSN.
func (s *Server) NewDB() (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.nextDB.Add(1))
	if err := s.EnsureDB(name); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

func (s *Server) psql(sql string) (string, error) { return s.Psql("postgres", sql) }

// Psql runs one SQL command in database db with psql and returns its
// unaligned output (tests that need to reach into a cell's database).
func (s *Server) Psql(db, sql string) (string, error) {
	out, err := exec.Command(filepath.Join(s.bin, "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port),
		"-U", "postgres", "-d", db, "-tAc", sql).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("psql %q: %v: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// TestMain runs a package's tests (m is its *testing.M) against a
// throwaway PostgreSQL without fsync, stored in *srv before they run, and
// returns the exit code for os.Exit. name tags the temporary directory.
func TestMain(m interface{ Run() int }, name string, srv **Server) int {
	dir, err := os.MkdirTemp("", name+"-pg-")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the postgres user must reach it when tests run as root
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	s, err := Start(context.Background(), Config{Dir: dir, NoFsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
		return 1
	}
	defer s.Stop()
	*srv = s
	return m.Run()
}
