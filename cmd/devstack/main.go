// Command devstack runs the whole cellmail system on one machine (`make
// run`): embedded etcd, PostgreSQL and Redis from the system's packages, a
// Kafka-protocol broker per cell, and the control plane, three cells in two
// jurisdictions and a router, each its own OS process so that any one can
// be killed. It bootstraps demo domains, prints how to use the stack, and
// writes every endpoint to <dir>/stack.json. Ctrl-C stops it all; a second
// run reuses the data.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	mailv1 "github.com/cellmail/cellmail/cell/gen/mailv1"
	"github.com/cellmail/cellmail/cell/gen/mailv1/mailv1connect"
	"github.com/cellmail/cellmail/cmd/internal/cli"
	"github.com/cellmail/cellmail/controlplane/cptest"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
	"github.com/cellmail/cellmail/controlplane/gen/controlplanev1/controlplanev1connect"
	"github.com/cellmail/cellmail/controlplane/placement"
	"github.com/cellmail/cellmail/internal/clamdtest"
	"github.com/cellmail/cellmail/internal/dnstest"
	"github.com/cellmail/cellmail/internal/pgserver"
	"github.com/cellmail/cellmail/internal/redisserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

type cellSpec struct {
	Name         string `json:"name"`
	Jurisdiction string `json:"jurisdiction"`
	API          string `json:"api"`
	PID          int    `json:"pid"`
	Database     string `json:"database"`
	Redis        string `json:"redis"`
	Kafka        string `json:"kafka"`
	Log          string `json:"log"`
	LMTP         string `json:"lmtp"`
	IMAP         string `json:"imap"`
	// The cell's inbound pipeline worker (its own process, a member of the
	// cell's consumer group) and its broker process.
	Worker     string `json:"worker"`
	WorkerPID  int    `json:"worker_pid"`
	WorkerLog  string `json:"worker_log"`
	BrokerPID  int    `json:"broker_pid"`
	BrokerLog  string `json:"broker_log"`
	brokerPort int
}

type domainSpec struct {
	Name         string `json:"name"`
	Jurisdiction string `json:"jurisdiction"`
	Mode         string `json:"mode"`
}

type account struct {
	Address      string `json:"address"`
	Password     string `json:"password"`
	Cell         string `json:"cell"`
	Jurisdiction string `json:"jurisdiction"`
}

// Stack is what stack.json holds.
type Stack struct {
	Controlplane string `json:"controlplane"`
	AdminToken   string `json:"admin_token"`
	Etcd         string `json:"etcd"`
	Router       struct {
		HTTP        string `json:"http"`
		URL         string `json:"url"`
		SMTP        string `json:"smtp"`
		Submission  string `json:"submission"`
		Submissions string `json:"submissions"`
		IMAP        string `json:"imap"`
		IMAPS       string `json:"imaps"`
		PID         int    `json:"pid"`
	} `json:"router"`
	Cells    []cellSpec   `json:"cells"`
	Domains  []domainSpec `json:"domains"`
	Accounts []account    `json:"accounts"`
	Postgres string       `json:"postgres"`
	Redis    string       `json:"redis"`
	DNS      string       `json:"dns"`
	Clamd    string       `json:"clamd,omitempty"`
	// RemoteSink is the SMTP server of the test remote domains
	// (remote.example accepts, except reject@; messages land in SinkDir).
	RemoteSink string `json:"remote_sink"`
	SinkDir    string `json:"sink_dir"`
	TLSCert    string `json:"tls_cert"`
	Logs       string `json:"logs"`
}

var demoCells = []struct{ name, jur string }{{"eu-1", "eu"}, {"eu-2", "eu"}, {"us-1", "us"}}

var demoUsers = []struct{ address, name string }{
	{"alice@demo-eu.example", "Alice Example"},
	{"bob@demo-us.example", "Bob Example"},
	{"carol@acme-eu.example", "Carol Acme"},
}

