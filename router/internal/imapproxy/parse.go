package imapproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Pre-login limits: a command is a short line, a literal is a user name or
// a password.
const (
	maxLine    = 4096
	maxLiteral = 1024
	maxCommand = 8192
	// maxNonSync is LITERAL-'s bound on a non-synchronizing literal
	// (RFC 7888 §5).
	maxNonSync = 4096
	// maxID bounds an ID command's line: RFC 2971 §3.3 lets a client send
	// 30 fields of up to 30 octets with values of up to 1024.
	maxID = 40 << 10
)

// command is one pre-login command: a tag, an upper-cased name and its
// arguments (atoms, quoted strings and literals, decoded; the parentheses
// of ID's list as "(" and ")").
type command struct {
	tag, name string
	args      []string
}

// badError refuses one command (tagged BAD); the session goes on.
type badError struct {
	tag, text string
}

func (e *badError) Error() string { return "bad command: " + e.text }

// errFatal ends the session (a BYE): framing that cannot be resynchronised.
var errFatal = errors.New("unrecoverable client input")

// parser reads pre-login commands (RFC 9051 §9 grammar, the subset that is
// valid before authentication). It reads a literal only for LOGIN, and
// only up to maxLiteral: any other synchronizing literal is refused before
// the client sends it ("+" is never sent), so no pre-login APPEND or other
// command can make the router read data it will refuse.
type parser struct {
	br *bufio.Reader
	// cont asks the client for a synchronizing literal ("+ Ready").
	cont func() error
}

func isAtomChar(c byte) bool {
	return c > 0x20 && c < 0x7f && !strings.ContainsRune(`(){ %*"\]`, rune(c))
}

// readLine reads one line without its CRLF; over maxLine is fatal (the
// rest of such a line cannot be told from the next command).
func (p *parser) readLine() (string, error) {
	line, err := p.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		if tag, ok := idPrefix(line); ok {
			return p.skipID(tag, len(line))
		}
	}
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
		return "", errFatal
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return "", errFatal
		}
		return "", err
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
	if strings.IndexByte(s, 0) >= 0 || strings.IndexByte(s, '\r') >= 0 {
		return "", &badError{text: "NUL or bare CR in command"}
	}
	return s, nil
}

// idPrefix says whether line starts with "<tag> ID (", and gives the tag.
func idPrefix(line []byte) (string, bool) {
	sp := strings.IndexByte(string(line), ' ')
	if sp <= 0 || len(line) < sp+5 || !strings.EqualFold(string(line[sp+1:sp+4]), "ID ") || line[sp+4] != '(' {
		return "", false
	}
	for _, c := range line[:sp] {
		if !isAtomChar(c) || c == '+' {
			return "", false
		}
	}
	return string(line[:sp]), true
}

// skipID reads the rest of an ID line longer than the buffer, up to maxID,
// without keeping it: the router answers ID with its own identification
// whatever the client's says (RFC 2971 §3.1). A line that ends in a
// literal cannot be told from the next command, and ends the session.
func (p *parser) skipID(tag string, n int) (string, error) {
	for {
		line, err := p.br.ReadSlice('\n')
		n += len(line)
		if n > maxID {
			return "", errFatal
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return "", err
		}
		if _, _, ok := trailingLiteral(strings.TrimRight(string(line), "\r\n")); ok {
			return "", errFatal
		}
		return tag + " ID NIL", nil
	}
}

// next reads one command.
func (p *parser) next() (*command, error) {
	line, err := p.readLine()
	if err != nil {
		return nil, err
	}
	cmd := &command{}
	i := 0
	for i < len(line) && isAtomChar(line[i]) && line[i] != '+' {
		i++
	}
	cmd.tag = line[:i]
	if cmd.tag == "" || i >= len(line) || line[i] != ' ' {
		return nil, &badError{tag: "*", text: "Expected a tag and a command"}
	}
	i++
	j := i
	for j < len(line) && isAtomChar(line[j]) {
		j++
	}
	cmd.name = strings.ToUpper(line[i:j])
	if cmd.name == "" {
		return nil, p.refuse(cmd, line[j:], "Expected a command name")
	}
	total := len(line)
	rest := line[j:]
	for {
		var lit int
		var sync bool
		var err error
		rest, lit, sync, err = cmd.tokens(rest)
		if err != nil {
			return nil, p.refuse(cmd, rest, err.Error())
		}
		if lit < 0 {
			return cmd, nil
		}
		// A literal ends the line; only LOGIN takes one before login.
		if cmd.name != "LOGIN" || lit > maxLiteral || total+lit > maxCommand {
			if !sync {
				if lit > maxNonSync {
					return nil, errFatal
				}
				if _, err := io.CopyN(io.Discard, p.br, int64(lit)); err != nil {
					return nil, err
				}
				return nil, p.skipRest(cmd, "Literal refused")
			}
			return nil, &badError{tag: cmd.tag, text: "Literal refused before login"}
		}
		if sync {
			if err := p.cont(); err != nil {
				return nil, err
			}
		}
		buf := make([]byte, lit)
		if _, err := io.ReadFull(p.br, buf); err != nil {
			return nil, err
		}
		cmd.args = append(cmd.args, string(buf))
		next, err := p.readLine()
		if err != nil {
			return nil, err
		}
		total += lit + len(next)
		if total > maxCommand {
			return nil, &badError{tag: cmd.tag, text: "Command too long"}
		}
		rest = next
	}
}

