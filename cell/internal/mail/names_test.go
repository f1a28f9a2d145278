package mail_test

import (
	"errors"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

func TestMailboxName(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" for refused
	}{
		{"Work", "Work"},
		{"Projects/2026/Q1", "Projects/2026/Q1"},
		{"caf\u00e9", "caf\u00e9"},
		{"cafe\u0301", "caf\u00e9"}, // NFD becomes NFC
		{"日本語/メール", "日本語/メール"},
		{"", ""},
		{"/lead", ""},
		{"trail/", ""},
		{"a//b", ""},
		{"INBOX", ""},
		{"inbox/sub", ""},
		{"tab\there", ""},
		{"del\x7f", ""},
		{"c1\u0085next", ""},      // NEL, a C1 control
		{"c1\u009b31m", ""},       // CSI
		{"evil\u202egpj.exe", ""}, // RIGHT-TO-LEFT OVERRIDE
		{"iso\u2067late", ""},
		{"mark\u200f", ""},
		{"alm\u061c", ""},
		{"line\u2028sep", ""},
		{"zero\u200bwidth", ""},  // ZERO WIDTH SPACE
		{"soft\u00adhyphen", ""}, // SOFT HYPHEN
		{"\ufeffbom", ""},
		{"non\uffffchar", ""},
		{"non\ufdd0char", ""},
		{" Work", ""},
		{"Work /sub", ""},
		{"a/ b", ""},
		{"\u0646\u0627\u200c\u0645\u0647", "\u0646\u0627\u200c\u0645\u0647"}, // ZWNJ in Persian stays
		{"in side", "in side"},
		{"star*", ""},
		{"per%cent", ""},
		{"bad\xffutf8", ""},
		{string(make([]byte, 201)), ""},
		{"a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", ""},
	} {
		got, err := mail.MailboxName(tc.in)
		if tc.want == "" {
			if err == nil || !errors.Is(err, mail.ErrInvalid) {
				t.Errorf("MailboxName(%q) = %q, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("MailboxName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
