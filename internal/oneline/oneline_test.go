package oneline

import "testing"

func TestText(t *testing.T) {
	for _, tc := range []struct{ in, text, ascii string }{
		{"plain", "plain", "plain"},
		{"two\r\nlines", "two lines", "two lines"},
		{"  tabs\t\tand\x00nul  ", "tabs and nul", "tabs and nul"},
		{"c1\u0085nel \u2028sep", "c1 nel sep", "c1 nel sep"},
		{"caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c", "caf? ??"},
		{"bad\xffutf8", "bad utf8", "bad?utf8"},
		{"", "", ""},
	} {
		if got := Text(tc.in, 100); got != tc.text {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.text)
		}
		if got := ASCII(tc.in, 100); got != tc.ascii {
			t.Errorf("ASCII(%q) = %q, want %q", tc.in, got, tc.ascii)
		}
	}
	if got := Text("\u00e9\u00e9\u00e9", 5); got != "\u00e9\u00e9" {
		t.Errorf("cut mid-character: %q", got)
	}
	if got := ASCII("abcdef", 3); got != "abc" {
		t.Errorf("cut: %q", got)
	}
}
