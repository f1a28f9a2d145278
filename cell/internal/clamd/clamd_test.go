package clamd

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/cellmail/cellmail/internal/clamdtest"
)

func TestScanFindsEICARInAnAttachment(t *testing.T) {
	c := &Client{Addr: clamdtest.Start(t)}
	clean := "From: a@example.org\r\nSubject: hi\r\n\r\nnothing here\r\n"
	infected := "From: a@example.org\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Disposition: attachment; filename=eicar.com\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte(clamdtest.EICAR)) + "\r\n--b--\r\n"
	v, err := c.Scan(t.Context(), strings.NewReader(clean))
	if err != nil || v.Infected {
		t.Fatalf("clean message: %+v %v", v, err)
	}
	v, err = c.Scan(t.Context(), strings.NewReader(infected))
	if err != nil || !v.Infected || !strings.Contains(v.Signature, "Eicar") {
		t.Fatalf("infected message: %+v %v", v, err)
	}
	// More than one chunk.
	big := bytes.Repeat([]byte("a"), 3*chunk+17)
	if v, err := c.Scan(t.Context(), bytes.NewReader(big)); err != nil || v.Infected {
		t.Fatalf("large clean message: %+v %v", v, err)
	}
}

func TestUnreachableIsAnError(t *testing.T) {
	c := &Client{Addr: "127.0.0.1:1"}
	if _, err := c.Scan(t.Context(), strings.NewReader("x")); err == nil {
		t.Fatal("no error from an unreachable clamd")
	}
}

func TestParse(t *testing.T) {
	for reply, want := range map[string]Verdict{"stream: OK": {}, "stream: Win.Test FOUND": {Infected: true, Signature: "Win.Test"}} {
		if v, err := parse(reply); err != nil || v != want {
			t.Errorf("parse(%q) = %+v, %v", reply, v, err)
		}
	}
	for _, reply := range []string{"INSTREAM size limit exceeded. ERROR", "stream: x ERROR", ""} {
		if _, err := parse(reply); err == nil {
			t.Errorf("parse(%q) accepted", reply)
		}
	}
}

func TestScanFindsEICARInThePlainBody(t *testing.T) {
	c := &Client{Addr: clamdtest.Start(t)}
	v, err := c.Scan(t.Context(), strings.NewReader("Subject: virus\r\n\r\n"+clamdtest.EICAR+"\r\n"))
	if err != nil || !v.Infected {
		t.Fatalf("EICAR in a text body: %+v %v", v, err)
	}
}