// demoAccounts creates the demo users through the router (an existing one
// is kept) and returns them with their passwords and cells.
func demoAccounts(ctx context.Context, routerURL string, sec *secrets) ([]account, error) {
	c := mailv1connect.NewMailServiceClient(http.DefaultClient, routerURL)
	var out []account
	for _, u := range demoUsers {
		req := connect.NewRequest(&mailv1.CreateAccountRequest{Address: u.address, Password: sec.Passwords[u.address], DisplayName: u.name})
		req.Header().Set("Authorization", "Bearer "+sec.Admin)
		resp, err := c.CreateAccount(ctx, req)
		a := account{Address: u.address, Password: sec.Passwords[u.address]}
		switch {
		case err == nil:
			a.Cell, a.Jurisdiction = resp.Msg.Account.Cell, resp.Msg.Account.Jurisdiction
		case connect.CodeOf(err) == connect.CodeAlreadyExists:
			login, lerr := c.Login(ctx, connect.NewRequest(&mailv1.LoginRequest{Address: u.address, Password: sec.Passwords[u.address]}))
			if lerr != nil {
				return nil, fmt.Errorf("demo account %s exists but its password does not work: %w", u.address, lerr)
			}
			a.Cell, a.Jurisdiction = login.Msg.Account.Cell, login.Msg.Account.Jurisdiction
		default:
			return nil, fmt.Errorf("create demo account %s: %w", u.address, err)
		}
		out = append(out, a)
	}
	return out, nil
}

