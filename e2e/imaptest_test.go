package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// imaptestDir is where Dovecot's imaptest lives, relative to the repository
// root: ../shared/tools/imaptest (its README tells how it was built).
const imaptestDir = "../shared/tools/imaptest"

// imaptest finds the imaptest wrapper beside the repository; the tests
// that need it fail (they do not skip) when it is absent, since `make test`
// is meant to run them everywhere.
func imaptest(t testing.TB) (bin, dir string) {
	t.Helper()
	root, err := filepath.Abs("..") // the tests run in router/
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(root, imaptestDir)
	bin = filepath.Join(dir, "imaptest")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("imaptest is needed at %s (Dovecot's imaptest, see its README there): %v", dir, err)
	}
	if _, err := os.Stat("/usr/lib/dovecot/libdovecot.so.0"); err != nil {
		t.Fatalf("imaptest needs libdovecot: run scripts/deps.sh (it installs dovecot-core): %v", err)
	}
	return bin, dir
}

// runImaptest runs imaptest against an implicit-TLS IMAP port with the
// given arguments and returns what it printed.
func runImaptest(tb testing.TB, ctx context.Context, bin, addr, user, pass string, args ...string) string {
	tb.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	all := append([]string{"host=" + host, "port=" + port, "user=" + user, "pass=" + pass, "ssl=any-cert"}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	tb.Logf("imaptest %s: %v, %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), exitText(err))
	if ctx.Err() != nil {
		tb.Fatalf("imaptest %s did not finish in time:\n%s", strings.Join(args, " "), out.String())
	}
	return out.String()
}

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

var groupsLine = regexp.MustCompile(`(?m)^(\d+) test groups: (\d+) failed, (\d+) skipped`)

// TestImaptestScripted runs every scripted test of Dovecot's imaptest
// (../shared/tools/imaptest/tests) through the router's IMAP port (TLS) to
// a cell; imaptest itself skips the tests needing capabilities the server
// does not offer (SORT, THREAD, CATENATE...). Every test it runs passes.
func TestImaptestScripted(t *testing.T) {
	bin, dir := imaptest(t)
	s := newStack(t)
	url := s.startRouter(nil)
	u := s.user(t, url, "imaptest@eu.example")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := runImaptest(t, ctx, bin, s.imaps, u.addr, "correct horse battery", "test="+filepath.Join(dir, "tests"))
	m := groupsLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("imaptest printed no summary:\n%s", out)
	}
	total, _ := strconv.Atoi(m[1])
	failed, _ := strconv.Atoi(m[2])
	skipped, _ := strconv.Atoi(m[3])
	t.Logf("imaptest scripted: %d test groups, %d passed, %d failed, %d skipped (capabilities not offered)",
		total, total-failed-skipped, failed, skipped)
	if failed != 0 {
		t.Errorf("imaptest: %d of %d test groups failed:\n%s", failed, total, out)
	}
}

// stressErrors are the lines of an imaptest stress run that report an
// error: its state tracking ("Keyword used without being in FLAGS",
// "EXPUNGE failed", "Unexpected BYE"...), which it prints as "Error: ...",
// and its own failures ("Fatal: ", "Panic: ").
var stressErrors = regexp.MustCompile(`(?m)^.*\b(Error|Fatal|Panic):.*$`)

// stressRun is what one imaptest stress run gave.
type stressRun struct {
	// commands is how many commands of each kind the run completed
	// (imaptest's "Totals:"), in imaptest's order.
	names  []string
	counts []int
	total  int
	errors []string
}

func (r stressRun) String() string {
	var b strings.Builder
	for i, n := range r.names {
		fmt.Fprintf(&b, "%s %d, ", n, r.counts[i])
	}
	fmt.Fprintf(&b, "%d commands, %d error lines", r.total, len(r.errors))
	return b.String()
}

// parseStress reads imaptest's stress output: the counts after "Totals:"
// (a line of command names, two of probabilities, then the counts) and the
// error lines.
func parseStress(out string) (stressRun, error) {
	r := stressRun{errors: stressErrors.FindAllString(out, -1)}
	_, totals, ok := strings.Cut(out, "\nTotals:\n")
	if !ok {
		return r, fmt.Errorf("no Totals in imaptest's output")
	}
	lines := strings.Split(totals, "\n")
	if len(lines) < 4 {
		return r, fmt.Errorf("short Totals: %q", totals)
	}
	r.names = strings.Fields(lines[0])
	for _, f := range strings.Fields(lines[3]) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return r, fmt.Errorf("totals %q: %w", lines[3], err)
		}
		r.counts = append(r.counts, n)
		r.total += n
	}
	if len(r.counts) != len(r.names) {
		return r, fmt.Errorf("totals %q do not match %q", lines[3], lines[0])
	}
	return r, nil
}

