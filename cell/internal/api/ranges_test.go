package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// limitRanges keeps at most MaxRanges non-overlapping ranges, and its own
// work stays linear in the header: a Range header as large as a server
// takes (1 MB) must not cost a quadratic overlap check.
func TestLimitRanges(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"bytes=0-9,20-29", "bytes=0-9,20-29"},
		{"bytes=0-9,5-14", ""},                                    // overlapping: served whole
		{"bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16", ""}, // over MaxRanges: served whole
		{"bytes=-0,0-9", "bytes=0-9"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Range", c.in)
		if !limitRanges(httptest.NewRecorder(), r, 1000) || r.Header.Get("Range") != c.want {
			t.Errorf("%s: Range %q, want %q", c.in, r.Header.Get("Range"), c.want)
		}
	}

	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Range", "bytes="+strings.Repeat("0-0,", 200_000)+"0-0")
	done := make(chan bool, 1)
	go func() { done <- limitRanges(httptest.NewRecorder(), r, 1000) }()
	select {
	case ok := <-done:
		if !ok || r.Header.Get("Range") != "" {
			t.Fatalf("200,001 ranges: %v, Range %.40q; want the whole content", ok, r.Header.Get("Range"))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("200,001 ranges: limitRanges still working after 5s (quadratic overlap check)")
	}
}