var demoDomains = []domainSpec{
	{"demo-eu.example", "eu", "consumer"},
	{"acme-eu.example", "eu", "tenant"},
	{"demo-us.example", "us", "consumer"},
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack", flag.ContinueOnError)
	dir := fs.String("dir", ".dev", "data, logs and stack.json")
	base := fs.Int("base-port", 7400, "first of the ports the stack uses (base … base+99)")
	binDir := fs.String("bin", "", "directory of controlplaned, celld and routerd (default: next to devstack)")
	restart := fs.Bool("restart-crashed", false, "start a cell again when its process dies (a supervisor's job)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		*binDir = filepath.Dir(exe)
	}
	if *base < 1024 || *base > 65535-100 {
		return fmt.Errorf("-base-port %d: want 1024…65435", *base)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	*dir = abs
	logDir := filepath.Join(*dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ports := map[string]int{"control plane": *base, "etcd": *base + 1, "postgres": *base + 32, "redis": *base + 36,
		"router http": *base + 80, "router smtp": *base + 25, "router submission": *base + 87,
		"router submissions": *base + 65, "remote sink": *base + 26, "router imap": *base + 43, "router imaps": *base + 93}
	for i, c := range demoCells {
		ports["cell "+c.name] = *base + 10 + i
		ports["kafka "+c.name] = *base + 90 + i
		ports["lmtp "+c.name] = *base + 20 + i
		ports["imap "+c.name] = *base + 50 + i
		ports["worker "+c.name] = *base + 40 + i
	}
	for what, p := range ports {
		if err := portFree(p, what); err != nil {
			return err
		}
	}
	secrets, err := loadSecrets(filepath.Join(*dir, "secrets.json"))
	if err != nil {
		return err
	}

	var cleanups []func()
	defer func() {
		fmt.Fprintln(out, "\nstopping…")
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		fmt.Fprintln(out, "stopped")
	}()

	step := func(what string) func() {
		t := time.Now()
		return func() { log.Info(what, "took", time.Since(t).Round(time.Millisecond)) }
	}
	done := step("etcd started (embedded)")
	etcd, err := cptest.NewEtcd(filepath.Join(*dir, "etcd"), ports["etcd"])
	if err != nil {
		return err
	}
	cleanups = append(cleanups, etcd.Close)
	done()

	done = step("postgres started")
	pg, err := pgserver.Start(ctx, pgserver.Config{Dir: filepath.Join(*dir, "postgres"), Port: ports["postgres"],
		LogFile: filepath.Join(logDir, "postgres.log")})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, pg.Stop)
	done()

	done = step("redis started")
	redis, err := redisserver.Start(ctx, redisserver.Config{Dir: filepath.Join(*dir, "redis"), Port: ports["redis"],
		LogFile: filepath.Join(logDir, "redis.log"), Persist: true})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, redis.Stop)
	done()

	st := &Stack{
		Controlplane: fmt.Sprintf("http://127.0.0.1:%d", ports["control plane"]),
		AdminToken:   secrets.Admin,
		Etcd:         etcd.Endpoints[0],
		Postgres:     fmt.Sprintf("127.0.0.1:%d", ports["postgres"]),
		Redis:        fmt.Sprintf("127.0.0.1:%d", ports["redis"]),
		Logs:         logDir,
		Domains:      demoDomains,
		Accounts:     []account{},
	}

	done = step("DNS, clamd and the TLS certificate ready")
	dns, err := dnstest.Listen()
	if err != nil {
		return err
	}
	cleanups = append(cleanups, dns.Close)
	for _, d := range demoDomains { // the stack's own host may send as the demo domains
		if err := dns.Add(d.Name + `. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`); err != nil {
			return err
		}
	}
	st.DNS = dns.Addr
	if _, err := os.Stat(clamdtest.Binary); err == nil {
		addr, stopClamd, err := clamdtest.Run(filepath.Join(*dir, "clamd"))
		if err != nil {
			return err
		}
		cleanups = append(cleanups, stopClamd)
		st.Clamd = addr
	}
	certFile, keyFile, err := ensureCert(filepath.Join(*dir, "tls"))
	if err != nil {
		return err
	}
	st.TLSCert = certFile
	// remote.example: the sink; down.example: an MX that never answers (its
	// mail waits in the outbound queue).
	if err := dns.Add(`remote.example. 300 IN MX 10 mx.remote.example.`, `mx.remote.example. 300 IN A 127.0.0.1`,
		`down.example. 300 IN MX 10 mx.down.example.`, `mx.down.example. 300 IN A 127.0.0.2`); err != nil {
		return err
	}
	st.RemoteSink, st.SinkDir = fmt.Sprintf("127.0.0.1:%d", ports["remote sink"]), filepath.Join(*dir, "sink")
	stopSink, err := startSink(st.RemoteSink, st.SinkDir, dns.Resolver(), filepath.Join(logDir, "sink.log"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, stopSink)
	done()

	done = step("kafka-protocol brokers started (devbroker: kfake, one process per cell)")
	var sup []*supervised
	for i, c := range demoCells {
		db := "cell_" + sanitize(c.name)
		if err := pg.EnsureDB(db); err != nil {
			return err
		}
		st.Cells = append(st.Cells, cellSpec{
			Name: c.name, Jurisdiction: c.jur, API: fmt.Sprintf("http://127.0.0.1:%d", ports["cell "+c.name]),
			Database: pg.DSN(db), Redis: st.Redis, Kafka: fmt.Sprintf("127.0.0.1:%d", ports["kafka "+c.name]),
			Log: filepath.Join(logDir, c.name+".log"), LMTP: fmt.Sprintf("127.0.0.1:%d", ports["lmtp "+c.name]),
			IMAP:   fmt.Sprintf("127.0.0.1:%d", ports["imap "+c.name]),
			Worker: fmt.Sprintf("http://127.0.0.1:%d", ports["worker "+c.name]), WorkerLog: filepath.Join(logDir, c.name+"-worker.log"),
			BrokerLog: filepath.Join(logDir, c.name+"-broker.log"), brokerPort: ports["kafka "+c.name],
		})
		cs := &st.Cells[i]
		b, err := supervise(&sup, "broker "+c.name, cs.BrokerLog, &cs.BrokerPID, filepath.Join(*binDir, "devbroker"),
			"-port", strconv.Itoa(cs.brokerPort), "-dir", filepath.Join(*dir, "kafka", c.name))
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() { b.p.stop(syscall.SIGTERM, 10*time.Second) })
	}
	for i, c := range st.Cells {
		if err := waitTCP(ctx, sup[i].p, c.Kafka); err != nil {
			return err
		}
	}
	done()

	done = step("control plane started")
	cp, err := start("controlplaned", filepath.Join(logDir, "controlplane.log"), nil, filepath.Join(*binDir, "controlplaned"),
		"-listen", fmt.Sprintf("127.0.0.1:%d", ports["control plane"]), "-etcd", st.Etcd,
		"-admin-token", "@"+secrets.adminFile, "-agent-token", "@"+secrets.agentFile)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { cp.stop(syscall.SIGTERM, 10*time.Second) })
	if err := waitHTTP(ctx, cp, st.Controlplane+"/readyz"); err != nil {
		return err
	}
	done()

	admin := controlplanev1connect.NewControlPlaneServiceClient(http.DefaultClient, st.Controlplane)
	auth := func(r connect.AnyRequest) { r.Header().Set("Authorization", "Bearer "+secrets.Admin) }
	for _, c := range st.Cells {
		req := connect.NewRequest(&pb.RegisterCellRequest{Name: c.Name, Jurisdiction: c.Jurisdiction, ApiUrl: c.API, LmtpAddr: c.LMTP, ImapAddr: c.IMAP})
		auth(req)
		if _, err := admin.RegisterCell(ctx, req); err != nil {
			return fmt.Errorf("register cell %s: %w", c.Name, err)
		}
	}

	done = step("cells started (API and LMTP, and a pipeline worker each)")
	var fronts, workers []*supervised
	for i := range st.Cells {
		c := &st.Cells[i]
		dbFile := filepath.Join(*dir, "cells", c.Name+".database")
		if err := os.MkdirAll(filepath.Dir(dbFile), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dbFile, []byte(c.Database), 0o600); err != nil {
			return err
		}
		common := []string{"-name", c.Name, "-etcd", st.Etcd, "-agent-token", "@" + secrets.agentFile,
			"-operator-token", "@" + secrets.adminFile, "-database", "@" + dbFile, "-redis", c.Redis,
			"-blob-dir", filepath.Join(*dir, "cells", c.Name, "blobs"), "-kafka", c.Kafka, "-dns", st.DNS, "-clamd", st.Clamd,
			"-outbound-port", strconv.Itoa(ports["remote sink"])}
		front, err := supervise(&sup, c.Name, c.Log, &c.PID, filepath.Join(*binDir, "celld"), append([]string{
			"-role", "front", "-listen", c.API[len("http://"):], "-lmtp", c.LMTP, "-imap", c.IMAP,
			"-data-dir", filepath.Join(*dir, "cells", c.Name)}, common...)...)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() { front.p.stop(syscall.SIGTERM, 10*time.Second) })
		worker, err := supervise(&sup, c.Name+" worker", c.WorkerLog, &c.WorkerPID, filepath.Join(*binDir, "celld"), append([]string{
			"-role", "worker", "-listen", c.Worker[len("http://"):],
			"-data-dir", filepath.Join(*dir, "cells", c.Name+"-worker")}, common...)...)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() { worker.p.stop(syscall.SIGTERM, 10*time.Second) })
		fronts, workers = append(fronts, front), append(workers, worker)
	}
	for i, c := range st.Cells {
		if err := waitHTTP(ctx, fronts[i].p, c.API+"/readyz"); err != nil {
			return err
		}
		if err := waitHTTP(ctx, workers[i].p, c.Worker+"/readyz"); err != nil {
			return err
		}
	}
	done()

	if err := bootstrap(ctx, admin, auth); err != nil {
		return err
	}
	// Publish each cell's DKIM key of each demo domain in the stack's DNS,
	// as an operator would with mailctl domains dkim.
	for _, d := range demoDomains {
		for _, c := range st.Cells {
			if c.Jurisdiction != d.Jurisdiction {
				continue
			}
			rec, err := cli.FetchDKIM(ctx, c.API, d.Name, secrets.Admin)
			if err != nil {
				return fmt.Errorf("dkim key of %s at %s: %w", d.Name, c.Name, err)
			}
			if err := dns.Add(rec.Name + `. 300 IN TXT "` + rec.Txt + `"`); err != nil {
				return err
			}
		}
	}

	done = step("router started")
	st.Router.HTTP = fmt.Sprintf("127.0.0.1:%d", ports["router http"])
	st.Router.URL = "http://" + st.Router.HTTP
	st.Router.SMTP = fmt.Sprintf("127.0.0.1:%d", ports["router smtp"])
	st.Router.Submission = fmt.Sprintf("127.0.0.1:%d", ports["router submission"])
	st.Router.Submissions = fmt.Sprintf("127.0.0.1:%d", ports["router submissions"])
	st.Router.IMAP = fmt.Sprintf("127.0.0.1:%d", ports["router imap"])
	st.Router.IMAPS = fmt.Sprintf("127.0.0.1:%d", ports["router imaps"])
	rt, err := start("routerd", filepath.Join(logDir, "router.log"), nil, filepath.Join(*binDir, "routerd"),
		"-http", st.Router.HTTP, "-smtp", st.Router.SMTP, "-etcd", st.Etcd, "-data-dir", filepath.Join(*dir, "router"),
		"-tls-cert", certFile, "-tls-key", keyFile, "-submission", st.Router.Submission, "-submissions", st.Router.Submissions,
		"-imap", st.Router.IMAP, "-imaps", st.Router.IMAPS,
		"-postmaster", "alice@demo-eu.example") // RFC 5321 §4.5.1: <postmaster> and postmaster@ demo domains reach a mailbox
	if err != nil {
		return err
	}
	st.Router.PID = rt.cmd.Process.Pid
	cleanups = append(cleanups, func() { rt.stop(syscall.SIGTERM, 10*time.Second) })
	if err := waitHTTP(ctx, rt, st.Router.URL+"/readyz"); err != nil {
		return err
	}
	done()

	done = step("demo accounts ready")
	if st.Accounts, err = demoAccounts(ctx, st.Router.URL, secrets); err != nil {
		return err
	}
	done()

	stackFile := filepath.Join(*dir, "stack.json")
	if err := writeStack(stackFile, st); err != nil {
		return err
	}
	printSummary(out, st, stackFile)

	// Watch the children until Ctrl-C: a child that dies is reported and
	// left dead (the others keep serving: that is the point of cells), or,
	// with -restart-crashed, a dead cell is started again like a supervisor
	// would (the crash tests use it).
	reported := map[*proc]bool{}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			for _, sv := range sup {
				if !sv.p.exited() || reported[sv.p] {
					continue
				}
				reported[sv.p] = true
				if !*restart {
					log.Warn("process exited; the rest of the stack keeps running", "process", sv.p.name, "err", sv.p.err)
					continue
				}
				old := sv.p
				if err := sv.restart(); err != nil {
					log.Error("restart failed", "process", old.name, "err", err)
					continue
				}
				log.Warn("process exited; started again", "process", old.name, "err", old.err, "pid", *sv.pid)
				if err := writeStack(stackFile, st); err != nil {
					log.Error("stack.json not updated", "err", err)
				}
			}
			for _, p := range []*proc{cp, rt} {
				if p.exited() && !reported[p] {
					reported[p] = true
					log.Warn("process exited; the rest of the stack keeps running", "process", p.name, "err", p.err)
				}
			}
		}
	}
}

