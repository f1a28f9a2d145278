// Package spam scores an inbound message and says whether it goes to Junk.
// The score adds up named tests, SpamAssassin-style, from the message's
// authentication verdicts (SPF, DKIM, DMARC and the sender domain's DMARC
// policy) and from its header. GTUBE, the standard spam test string,
// always scores as spam. The result is written as X-Spam-Status and
// X-Spam-Score fields, so clients and filters can see why.
package spam

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/cellmail/cellmail/cell/internal/msgauth"
)

// Threshold is the score from which a message is filed into Junk.
const Threshold = 5.0

// GTUBE is the Generic Test for Unsolicited Bulk Email.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// Result is a message's score and the tests that made it.
type Result struct {
	Score float64
	Tests []string
}

// Spam reports whether the score reaches the threshold.
func (r Result) Spam() bool { return r.Score >= Threshold }

// Fields renders the X-Spam-Status and X-Spam-Score fields, CRLF-terminated.
func (r Result) Fields() string {
	yes := "No"
	if r.Spam() {
		yes = "Yes"
	}
	tests := strings.Join(r.Tests, ",")
	if tests == "" {
		tests = "none"
	}
	return fmt.Sprintf("X-Spam-Status: %s, score=%.1f required=%.1f tests=%s\r\nX-Spam-Score: %.1f\r\n",
		yes, r.Score, Threshold, tests, r.Score)
}

// maxScan bounds how much of a message is searched for GTUBE.
const maxScan = 1 << 20

// Score scores raw (the message as received) with its verdict.
func Score(raw []byte, v msgauth.Verdict) Result {
	var r Result
	add := func(name string, s float64) {
		r.Score += s
		r.Tests = append(r.Tests, name)
	}
	if bytes.Contains(raw[:min(len(raw), maxScan)], []byte(GTUBE)) {
		add("GTUBE", 1000)
	}
	switch v.SPF {
	case authres.ResultFail:
		add("SPF_FAIL", 3)
	case authres.ResultSoftFail:
		add("SPF_SOFTFAIL", 1.5)
	}
	if slices.ContainsFunc(v.DKIM, func(d msgauth.DKIMVerdict) bool { return d.Result == authres.ResultFail }) {
		add("DKIM_INVALID", 1.5)
	}
	if v.DMARC == authres.ResultFail {
		switch v.Policy {
		case dmarc.PolicyReject:
			add("DMARC_REJECT", 10)
		case dmarc.PolicyQuarantine:
			add("DMARC_QUARANTINE", 6)
		default:
			add("DMARC_NONE", 1)
		}
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		add("HEADER_MALFORMED", 2)
		return r
	}
	if !h.Has("Message-Id") {
		add("MISSING_MID", 1)
	}
	if !h.Has("Date") {
		add("MISSING_DATE", 1)
	}
	if !h.Has("From") {
		add("MISSING_FROM", 2)
	}
	if shouting(h.Get("Subject")) {
		add("SUBJ_ALL_CAPS", 1)
	}
	return r
}

// shouting: a subject of at least 10 letters, all upper case.
func shouting(s string) bool {
	letters := 0
	for _, c := range s {
		if unicode.IsLower(c) {
			return false
		}
		if unicode.IsUpper(c) {
			letters++
		}
	}
	return letters >= 10
}
