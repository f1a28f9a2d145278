// The dependency rule of DESIGN.md §7, and the package doc comments,
// checked from `go list` (after tailscale's tstest/deptest and
// pkgdoc_test.go).
package cellmail_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/cellmail/cellmail"

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
	GoFiles    []string
	// The imports of its tests, in the package and outside it.
	TestImports, XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func under(path, dir string) bool {
	r := rel(path)
	return r == dir || strings.HasPrefix(r, dir+"/")
}

// Layering: which parts of the repo a part may depend on (transitively).
func TestLayering(t *testing.T) {
	rules := []struct {
		from, to string
		why      string
	}{
		{"controlplane", "cell", "the control plane never imports cells"},
		{"controlplane", "router", "the control plane never imports the router"},
		{"cell", "router", "a cell never imports the router"},
		{"router", "cell/internal", "the router sees only a cell's generated API"},
		{"cell", "cmd", "only cmd wires services together"},
		{"router", "cmd", "only cmd wires services together"},
		{"controlplane", "cmd", "only cmd wires services together"},
	}
	for _, p := range listPackages(t) {
		for _, r := range rules {
			if !under(p.ImportPath, r.from) {
				continue
			}
			for _, d := range p.Deps {
				if strings.HasPrefix(d, module) && under(d, r.to) {
					t.Errorf("%s depends on %s: %s", rel(p.ImportPath), rel(d), r.why)
				}
			}
			for _, d := range append(append([]string{}, p.TestImports...), p.XTestImports...) {
				if strings.HasPrefix(d, module) && under(d, r.to) {
					t.Errorf("%s's tests import %s: %s (scenarios across services live in e2e/)", rel(p.ImportPath), rel(d), r.why)
				}
			}
		}
		// A service's root package (Config, Run) is wired only by cmd/.
		for _, root := range []string{"controlplane", "cell", "router"} {
			if under(p.ImportPath, "cmd") || rel(p.ImportPath) == root || strings.HasSuffix(rel(p.ImportPath), "test") {
				continue
			}
			for _, d := range p.Imports {
				if d == module+"/"+root {
					t.Errorf("%s imports the %s service root: only cmd/ wires services", rel(p.ImportPath), root)
				}
			}
		}
	}
}

// cellLayers orders a cell's internal packages (DESIGN.md §7: transports →
// delivery → adapters → domain types). A package, or its tests, may import
// packages of its own layer or below, never above; every package of
// cell/internal is in a layer (a new one must be placed here).
var cellLayers = []struct {
	name     string
	packages []string
}{
	{"domain", []string{"mail"}},
	{"adapter", []string{"mailstore", "mailstore/mailstoretest", "blobstore", "blobstore/blobstoretest", "blobstore/s3test",
		"cache", "cache/redistest", "queue", "search", "clamd", "msgauth", "spam", "message", "ownership", "auth"}},
	{"delivery", []string{"delivery", "dispatch", "outbound"}},
	{"transport", []string{"api", "smtpd", "imapd", "push"}},
}

// The order of a cell's layers holds for its packages and their tests: an
// adapter that imported the pipeline (as queue once did for its event
// types) fails here.
func TestCellLayers(t *testing.T) {
	layer := map[string]int{}
	for i, l := range cellLayers {
		for _, p := range l.packages {
			layer[module+"/cell/internal/"+p] = i
		}
	}
	for _, p := range listPackages(t) {
		if !under(p.ImportPath, "cell/internal") {
			continue
		}
		from, ok := layer[p.ImportPath]
		if !ok {
			t.Errorf("%s is in no layer of deps_test.go's cellLayers", rel(p.ImportPath))
			continue
		}
		imports := append(append(append([]string{}, p.Imports...), p.TestImports...), p.XTestImports...)
		for _, imp := range imports {
			to, ok := layer[imp]
			if ok && to > from {
				t.Errorf("%s (%s) imports %s (%s): a layer may import only its own and lower ones",
					rel(p.ImportPath), cellLayers[from].name, rel(imp), cellLayers[to].name)
			}
		}
	}
}

// Each driver is imported by exactly one adapter package (DESIGN.md §7).
func TestDriversHaveOneAdapter(t *testing.T) {
	drivers := map[string][]string{
		"go.etcd.io/etcd/client/v3":             {"controlplane/internal/store"},
		"go.etcd.io/etcd/server/v3":             {"controlplane/cptest"},
		"github.com/yugabyte/pgx/v5":            {"cell/internal/mailstore"},
		"github.com/redis/rueidis":              {"cell/internal/cache"},
		"github.com/twmb/franz-go/pkg/kgo":      {"cell/internal/queue"},
		"github.com/twmb/franz-go/pkg/kfake":    {"cmd/devbroker", "cell/internal/queue"},
		"github.com/meilisearch/meilisearch-go": {"cell/internal/search"},
		"github.com/minio/minio-go/v7":          {"cell/internal/blobstore"},
	}
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			for drv, allowed := range drivers {
				if imp != drv && !strings.HasPrefix(imp, drv+"/") {
					continue
				}
				ok := false
				for _, a := range allowed {
					ok = ok || under(p.ImportPath, a)
				}
				if !ok {
					t.Errorf("%s imports %s; only %v may", rel(p.ImportPath), imp, allowed)
				}
			}
		}
	}
}

// Every package says what it is for (generated code excepted).
func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.Contains(p.ImportPath, "/gen/") || len(p.GoFiles) == 0 {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", rel(p.ImportPath))
		}
	}
}