// writeStack replaces stack.json atomically.
func writeStack(path string, st *Stack) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// bootstrap adds the demo domains and gives eu's upper half to eu-2, once.
func bootstrap(ctx context.Context, admin controlplanev1connect.ControlPlaneServiceClient, auth func(connect.AnyRequest)) error {
	for _, d := range demoDomains {
		mode := pb.PlacementMode_PLACEMENT_MODE_CONSUMER
		if d.Mode == "tenant" {
			mode = pb.PlacementMode_PLACEMENT_MODE_TENANT
		}
		req := connect.NewRequest(&pb.AddDomainRequest{Name: d.Name, Jurisdiction: d.Jurisdiction, Mode: mode})
		auth(req)
		if _, err := admin.AddDomain(ctx, req); err != nil {
			return fmt.Errorf("add domain %s: %w", d.Name, err)
		}
	}
	lr := connect.NewRequest(&pb.ListRangesRequest{Jurisdiction: "eu"})
	auth(lr)
	ranges, err := admin.ListRanges(ctx, lr)
	if err != nil {
		return fmt.Errorf("list ranges: %w", err)
	}
	if len(ranges.Msg.Ranges) > 1 {
		return nil // bootstrapped by an earlier run
	}
	sr := connect.NewRequest(&pb.SplitRangeRequest{Jurisdiction: "eu", At: placement.SpaceEnd / 2})
	auth(sr)
	if _, err := admin.SplitRange(ctx, sr); err != nil {
		return fmt.Errorf("split eu: %w", err)
	}
	ar := connect.NewRequest(&pb.AssignRangeRequest{Jurisdiction: "eu", Start: placement.SpaceEnd / 2, Cell: "eu-2"})
	auth(ar)
	if _, err := admin.AssignRange(ctx, ar); err != nil {
		return fmt.Errorf("assign eu upper half to eu-2: %w", err)
	}
	return nil
}

