// Package s3test starts a real S3 server for tests: SeaweedFS's weed
// (`weed server -s3`, master, volume server, filer and S3 gateway in one
// process) on free loopback ports and a private data directory, stopped
// when the test ends.
//
// WEED_LOG names a file to copy all of weed's log to; a failed test logs
// its tail.
//
// The weed binary is built from the Go module proxy by scripts/weed.sh
// into .dev/tools/weed (make test does this first); WEED names another.
// A test that needs the server fails, not skips, when weed is missing: a
// fresh machine must build it, not silently test less.
//
// Besides S3, the server's filer is what tests use to do what S3 cannot:
// Age sets an object's modification time in the past, as blobstoretest's
// Ager must, through the filer's gRPC API (SeaweedFS's LastModified is the
// filer entry's mtime).
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Server is a running weed server.
type Server struct {
	// Endpoint is the S3 gateway's host:port (http).
	Endpoint string
	// AccessKey and SecretKey are the admin identity's credentials.
	AccessKey string
	SecretKey string
	// Client is an S3 client with those credentials.
	Client *minio.Client

	filerGRPC string
	filer     *grpc.ClientConn
	log       *bytes.Buffer
}

// startTimeout bounds how long weed may take to take a write (8 to 12 s
// on this project's machine: master election, volume heartbeat, the
// filer joining the master's lock ring).
const startTimeout = 90 * time.Second

// Weed returns the path of the weed binary: $WEED, or .dev/tools/weed at
// the root of the module the test runs in.
func Weed() (string, error) {
	if p := os.Getenv("WEED"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".dev", "tools", "weed")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("weed not built (%w): run scripts/weed.sh (make test does)", err)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory, and WEED not set")
		}
		dir = parent
	}
}

// Start starts a weed server for tb's duration. It fails tb if weed is
// missing or does not come up.
func Start(tb testing.TB) *Server {
	tb.Helper()
	weed, err := Weed()
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	dir := tb.TempDir()
	ports, err := freePorts(9)
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	s := &Server{
		Endpoint:  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		AccessKey: "cellmail" + rand.Text()[:8],
		SecretKey: rand.Text(),
		filerGRPC: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		log:       &bytes.Buffer{},
	}
	config, err := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name":        "cellmail",
		"credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	configPath := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(configPath, config, 0o600); err != nil {
		tb.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		tb.Fatal(err)
	}
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	cmd := exec.Command(weed, "server",
		"-dir="+data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port="+p(2), "-master.port.grpc="+p(3), "-master.telemetry=false",
		"-master.volumeSizeLimitMB=64", "-volume.max=0",
		"-volume.port="+p(4), "-volume.port.grpc="+p(5),
		"-filer", "-filer.port="+p(6), "-filer.port.grpc="+p(1),
		"-filer.localSocket="+filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port="+p(0), "-s3.port.grpc="+p(7), "-s3.config="+configPath,
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.localSocket="+filepath.Join(dir, "s3.sock"),
		"-metricsPort="+p(8),
	)
	cmd.Dir = dir
	var out io.Writer = s.log
	if p := os.Getenv("WEED_LOG"); p != "" { // all of weed's log, for debugging
		f, err := os.Create(p)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { f.Close() })
		out = io.MultiWriter(s.log, f)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("s3test: start weed: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		if s.filer != nil {
			s.filer.Close()
		}
		// Killed, not stopped: its data is thrown away, and a volume
		// server given SIGTERM waits 10 s before it exits. Its children,
		// if any, are in its process group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if tb.Failed() {
			tb.Logf("weed's log (last 4 KB):\n%s", tail(s.log.Bytes(), 4<<10))
		}
	})

	s.Client, err = minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), MaxRetries: 1,
	})
	if err != nil {
		tb.Fatal(err)
	}
	began := time.Now()
	// Ready when an object can be written: S3 answers before the filer has
	// registered with the master and the write locks work (about 8 s after
	// the start on this project's machine), and a write then waits.
	deadline := time.Now().Add(startTimeout)
	for {
		err = s.ready()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			tb.Fatalf("s3test: weed exited before serving (%v):\n%s", werr, tail(s.log.Bytes(), 4<<10))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("s3test: weed not serving S3 after %v: %v", startTimeout, err)
		}
	}
	tb.Logf("s3test: weed serving S3 at %s after %v", s.Endpoint, time.Since(began).Round(time.Millisecond))
	s.filer, err = grpc.NewClient(s.filerGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("s3test: filer client: %v", err)
	}
	return s
}