// stress runs imaptest's stress mode for secs seconds with 10 clients on
// one mailbox, APPENDing from its stress.mbox.
func stress(tb testing.TB, bin, dir, addr, user, pass string, secs int, extra ...string) stressRun {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+2*time.Minute)
	defer cancel()
	args := append([]string{"mbox=" + filepath.Join(dir, "stress.mbox"), fmt.Sprintf("secs=%d", secs), "clients=10"}, extra...)
	out := runImaptest(tb, ctx, bin, addr, user, pass, args...)
	r, err := parseStress(out)
	if err != nil {
		tb.Fatalf("imaptest stress: %v:\n%s", err, out[max(0, len(out)-4000):])
	}
	return r
}

// TestImaptestStress runs imaptest's stress mode for 60 s with 10 clients on
// one mailbox (APPEND, FETCH, STORE, SEARCH, EXPUNGE, COPY... chosen at
// random, with its own tracking of what the server must answer), once with
// logouts and once with a single session per client (logout=0): it must
// report no error.
func TestImaptestStress(t *testing.T) {
	bin, dir := imaptest(t)
	s := newStack(t)
	url := s.startRouter(nil)
	for _, run := range []struct {
		name, user string
		args       []string
	}{
		{"logout", "stress@eu.example", nil},
		{"nologout", "stress2@eu.example", []string{"logout=0"}},
	} {
		t.Run(run.name, func(t *testing.T) {
			u := s.user(t, url, run.user)
			r := stress(t, bin, dir, s.imaps, u.addr, "correct horse battery", 60, run.args...)
			t.Logf("imaptest stress (%s), 60 s, 10 clients: %s", run.name, r)
			if r.total == 0 {
				t.Errorf("imaptest stress (%s): no command completed", run.name)
			}
			if len(r.errors) > 0 {
				t.Errorf("imaptest stress (%s): %d error lines, by kind:\n%s", run.name, len(r.errors), errorKinds(r.errors))
			}
		})
	}
}

// errorKinds counts imaptest's error lines by kind (the line without its
// client number and the server's response), with one example of each.
func errorKinds(lines []string) string {
	client := regexp.MustCompile(`\[\d+\]`)
	count := map[string]int{}
	example := map[string]string{}
	var kinds []string
	for _, l := range lines {
		k := client.ReplaceAllString(l, "")
		if i := strings.Index(k, ": * "); i >= 0 {
			k = k[:i]
		}
		if i := regexp.MustCompile(`: \d+\.\d+ `).FindStringIndex(k); i != nil {
			k = k[:i[0]]
		}
		if count[k] == 0 {
			kinds = append(kinds, k)
			example[k] = l
		}
		count[k]++
	}
	var b strings.Builder
	for _, k := range kinds {
		ex := example[k]
		if len(ex) > 300 {
			ex = ex[:300] + "..."
		}
		fmt.Fprintf(&b, "%6d  %s\n        e.g. %s\n", count[k], strings.TrimSpace(k), strings.TrimSpace(ex))
	}
	return b.String()
}

// BenchmarkImaptestStress is imaptest's stress throughput through the
// router's IMAP port (TLS) to a cell: 10 clients for 60 s on one mailbox,
// each keeping its session (logout=0), reported as commands per second;
// BenchmarkImaptestStressDovecot is the same against Dovecot (maildir) on
// this machine.
func BenchmarkImaptestStress(b *testing.B) {
	bin, dir := imaptest(b)
	s := newStack(b)
	url := s.startRouter(nil)
	u := s.userTB(b, url, "stress@eu.example")
	benchStress(b, bin, dir, s.imaps, u.addr, "correct horse battery")
}

func BenchmarkImaptestStressDovecot(b *testing.B) {
	bin, dir := imaptest(b)
	addr, _ := startDovecot(b)
	benchStress(b, bin, dir, addr, "stress@example.test", "benchpass")
}

func benchStress(b *testing.B, bin, dir, addr, user, pass string) {
	const secs = 60
	var r stressRun
	for range b.N {
		r = stress(b, bin, dir, addr, user, pass, secs, "logout=0")
	}
	b.Logf("imaptest stress, %d s, 10 clients: %s", secs, r)
	b.ReportMetric(float64(r.total)/secs, "cmds/s")
	b.ReportMetric(float64(len(r.errors)), "error-lines")
	b.ReportMetric(0, "ns/op")
}
