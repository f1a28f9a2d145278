package wire

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	ok := []string{"Subject: x\r\n\r\nbody\r\n", "a\r\n\r\n\r\n", "UTF-8 é\r\n"}
	bad := []string{"", "a\nb\r\n", "a\rb\r\n", "a\r\n\n", "x\r", "\n", "a\x00b\r\n", "a\r\r\n"}
	for _, s := range ok {
		if err := Check([]byte(s)); err != nil {
			t.Errorf("Check(%q) = %v", s, err)
		}
	}
	for _, s := range bad {
		if err := Check([]byte(s)); err == nil || err.Code != 554 {
			t.Errorf("Check(%q) = %v, want 554", s, err)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"a\r\nb\r\n":      "a\r\nb\r\n",
		"a\nb\n":          "a\r\nb\r\n",
		"a\rb\r":          "a\r\nb\r\n",
		"a\r\r\nb":        "a\r\n\r\nb",
		"x\n.\ny\r\n":     "x\r\n.\r\ny\r\n",
		"no line ending ": "no line ending ",
	} {
		got := Normalize([]byte(in))
		if string(got) != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
		if Check(got) != nil {
			t.Errorf("Normalize(%q) = %q breaks the rule", in, got)
		}
	}
}

func TestCheckLines(t *testing.T) {
	long := strings.Repeat("a", MaxLine)
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{"", true},
		{"Subject: x\r\n\r\n" + long + "\r\n", true},
		{long + "\r\n" + long, true},                   // the last line need not end with CRLF
		{"Subject: x\r\n\r\n" + long + "a\r\n", false}, // 999 octets
		{"x\r\n" + long + "a", false},
		{long + "\n", true}, // the CR is not counted (a bare LF is Check's to refuse)
	} {
		if err := CheckLines([]byte(tc.body)); (err == nil) != tc.ok {
			t.Errorf("%d-octet body: CheckLines = %v, want ok %v", len(tc.body), err, tc.ok)
		} else if err != nil && (err.Code != 554 || err.EnhancedCode != [3]int{5, 6, 0}) {
			t.Errorf("reply %d %v, want 554 5.6.0", err.Code, err.EnhancedCode)
		}
	}
}
