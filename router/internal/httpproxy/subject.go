package httpproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/cellmail/cellmail/controlplane/routing"

	// The cell API's descriptors, to read the routing field of requests.
	_ "github.com/cellmail/cellmail/cell/gen/cellv1"
	_ "github.com/cellmail/cellmail/cell/gen/mailv1"
)

var (
	errNoSubject = errors.New("the call names no subject to route by")
	// errNeedsLogin: the method routes by the session's subject, and the
	// call has no session token.
	errNeedsLogin = errors.New("this call needs a session token: log in first")
)

// subjectFromToken reads the subject of a cellmail session token
// ("Bearer cm1.…", routing.ParseToken): calls made after login route by
// it. The router does not check the token — the owning cell does, after
// its fence — it only reads where to send the call.
func subjectFromToken(authorization string) (string, bool) {
	tok, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok {
		return "", false
	}
	sub, _, ok := routing.ParseToken(strings.TrimSpace(tok))
	return sub, ok
}

// addressFromBody reads the routing key of a call made before login: the
// top-level string field `address` of the request message, decoded with the
// method's descriptor. Connect unary (proto, JSON) and gRPC / gRPC-Web
// (one length-prefixed message) bodies are understood.
func addressFromBody(procedure, contentType string, body []byte) (string, error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return "", fmt.Errorf("%w: bad procedure %q", errNoSubject, procedure)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return "", fmt.Errorf("%w: unknown service %s", errNoSubject, svc)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return "", fmt.Errorf("%w: %s is not a service", errNoSubject, svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return "", fmt.Errorf("%w: unknown method %s", errNoSubject, procedure)
	}
	field := md.Input().Fields().ByName("address")
	if field == nil || field.Kind() != protoreflect.StringKind {
		return "", errNeedsLogin
	}
	msg := dynamicpb.NewMessage(md.Input())
	ct := strings.ToLower(strings.TrimSpace(strings.Split(contentType, ";")[0]))
	switch {
	case ct == "application/proto":
		err = proto.Unmarshal(body, msg)
	case ct == "application/json":
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(body, msg)
	case strings.HasPrefix(ct, "application/grpc"):
		if len(body) < 5 || body[0] != 0 {
			return "", fmt.Errorf("%w: unframed or compressed gRPC message", errNoSubject)
		}
		n := binary.BigEndian.Uint32(body[1:5])
		if uint64(n) > uint64(len(body)-5) {
			return "", fmt.Errorf("%w: truncated gRPC message", errNoSubject)
		}
		payload := body[5 : 5+n]
		if strings.HasSuffix(ct, "+json") {
			err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(payload, msg)
		} else {
			err = proto.Unmarshal(payload, msg)
		}
	default:
		return "", fmt.Errorf("%w: content type %q", errNoSubject, contentType)
	}
	if err != nil {
		return "", fmt.Errorf("%w: request does not decode: %v", errNoSubject, err)
	}
	return msg.Get(field).String(), nil
}
