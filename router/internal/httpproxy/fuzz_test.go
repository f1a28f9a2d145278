package httpproxy

import (
	"encoding/binary"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
)

const whoami = "/cellmail.cell.v1.CellService/WhoAmI"

func grpcFrame(b []byte) []byte {
	out := make([]byte, 5+len(b))
	binary.BigEndian.PutUint32(out[1:5], uint32(len(b)))
	copy(out[5:], b)
	return out
}

func TestAddressFromBody(t *testing.T) {
	pbBody, _ := proto.Marshal(&cellv1.WhoAmIRequest{Address: "a@b.example"})
	for _, tc := range []struct {
		name, procedure, ct string
		body                []byte
		want                string
		ok                  bool
	}{
		{"json", whoami, "application/json", []byte(`{"address":"a@b.example"}`), "a@b.example", true},
		{"json charset", whoami, "application/json; charset=utf-8", []byte(`{"address":"a@b.example"}`), "a@b.example", true},
		{"proto", whoami, "application/proto", pbBody, "a@b.example", true},
		{"grpc", whoami, "application/grpc", grpcFrame(pbBody), "a@b.example", true},
		{"grpc-web+proto", whoami, "application/grpc-web+proto", grpcFrame(pbBody), "a@b.example", true},
		{"grpc+json", whoami, "application/grpc+json", grpcFrame([]byte(`{"address":"a@b.example"}`)), "a@b.example", true},
		{"unknown fields ignored", whoami, "application/json", []byte(`{"address":"a@b.example","x":1}`), "a@b.example", true},
		{"truncated grpc", whoami, "application/grpc", grpcFrame(pbBody)[:7], "", false},
		{"compressed grpc", whoami, "application/grpc", append([]byte{1}, grpcFrame(pbBody)[1:]...), "", false},
		{"bad json", whoami, "application/json", []byte(`{"address":`), "", false},
		{"unknown service", "/x.Y/Z", "application/json", []byte(`{}`), "", false},
		{"unknown method", "/cellmail.cell.v1.CellService/Nope", "application/json", []byte(`{}`), "", false},
		{"no procedure", "/", "application/json", []byte(`{}`), "", false},
		{"form", whoami, "application/x-www-form-urlencoded", []byte(`address=a`), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := addressFromBody(tc.procedure, tc.ct, tc.body)
			if tc.ok && (err != nil || got != tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
			if !tc.ok && !errors.Is(err, errNoSubject) && !errors.Is(err, errNeedsLogin) {
				t.Fatalf("got %q, %v; want errNoSubject", got, err)
			}
		})
	}
}

func FuzzAddressFromBody(f *testing.F) {
	pbBody, _ := proto.Marshal(&cellv1.WhoAmIRequest{Address: "a@b.example"})
	f.Add(whoami, "application/json", []byte(`{"address":"a@b.example"}`))
	f.Add(whoami, "application/proto", pbBody)
	f.Add(whoami, "application/grpc", grpcFrame(pbBody))
	f.Add(whoami, "application/grpc-web+json", grpcFrame([]byte(`{"address":"x"}`)))
	f.Add("/cellmail.controlplane.v1.CellAgentService/CountPlaced", "application/json", []byte(`{"domain":"x"}`))
	f.Add("/", "", []byte{})
	f.Fuzz(func(t *testing.T, procedure, ct string, body []byte) {
		got, err := addressFromBody(procedure, ct, body)
		if err != nil && !errors.Is(err, errNoSubject) && !errors.Is(err, errNeedsLogin) {
			t.Fatalf("error outside errNoSubject: %v", err)
		}
		if err == nil && len(got) > len(body) {
			t.Fatalf("address %q longer than the body it came from", got)
		}
	})
}
