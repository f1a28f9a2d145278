package imapproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

// parseAll reads commands from in until the input ends or a fatal error,
// recording how many "+" continuations were sent.
func parseAll(in string) (cmds []*command, bads int, conts int, fatal bool) {
	cr := &countingReader{r: strings.NewReader(in)}
	p := &parser{br: bufio.NewReaderSize(cr, maxLine+2), cont: func() error { conts++; return nil }}
	for i := 0; i < 1000; i++ {
		cmd, err := p.next()
		var be *badError
		switch {
		case errors.As(err, &be):
			bads++
			continue
		case errors.Is(err, errFatal):
			return cmds, bads, conts, true
		case err != nil:
			return cmds, bads, conts, false
		}
		cmds = append(cmds, cmd)
	}
	return
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestParser(t *testing.T) {
	cmds, bads, conts, fatal := parseAll("a1 LOGIN \"al\\\"ice\" {6}\r\nsecret\r\n" +
		"a2 authenticate PLAIN AGFsaWNlAHNlY3JldA==\r\n" +
		"a3 ID (\"name\" \"mutt\" \"version\" NIL)\r\n" +
		"a4 APPEND INBOX {20}\r\n" + // refused, no "+": the client sends nothing more
		"a5 LOGIN x {2000}\r\n" + // over maxLiteral: refused, no "+"
		"a6 NOOP\r\n")
	if fatal || bads != 2 || conts != 1 || len(cmds) != 4 {
		t.Fatalf("cmds %d bads %d conts %d fatal %v", len(cmds), bads, conts, fatal)
	}
	if cmds[0].name != "LOGIN" || !slices.Equal(cmds[0].args, []string{`al"ice`, "secret"}) {
		t.Errorf("LOGIN: %+v", cmds[0])
	}
	if cmds[1].name != "AUTHENTICATE" || len(cmds[1].args) != 2 {
		t.Errorf("AUTHENTICATE: %+v", cmds[1])
	}
	if cmds[2].name != "ID" || cmds[2].args[0] != "(" {
		t.Errorf("ID: %+v", cmds[2])
	}
	if cmds[3].tag != "a6" {
		t.Errorf("after the refused literals: %+v", cmds[3])
	}
	// A non-synchronizing literal within LITERAL-'s bound is skipped; over
	// it, the session ends.
	if cmds, bads, _, fatal := parseAll("a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n"); fatal || bads != 1 || len(cmds) != 1 || cmds[0].tag != "b" {
		t.Errorf("non-sync literal: %d cmds, %d bads, fatal %v", len(cmds), bads, fatal)
	}
	if _, _, _, fatal := parseAll("a APPEND INBOX {5000+}\r\n" + strings.Repeat("x", 5000)); !fatal {
		t.Error("a 5000-byte non-synchronizing literal did not end the session")
	}
	if _, _, _, fatal := parseAll("a NOOP " + strings.Repeat("x", maxLine) + "\r\n"); !fatal {
		t.Error("an overlong line did not end the session")
	}
	// An ID as long as RFC 2971 §3.3 allows (30 fields, values of 1024
	// octets) is read, not kept; longer ends the session.
	var id strings.Builder
	for i := range 30 {
		fmt.Fprintf(&id, " \"field%02d\" \"%s\"", i, strings.Repeat("v", 1024))
	}
	if cmds, bads, _, fatal := parseAll("a ID (" + id.String()[1:] + ")\r\nb NOOP\r\n"); fatal || bads != 0 || len(cmds) != 2 ||
		cmds[0].name != "ID" || cmds[1].tag != "b" {
		t.Errorf("long ID: %d cmds, %d bads, fatal %v", len(cmds), bads, fatal)
	}
	if _, _, _, fatal := parseAll("a ID (" + strings.Repeat(id.String(), 2) + ")\r\n"); !fatal {
		t.Error("an ID over maxID did not end the session")
	}
	if _, _, _, fatal := parseAll("a ID (" + id.String()[1:] + " {5+}\r\nb NOOP\r\n"); !fatal {
		t.Error("a long ID ending in a literal did not end the session")
	}
	if _, bads, _, _ := parseAll("a NOOP\x00\r\n\r\n+tag NOOP\r\n"); bads != 3 {
		t.Errorf("NUL, empty line and bad tag: %d bads, want 3", bads)
	}
}

// The pre-login parser never panics, never asks for a literal it would
// refuse, and never reads more than the input's framing allows: each
// command is bounded, whatever the bytes.
func FuzzPreLogin(f *testing.F) {
	for _, s := range []string{
		"a LOGIN alice secret\r\n",
		"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
		"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
		"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
		"a ID (\"name\" \"x\")\r\nb CAPABILITY\r\nc STARTTLS\r\n",
		"a APPEND INBOX {10}\r\n0123456789\r\n",
		"a APPEND INBOX {3+}\r\nabc {4+}\r\ndefg\r\n",
		"a LOGIN \"unterminated\r\n",
		"a LOGIN \"bad\\escape\" x\r\n",
		"* OK\r\n",
		"a LOGIN x {99999999999}\r\n",
		// issue 13: each is refused on its line, the next command read.
		"a SELECT \"INBOX\r\n",
		"a LOGIN \"alice\\\r\n",
		"a LOGIN {5000}\r\n",
		"a LOGIN x {5000+}\r\n" + strings.Repeat("x", 5000) + "\r\n",
		"a LOGIN &Jjo x\r\n",
		"a FETCH 4294967296 FLAGS\r\n",
		"a ID " + strings.Repeat("(", 200) + "\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		cr := &countingReader{r: strings.NewReader(in)}
		var refusedNeedsCont bool
		p := &parser{br: bufio.NewReaderSize(cr, maxLine+2)}
		p.cont = func() error { return nil }
		for i := 0; i < 200; i++ {
			cmd, err := p.next()
			var be *badError
			if errors.As(err, &be) {
				continue
			}
			if err != nil {
				break
			}
			if cmd.name != "LOGIN" {
				for _, a := range cmd.args {
					if len(a) > maxLine {
						t.Fatalf("%s argument of %d bytes", cmd.name, len(a))
					}
				}
			}
			total := 0
			for _, a := range cmd.args {
				total += len(a)
			}
			if total > maxCommand {
				refusedNeedsCont = true
			}
		}
		if refusedNeedsCont {
			t.Fatal("a command over maxCommand was accepted")
		}
		// Input with no literal is framed by lines: whatever a line
		// holds, it is answered on that line, and the command after it
		// is read (unless the session ended, BYE).
		if !strings.Contains(in, "{") {
			cmds, _, _, fatal := parseAll(in + "\r\nzz NOOP\r\n")
			if !fatal && (len(cmds) == 0 || cmds[len(cmds)-1].tag != "zz") {
				t.Fatalf("the command after the input was not read: %d commands", len(cmds))
			}
		}
	})
}
