package spam

import (
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/cellmail/cellmail/cell/internal/msgauth"
)

const clean = "From: a@example.org\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nSubject: Lunch?\r\n\r\nHi.\r\n"

func TestScore(t *testing.T) {
	pass := msgauth.Verdict{SPF: authres.ResultPass, DMARC: authres.ResultPass}
	cases := []struct {
		name  string
		raw   string
		v     msgauth.Verdict
		spam  bool
		tests string
	}{
		{"clean and authenticated", clean, pass, false, ""},
		{"GTUBE", strings.Replace(clean, "Hi.", GTUBE, 1), pass, true, "GTUBE"},
		{"DMARC reject policy failed", clean, msgauth.Verdict{SPF: authres.ResultFail, DMARC: authres.ResultFail, Policy: dmarc.PolicyReject}, true, "SPF_FAIL,DMARC_REJECT"},
		{"DMARC p=none fails: not junk alone", clean, msgauth.Verdict{DMARC: authres.ResultFail, Policy: dmarc.PolicyNone}, false, "DMARC_NONE"},
		{"bare header and shouting", "From: a@b\r\nSubject: FREE MONEY NOW!!!\r\n\r\nx", msgauth.Verdict{SPF: authres.ResultSoftFail}, false, "SPF_SOFTFAIL,MISSING_MID,MISSING_DATE,SUBJ_ALL_CAPS"},
		{"everything wrong", "Subject: FREE MONEY NOW\r\n\r\nx", msgauth.Verdict{SPF: authres.ResultFail}, true, "SPF_FAIL,MISSING_MID,MISSING_DATE,MISSING_FROM,SUBJ_ALL_CAPS"},
	}
	for _, tc := range cases {
		r := Score([]byte(tc.raw), tc.v)
		if r.Spam() != tc.spam || strings.Join(r.Tests, ",") != tc.tests {
			t.Errorf("%s: score %.1f tests %v spam %v; want tests %q spam %v", tc.name, r.Score, r.Tests, r.Spam(), tc.tests, tc.spam)
		}
		f := r.Fields()
		if !strings.HasPrefix(f, "X-Spam-Status: ") || strings.Count(f, "\r\n") != 2 {
			t.Errorf("%s: fields %q", tc.name, f)
		}
	}
}