func waitHTTP(ctx context.Context, p *proc, url string) error {
	return waitFor(ctx, p, 60*time.Second, p.name, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

type secrets struct {
	Admin     string            `json:"admin_token"`
	Agent     string            `json:"agent_token"`
	Passwords map[string]string `json:"demo_passwords"`
	adminFile string
	agentFile string
}

// loadSecrets reads the stack's tokens, making them on the first run.
func loadSecrets(path string) (*secrets, error) {
	var s secrets
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if s.Passwords == nil {
		s.Passwords = map[string]string{}
	}
	changed := false
	for _, a := range demoUsers {
		if s.Passwords[a.address] == "" {
			s.Passwords[a.address] = token()[:16]
			changed = true
		}
	}
	if s.Admin == "" || s.Agent == "" || changed {
		if s.Admin == "" || s.Agent == "" {
			s.Admin, s.Agent = token(), token()
		}
		b, _ := json.MarshalIndent(&s, "", "  ")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	s.adminFile = filepath.Join(filepath.Dir(path), "admin.token")
	s.agentFile = filepath.Join(filepath.Dir(path), "agent.token")
	if err := os.WriteFile(s.adminFile, []byte(s.Admin), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.agentFile, []byte(s.Agent), 0o600); err != nil {
		return nil, err
	}
	return &s, nil
}

func token() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func accountLines(accts []account) string {
	var b strings.Builder
	for _, a := range accts {
		fmt.Fprintf(&b, "  %-24s cell %-5s (%s)\n", a.Address, a.Cell, a.Jurisdiction)
	}
	return b.String()
}

func printSummary(w io.Writer, st *Stack, stackFile string) {
	fmt.Fprintf(w, `
cellmail dev stack is up.

  control plane  %s          (admin token in %s)
  router (API)   %s
  router (SMTP)  %s   (MX of the demo domains; STARTTLS with %s)
  router (IMAP)  %s (STARTTLS)   %s (TLS)
  etcd           %s (embedded)
  postgres       %s   redis %s   dns %s   clamd %s
`, st.Controlplane, stackFile, st.Router.URL, st.Router.SMTP, st.TLSCert, st.Router.IMAP, st.Router.IMAPS, st.Etcd, st.Postgres, st.Redis, st.DNS, orNone(st.Clamd))
	for _, c := range st.Cells {
		fmt.Fprintf(w, "  cell %-9s %-4s %s  pid %-7s worker pid %-7s broker %s pid %s\n", c.Name, c.Jurisdiction, c.API,
			strconv.Itoa(c.PID), strconv.Itoa(c.WorkerPID), c.Kafka, strconv.Itoa(c.BrokerPID))
	}
	fmt.Fprintf(w, `
Demo domains: demo-eu.example (eu, consumer), acme-eu.example (eu, tenant), demo-us.example (us, consumer).

Try it (another terminal):
  export CELLMAIL_CONTROLPLANE=%s CELLMAIL_TOKEN=%s
  bin/mailctl route alice@demo-eu.example
  bin/mailctl route bob@demo-us.example
  bin/mailctl cells list
  curl -s -H 'Content-Type: application/json' -d '{"address":"alice@demo-eu.example"}' \
       %s/cellmail.cell.v1.CellService/WhoAmI
  swaks --to alice@demo-eu.example --server %s --tls --body 'hello'   # inbound mail through the router
  swaks --server %s --tls --auth PLAIN --auth-user alice@demo-eu.example --auth-password PASSWORD \
        --from alice@demo-eu.example --to bob@demo-us.example,ann@remote.example   # submission (587-style)
  ls %s    # what the test remote domain remote.example received (reject@remote.example bounces)
  python3 -c 'import imaplib,ssl; c=imaplib.IMAP4_SSL("127.0.0.1",%s,ssl_context=ssl._create_unverified_context()); c.login("alice@demo-eu.example","PASSWORD"); print(c.select("INBOX"))'
  kill -9 %d    # the cell eu-2: its users get "unavailable", everyone else is served

Logs in %s. Endpoints and credentials in %s. Ctrl-C stops everything.
`, st.Controlplane, st.AdminToken, st.Router.URL, st.Router.SMTP, st.Router.Submission, st.SinkDir, portOf(st.Router.IMAPS),
		st.Cells[1].PID, st.Logs, stackFile)
	fmt.Fprintf(w, "\nDemo accounts (passwords in %s):\n%s", stackFile, accountLines(st.Accounts))
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