// refuse answers BAD for a malformed command; when the line ends with a
// non-synchronizing literal, that literal is skipped first (the client
// sends it without waiting).
func (p *parser) refuse(cmd *command, rest, text string) error {
	if n, sync, ok := trailingLiteral(rest); ok && !sync {
		if n > maxNonSync {
			return errFatal
		}
		if _, err := io.CopyN(io.Discard, p.br, int64(n)); err != nil {
			return err
		}
		return p.skipRest(cmd, text)
	}
	return &badError{tag: cmd.tag, text: text}
}

// skipRest reads the remainder of a refused command after a skipped
// non-synchronizing literal, following further non-synchronizing literals.
func (p *parser) skipRest(cmd *command, text string) error {
	for k := 0; k < 16; k++ {
		line, err := p.readLine()
		if err != nil {
			return err
		}
		n, sync, ok := trailingLiteral(line)
		if !ok {
			return &badError{tag: cmd.tag, text: text}
		}
		if sync || n > maxNonSync {
			return errFatal
		}
		if _, err := io.CopyN(io.Discard, p.br, int64(n)); err != nil {
			return err
		}
	}
	return errFatal
}

// trailingLiteral parses a "{n}" or "{n+}" at the end of s.
func trailingLiteral(s string) (n int, sync, ok bool) {
	if !strings.HasSuffix(s, "}") {
		return 0, false, false
	}
	open := strings.LastIndexByte(s, '{')
	if open < 0 {
		return 0, false, false
	}
	num := s[open+1 : len(s)-1]
	sync = true
	if strings.HasSuffix(num, "+") || strings.HasSuffix(num, "-") {
		num, sync = num[:len(num)-1], false
	}
	if num == "" || len(num) > 10 {
		return 0, false, false
	}
	v, err := strconv.Atoi(num)
	if err != nil || v < 0 {
		return 0, false, false
	}
	return v, sync, true
}

// tokens parses the arguments in s (each preceded by a space) into
// cmd.args. It returns lit >= 0 when s ends with a literal of that size.
func (cmd *command) tokens(s string) (rest string, lit int, sync bool, err error) {
	for len(s) > 0 {
		if s[0] == ')' {
			cmd.args = append(cmd.args, ")")
			s = s[1:]
			continue
		}
		if s[0] != ' ' {
			return s, -1, false, fmt.Errorf("Expected a space between arguments")
		}
		s = s[1:]
		for len(s) > 0 && s[0] == '(' {
			cmd.args = append(cmd.args, "(")
			s = s[1:]
		}
		if len(s) == 0 {
			return s, -1, false, fmt.Errorf("Expected an argument")
		}
		switch s[0] {
		case '"':
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
					if i >= len(s) || (s[i] != '\\' && s[i] != '"') {
						return s, -1, false, fmt.Errorf("Bad escape in quoted string")
					}
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return s, -1, false, fmt.Errorf("Unterminated quoted string")
			}
			cmd.args = append(cmd.args, b.String())
			s = s[i+1:]
		case '{':
			n, sy, ok := trailingLiteral(s)
			if !ok || strings.IndexByte(s, '}') != len(s)-1 {
				return s, -1, false, fmt.Errorf("Bad literal")
			}
			return "", n, sy, nil
		case ')':
			continue
		default:
			i := 0
			for i < len(s) && s[i] != ' ' && s[i] != ')' {
				c := s[i]
				if !isAtomChar(c) && c != ']' && c != '*' && c != '%' {
					return s, -1, false, fmt.Errorf("Bad character in argument")
				}
				i++
			}
			cmd.args = append(cmd.args, s[:i])
			s = s[i:]
		}
		if len(cmd.args) > 64 {
			return s, -1, false, fmt.Errorf("Too many arguments")
		}
	}
	return "", -1, false, nil
}
