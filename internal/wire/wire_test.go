package wire

import "testing"

func TestCheck(t *testing.T) {
	ok := []string{"", "Subject: x\r\n\r\nbody\r\n", "a\r\n\r\n\r\n", "UTF-8 é\r\n"}
	bad := []string{"a\nb\r\n", "a\rb\r\n", "a\r\n\n", "x\r", "\n", "a\x00b\r\n", "a\r\r\n"}
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
		"":                "",
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