// ready writes and deletes an object in a bucket of its own.
func (s *Server) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const bucket = "s3test-ready"
	if err := s.Client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		if c := minio.ToErrorResponse(err).Code; c != "BucketAlreadyOwnedByYou" && c != "BucketAlreadyExists" {
			return err
		}
	}
	if _, err := s.Client.PutObject(ctx, bucket, "ready", strings.NewReader("ready"), 5, minio.PutObjectOptions{}); err != nil {
		return err
	}
	return s.Client.RemoveObject(ctx, bucket, "ready", minio.RemoveObjectOptions{})
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// freePorts finds n free loopback ports, holding each listener until all
// are found so that they differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (s *Server) NewBucket(tb testing.TB) string {
	tb.Helper()
	name := "t-" + strings.ToLower(rand.Text())[:20]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Client.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		tb.Fatalf("s3test: make bucket: %v", err)
	}
	return name
}

// Age sets the modification time of the object key in bucket to d before
// now, as S3 itself cannot: it rewrites the filer entry behind the object
// (its attributes' mtime, in seconds, as S3's Last-Modified is).
func (s *Server) Age(ctx context.Context, bucket, key string, d time.Duration) error {
	full := path.Join("/buckets", bucket, key)
	dir, name := path.Dir(full), path.Base(full)
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendString(req, dir)
	req = protowire.AppendTag(req, 2, protowire.BytesType)
	req = protowire.AppendString(req, name)
	var resp rawMessage
	if err := s.filer.Invoke(ctx, "/filer_pb.SeaweedFiler/LookupDirectoryEntry", rawMessage(req), &resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
		return fmt.Errorf("age %s: look up filer entry: %w", full, err)
	}
	entry, err := field(resp, 1)
	if err != nil || entry == nil {
		return fmt.Errorf("age %s: no entry in the filer's answer (%v)", full, err)
	}
	mtime := time.Now().Add(-d).Unix()
	entry, err = rewrite(entry, 4, func(attrs []byte) ([]byte, error) {
		// Drop mtime (2) and its nanoseconds (19), then set mtime.
		var out []byte
		for len(attrs) > 0 {
			num, _, n := protowire.ConsumeField(attrs)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			if num != 2 && num != 19 {
				out = append(out, attrs[:n]...)
			}
			attrs = attrs[n:]
		}
		out = protowire.AppendTag(out, 2, protowire.VarintType)
		return protowire.AppendVarint(out, uint64(mtime)), nil
	})
	if err != nil {
		return fmt.Errorf("age %s: %w", full, err)
	}
	req = req[:0]
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendString(req, dir)
	req = protowire.AppendTag(req, 2, protowire.BytesType)
	req = protowire.AppendBytes(req, entry)
	if err := s.filer.Invoke(ctx, "/filer_pb.SeaweedFiler/UpdateEntry", rawMessage(req), &resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
		return fmt.Errorf("age %s: update filer entry: %w", full, err)
	}
	return nil
}

// field returns the first length-delimited field num of msg (nil if
// absent).
func field(msg []byte, num protowire.Number) ([]byte, error) {
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		msg = msg[l:]
		vl := protowire.ConsumeFieldValue(n, typ, msg)
		if vl < 0 {
			return nil, protowire.ParseError(vl)
		}
		if n == num && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(msg)
			return v, nil
		}
		msg = msg[vl:]
	}
	return nil, nil
}

// rewrite replaces the length-delimited field num of msg (added if
// absent) by what fn makes of it.
func rewrite(msg []byte, num protowire.Number, fn func([]byte) ([]byte, error)) ([]byte, error) {
	var out, old []byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeField(msg)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		if n == num && typ == protowire.BytesType {
			_, _, tl := protowire.ConsumeTag(msg)
			old, _ = protowire.ConsumeBytes(msg[tl:])
		} else {
			out = append(out, msg[:l]...)
		}
		msg = msg[l:]
	}
	v, err := fn(old)
	if err != nil {
		return nil, err
	}
	out = protowire.AppendTag(out, num, protowire.BytesType)
	return protowire.AppendBytes(out, v), nil
}

// rawMessage is a protobuf message as bytes, for rawCodec.
type rawMessage []byte

// rawCodec sends and receives rawMessage as is: the filer's messages are
// built by hand, so that tests need not import SeaweedFS.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(rawMessage)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(m)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*m = data.Materialize()
	return nil
}
