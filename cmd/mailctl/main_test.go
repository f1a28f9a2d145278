package main

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cellmail/cellmail/controlplane/cptest"
	pb "github.com/cellmail/cellmail/controlplane/gen/controlplanev1"
)

type result struct {
	code           int
	stdout, stderr string
}

// harness runs mailctl in-process against one control plane.
type harness struct {
	env map[string]string
}

func newHarness(t *testing.T) *harness {
	cp := cptest.StartControlPlane(t, nil)
	return &harness{env: map[string]string{
		"CELLMAIL_CONTROLPLANE": cp.URL,
		"CELLMAIL_TOKEN":        cptest.AdminToken,
	}}
}

func (h *harness) getenv(k string) string { return h.env[k] }

// run runs mailctl with stdin, which is never a terminal.
func (h *harness) run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return h.runCLI(t, &cli{stdin: strings.NewReader(stdin), getenv: h.getenv}, args...)
}

// runCLI runs mailctl as c, whose stdout and stderr it sets.
func (h *harness) runCLI(t *testing.T, c *cli, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	c.stdout, c.stderr = &out, &errb
	code := c.execute(t.Context(), args)
	t.Logf("mailctl %s → %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

// ok runs mailctl and fails unless it succeeds.
func (h *harness) ok(t *testing.T, args ...string) result {
	t.Helper()
	r := h.run(t, "", args...)
	if r.code != 0 {
		t.Fatalf("mailctl %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// fails runs mailctl and checks its exit code and that stderr has want.
func (h *harness) fails(t *testing.T, code int, want string, args ...string) result {
	t.Helper()
	r := h.run(t, "", args...)
	if r.code != code || !strings.Contains(r.stderr, want) {
		t.Fatalf("mailctl %s: exit %d, stderr %q; want exit %d with %q", strings.Join(args, " "), r.code, r.stderr, code, want)
	}
	return r
}

// decode parses a JSON document printed with -o json.
func decode[M proto.Message](t *testing.T, r result, m M) M {
	t.Helper()
	if err := protojson.Unmarshal([]byte(r.stdout), m); err != nil {
		t.Fatalf("parse %q: %v", r.stdout, err)
	}
	return m
}

func (h *harness) cellState(t *testing.T, name string) pb.CellState {
	t.Helper()
	return decode(t, h.ok(t, "cells", "get", name, "-o", "json"), &pb.GetCellResponse{}).GetCell().GetCell().GetState()
}

func TestMailctl(t *testing.T) {
	h := newHarness(t)

	t.Run("register cells", func(t *testing.T) {
		h.ok(t, "cells", "register", "eu-1", "--jurisdiction", "eu", "--api-url", "http://127.0.0.1:1")
		h.ok(t, "cells", "register", "eu-2", "--jurisdiction", "eu", "--api-url", "http://127.0.0.1:1",
			"--lmtp", "127.0.0.1:2", "--imap", "127.0.0.1:3", "--submission", "127.0.0.1:4")
		h.ok(t, "cells", "register", "us-1", "--jurisdiction", "us", "--api-url", "http://127.0.0.1:1")

		list := decode(t, h.ok(t, "cells", "list", "-o", "json"), &pb.ListCellsResponse{})
		got := map[string]*pb.CellStatus{}
		for _, c := range list.Cells {
			got[c.Cell.Name] = c
		}
		for name, want := range map[string]struct {
			jur    string
			ranges uint32
		}{"eu-1": {"eu", 1}, "eu-2": {"eu", 0}, "us-1": {"us", 1}} {
			c := got[name]
			if c == nil || c.Cell.Jurisdiction != want.jur || c.Ranges != want.ranges || c.Cell.State != pb.CellState_CELL_STATE_ACTIVE {
				t.Errorf("cell %s = %v; want jurisdiction %s, %d range(s), active", name, c, want.jur, want.ranges)
			}
		}
		if len(got) != 3 {
			t.Errorf("cells list has %d cells, want 3", len(got))
		}
		eu := h.ok(t, "cells", "list", "--jurisdiction", "eu").stdout
		if !strings.HasPrefix(eu, "NAME ") || !strings.Contains(eu, "eu-2") || strings.Contains(eu, "us-1") {
			t.Errorf("cells list --jurisdiction eu:\n%s", eu)
		}
		get := h.ok(t, "cells", "get", "eu-2").stdout
		if !strings.Contains(get, "127.0.0.1:3") || !strings.Contains(get, "active") {
			t.Errorf("cells get eu-2:\n%s", get)
		}
		h.fails(t, 1, "not_found", "cells", "get", "nope-1")
	})

	t.Run("domains", func(t *testing.T) {
		h.ok(t, "domains", "add", "acme.example", "--jurisdiction", "eu", "--mode", "tenant")
		h.ok(t, "domains", "add", "mail.example", "--jurisdiction", "eu", "--mode", "consumer")
		h.ok(t, "domains", "add", "post.example", "--jurisdiction", "us", "--mode", "consumer")
		add := decode(t, h.ok(t, "domains", "add", "bücher.example", "--jurisdiction", "eu", "--mode", "tenant", "-o", "json"), &pb.AddDomainResponse{})
		if add.Domain.GetName() != "xn--bcher-kva.example" {
			t.Errorf("bücher.example stored as %q, want xn--bcher-kva.example", add.Domain.GetName())
		}

		list := decode(t, h.ok(t, "domains", "list", "-o", "json"), &pb.ListDomainsResponse{})
		got := map[string]string{}
		for _, d := range list.Domains {
			got[d.Name] = d.Jurisdiction + " " + modeName(d.Mode)
		}
		want := map[string]string{
			"acme.example": "eu tenant", "mail.example": "eu consumer",
			"post.example": "us consumer", "xn--bcher-kva.example": "eu tenant",
		}
		if len(got) != len(want) {
			t.Errorf("domains list = %v, want %v", got, want)
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("domain %s = %q, want %q", name, got[name], w)
			}
		}
		us := decode(t, h.ok(t, "domains", "list", "--jurisdiction", "us", "-o", "json"), &pb.ListDomainsResponse{})
		if len(us.Domains) != 1 || us.Domains[0].Name != "post.example" {
			t.Errorf("domains list --jurisdiction us = %v", us.Domains)
		}

		h.fails(t, 2, "--mode", "domains", "add", "x.example", "--jurisdiction", "eu", "--mode", "family")
		h.fails(t, 2, "required flag", "domains", "add", "x.example", "--mode", "tenant")
		h.fails(t, 1, "invalid_argument", "domains", "add", "x.example", "--jurisdiction", "mars", "--mode", "tenant")
		h.fails(t, 1, "not_found", "domains", "remove", "nope.example", "--yes")
		h.fails(t, 1, "not_found", "domains", "remove", "nope.example", "--dry-run")
		r := h.ok(t, "domains", "remove", "acme.example", "--dry-run")
		if !strings.Contains(r.stdout, "acme.example") || !strings.Contains(r.stderr, "dry run") {
			t.Errorf("domains remove --dry-run: stdout %q, stderr %q", r.stdout, r.stderr)
		}
		if n := len(decode(t, h.ok(t, "domains", "list", "-o", "json"), &pb.ListDomainsResponse{}).Domains); n != 4 {
			t.Errorf("after a dry run, %d domains, want 4", n)
		}
	})

	t.Run("ranges", func(t *testing.T) {
		h.ok(t, "ranges", "split", "eu", "0x80000000000000")
		list := decode(t, h.ok(t, "ranges", "list", "--jurisdiction", "eu", "-o", "json"), &pb.ListRangesResponse{})
		const half, end = uint64(1) << 55, uint64(1) << 56
		if len(list.Ranges) != 2 ||
			list.Ranges[0].Start != 0 || list.Ranges[0].End != half || list.Ranges[0].Cell != "eu-1" ||
			list.Ranges[1].Start != half || list.Ranges[1].End != end || list.Ranges[1].Cell != "eu-1" {
			t.Fatalf("eu ranges after split = %v", list.Ranges)
		}
		table := h.ok(t, "ranges", "list", "--jurisdiction", "eu").stdout
		for _, want := range []string{"START", "0x00000000000000", "0x80000000000000", "0x100000000000000"} {
			if !strings.Contains(table, want) {
				t.Errorf("ranges table lacks %q:\n%s", want, table)
			}
		}
		if lines := strings.Count(table, "\n"); lines != 3 {
			t.Errorf("ranges table has %d lines, want a header and 2 ranges:\n%s", lines, table)
		}
		all := decode(t, h.ok(t, "ranges", "list", "-o", "json"), &pb.ListRangesResponse{})
		if len(all.Ranges) != 3 {
			t.Errorf("all ranges = %v, want 2 of eu and 1 of us", all.Ranges)
		}
		us := decode(t, h.ok(t, "ranges", "list", "--cell", "us-1", "-o", "json"), &pb.ListRangesResponse{})
		if len(us.Ranges) != 1 || us.Ranges[0].Jurisdiction != "us" {
			t.Errorf("ranges of us-1 = %v", us.Ranges)
		}

		// The same boundary again, in decimal.
		r := h.fails(t, 1, "failed_precondition", "ranges", "split", "eu", "36028797018963968")
		if !strings.Contains(r.stderr, "FAILED_PRECONDITION") {
			t.Errorf("stderr lacks the ErrorInfo reason: %q", r.stderr)
		}
		h.fails(t, 2, "0x-prefixed hex", "ranges", "split", "eu", "0xzz")
		h.fails(t, 2, "accepts 2 arg", "ranges", "split", "eu")

		r = h.ok(t, "ranges", "assign", "eu", "0x80000000000000", "eu-2", "--dry-run")
		if !strings.Contains(r.stdout, "eu-1") || !strings.Contains(r.stderr, "from cell eu-1 to cell eu-2") {
			t.Errorf("ranges assign --dry-run: stdout %q, stderr %q", r.stdout, r.stderr)
		}
		h.fails(t, 1, "not_found", "ranges", "assign", "eu", "0x1234", "eu-2", "--dry-run")
	})

	t.Run("route", func(t *testing.T) {
		for addr, jur := range map[string]string{
			"Alice+news@mail.example": "eu", "bob@acme.example": "eu", "carol@post.example": "us",
		} {
			rt := decode(t, h.ok(t, "route", addr, "-o", "json"), &pb.LookupResponse{})
			if rt.Jurisdiction != jur || !strings.HasPrefix(rt.Cell, jur+"-") || rt.Pinned || rt.CellApiUrl != "http://127.0.0.1:1" {
				t.Errorf("route %s = %v; want a cell of %s", addr, rt, jur)
			}
		}
		rt := decode(t, h.ok(t, "route", "Alice+news@mail.example", "-o", "json"), &pb.LookupResponse{})
		if rt.PlacementKey != "alice@mail.example" || rt.KeyspaceId>>56 != 1 {
			t.Errorf("route of a consumer address = %v; want key alice@mail.example in eu's space", rt)
		}
		table := h.ok(t, "route", "bob@acme.example").stdout
		for _, want := range []string{"PLACEMENT KEY", "acme.example", "KEYSPACE ID", "0x01", "CELL API URL"} {
			if !strings.Contains(table, want) {
				t.Errorf("route table lacks %q:\n%s", want, table)
			}
		}
		h.fails(t, 1, "not_found", "route", "dave@unknown.example")
		h.fails(t, 1, "invalid_argument", "route", "not-an-address")
	})

	t.Run("pins", func(t *testing.T) {
		// Pinning to the cell that owns the range already moves nothing, so
		// no cell is asked.
		h.ok(t, "pins", "set", "alice@mail.example", "eu-1", "--yes")
		pins := decode(t, h.ok(t, "pins", "list", "-o", "json"), &pb.ListPinsResponse{})
		if len(pins.Pins) != 1 || pins.Pins[0].Key != "alice@mail.example" || pins.Pins[0].Cell != "eu-1" {
			t.Fatalf("pins = %v", pins.Pins)
		}
		if rt := decode(t, h.ok(t, "route", "alice@mail.example", "-o", "json"), &pb.LookupResponse{}); !rt.Pinned {
			t.Errorf("route of a pinned address = %v", rt)
		}
		r := h.ok(t, "pins", "clear", "alice@mail.example", "--dry-run")
		if !strings.Contains(r.stdout, "PINNED") || !strings.Contains(r.stderr, "clear the pin of alice@mail.example") {
			t.Errorf("pins clear --dry-run: stdout %q, stderr %q", r.stdout, r.stderr)
		}
		h.fails(t, 2, "--yes", "pins", "clear", "alice@mail.example")
		h.ok(t, "pins", "clear", "alice@mail.example", "--yes")
		if pins := decode(t, h.ok(t, "pins", "list", "-o", "json"), &pb.ListPinsResponse{}); len(pins.Pins) != 0 {
			t.Errorf("pins after clear = %v", pins.Pins)
		}
		h.fails(t, 1, "not_found", "pins", "clear", "alice@mail.example", "--yes")

		r = h.ok(t, "pins", "set", "acme.example", "eu-2", "--dry-run")
		if !strings.Contains(r.stderr, "pin acme.example to cell eu-2") {
			t.Errorf("pins set DOMAIN --dry-run: stderr %q", r.stderr)
		}
		h.fails(t, 2, "consumer domain", "pins", "set", "mail.example", "eu-1", "--dry-run")
	})

	t.Run("wrong token", func(t *testing.T) {
		r := h.fails(t, 1, "unauthenticated", "cells", "list", "--token", "not-the-token")
		if !strings.Contains(r.stderr, "UNAUTHENTICATED") {
			t.Errorf("stderr lacks the reason: %q", r.stderr)
		}
	})

	t.Run("flags instead of environment", func(t *testing.T) {
		empty := &harness{env: map[string]string{}}
		r := empty.run(t, "", "cells", "list", "--controlplane", h.env["CELLMAIL_CONTROLPLANE"], "--token", cptest.AdminToken)
		if r.code != 0 || !strings.Contains(r.stdout, "eu-1") {
			t.Errorf("with flags only: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("drain", func(t *testing.T) {
		r := h.run(t, "y\n", "cells", "drain", "eu-2")
		if r.code != 2 || !strings.Contains(r.stderr, "not a terminal") || !strings.Contains(r.stderr, "--yes") {
			t.Errorf("drain without --yes on a pipe: exit %d, stderr %q", r.code, r.stderr)
		}
		if st := h.cellState(t, "eu-2"); st != pb.CellState_CELL_STATE_ACTIVE {
			t.Fatalf("after a refused drain, eu-2 is %v", st)
		}

		r = h.ok(t, "cells", "drain", "eu-2", "--dry-run", "-o", "json")
		if cur := decode(t, r, &pb.GetCellResponse{}); cur.GetCell().GetCell().GetName() != "eu-2" {
			t.Errorf("dry run printed %v", cur)
		}
		if !strings.Contains(r.stderr, "to draining") || !strings.Contains(r.stderr, "nothing changed") {
			t.Errorf("dry run stderr %q", r.stderr)
		}
		if st := h.cellState(t, "eu-2"); st != pb.CellState_CELL_STATE_ACTIVE {
			t.Fatalf("after a dry run, eu-2 is %v", st)
		}

		r = h.ok(t, "cells", "drain", "eu-2", "--yes", "-o", "json")
		if c := decode(t, r, &pb.SetCellStateResponse{}); c.GetCell().GetState() != pb.CellState_CELL_STATE_DRAINING {
			t.Errorf("drain answered %v", c)
		}
		if st := h.cellState(t, "eu-2"); st != pb.CellState_CELL_STATE_DRAINING {
			t.Errorf("after drain --yes, eu-2 is %v", st)
		}

		// A draining cell takes no new range: refused before any cell is asked.
		h.fails(t, 1, "failed_precondition", "ranges", "assign", "eu", "0x80000000000000", "eu-2", "--yes")
	})

	t.Run("confirmation prompt", func(t *testing.T) {
		for _, answer := range []string{"n\n", "", "maybe\n"} {
			r := h.runCLI(t, &cli{stdin: strings.NewReader(answer), getenv: h.getenv, interactive: true},
				"cells", "set-state", "eu-2", "readonly")
			if r.code != 1 || !strings.Contains(r.stderr, "Proceed? [y/N]") || !strings.Contains(r.stderr, "nothing changed") {
				t.Errorf("answer %q: exit %d, stderr %q", answer, r.code, r.stderr)
			}
			if st := h.cellState(t, "eu-2"); st != pb.CellState_CELL_STATE_DRAINING {
				t.Fatalf("after answer %q, eu-2 is %v", answer, st)
			}
		}
		r := h.runCLI(t, &cli{stdin: strings.NewReader("y\n"), getenv: h.getenv, interactive: true},
			"cells", "set-state", "eu-2", "readonly")
		if r.code != 0 || !strings.Contains(r.stderr, "set cell eu-2 (eu, draining") || !strings.Contains(r.stdout, "readonly") {
			t.Errorf("answer y: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if st := h.cellState(t, "eu-2"); st != pb.CellState_CELL_STATE_READONLY {
			t.Errorf("after answer y, eu-2 is %v", st)
		}
		h.fails(t, 2, "want active, draining or readonly", "cells", "set-state", "eu-2", "offline", "--yes")
	})
}

// TestUsageErrors checks mistakes caught before any call (there is no
// control plane to call).
func TestUsageErrors(t *testing.T) {
	env := map[string]string{"CELLMAIL_CONTROLPLANE": "http://127.0.0.1:1"}
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no token", env, []string{"cells", "list"}, "no operator token"},
		{"empty token from env", map[string]string{"CELLMAIL_TOKEN": " "}, []string{"cells", "list"}, "no operator token"},
		{"bad output", nil, []string{"cells", "list", "-o", "yaml", "--token", "t"}, "want table or json"},
		{"bad control plane", nil, []string{"cells", "list", "--token", "t", "--controlplane", "127.0.0.1:7400"}, "not an http(s) URL"},
		{"unknown command", nil, []string{"cels"}, "unknown command"},
		{"unknown subcommand", nil, []string{"cells", "lsit"}, "unknown command"},
		{"unknown flag", nil, []string{"cells", "list", "--jur", "eu"}, "unknown flag"},
		{"missing argument", nil, []string{"cells", "get", "--token", "t"}, "accepts 1 arg"},
		{"missing required flag", nil, []string{"cells", "register", "eu-1", "--jurisdiction", "eu", "--token", "t"}, "api-url"},
		{"bad state", nil, []string{"cells", "set-state", "eu-1", "gone", "--token", "t"}, "want active, draining or readonly"},
		{"bad start", nil, []string{"ranges", "assign", "eu", "010x", "eu-1", "--token", "t"}, "0x-prefixed hex"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(t.Context(), tt.args, strings.NewReader(""), &out, &errb, func(k string) string { return tt.env[k] })
			if code != 2 || !strings.Contains(errb.String(), tt.want) || !strings.Contains(errb.String(), "--help") {
				t.Errorf("exit %d, stderr %q; want exit 2 with %q", code, errb.String(), tt.want)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"36028797018963968", 1 << 55, true},
		{"0x80000000000000", 1 << 55, true},
		{"0X00ff", 255, true},
		{"010", 10, true}, // decimal, not octal
		{"0x", 0, false},
		{"-1", 0, false},
		{"0b101", 0, false},
		{"1e6", 0, false},
		{"0xffffffffffffffffff", 0, false},
		{"", 0, false},
	} {
		got, err := parseKey(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseKey(%q) = %d, %v; want %d, ok %t", tt.in, got, err, tt.want, tt.ok)
		}
	}
	if got := hexKey(1 << 55); got != "0x80000000000000" {
		t.Errorf("hexKey(2^55) = %q", got)
	}
}
