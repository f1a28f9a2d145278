package cell

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/blobstore/s3test"
)

func validConfig() Config {
	return Config{Name: "c1", Listen: "127.0.0.1:0", Etcd: []string{"http://127.0.0.1:2379"}, DataDir: "/tmp/x",
		AgentToken: strings.Repeat("a", 16), OperatorToken: strings.Repeat("o", 16), DatabaseURL: "postgres://x", RedisAddr: "127.0.0.1:6379"}
}

// Validate: a cell keeps its blobs in one place, and its S3 settings are
// checked before anything starts.
func TestConfigBlobStore(t *testing.T) {
	bucket := func() *BlobBucket {
		return &BlobBucket{Endpoint: "127.0.0.1:8333", Bucket: "mail", AccessKey: "k", SecretKey: "s"}
	}
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string // "" for valid
	}{
		{"files by default", func(*Config) {}, ""},
		{"a blob directory", func(c *Config) { c.BlobDir = "/srv/blobs" }, ""},
		{"S3", func(c *Config) { c.BlobS3 = bucket() }, ""},
		{"both", func(c *Config) { c.BlobS3, c.BlobDir = bucket(), "/srv/blobs" }, "both set"},
		{"S3 without bucket", func(c *Config) { c.BlobS3 = bucket(); c.BlobS3.Bucket = "" }, "bucket is required"},
		{"S3 without credentials", func(c *Config) { c.BlobS3 = bucket(); c.BlobS3.SecretKey = "" }, "secret key are required"},
		{"S3 endpoint as URL", func(c *Config) { c.BlobS3 = bucket(); c.BlobS3.Endpoint = "http://127.0.0.1:8333" }, "without scheme"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// openBlobs gives files under DataDir/blobs by default and the bucket
// when BlobS3 is set, and both work.
func TestOpenBlobs(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	roundTrip := func(t *testing.T, s blobstore.Store) {
		t.Helper()
		ref, _, err := s.Put(ctx, strings.NewReader("a large message"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.Open(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if got, err := io.ReadAll(b); err != nil || !bytes.Equal(got, []byte("a large message")) {
			t.Fatalf("read %q, %v", got, err)
		}
	}

	t.Run("files", func(t *testing.T) {
		cfg := validConfig()
		cfg.DataDir = t.TempDir()
		s, err := openBlobs(ctx, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.(*blobstore.FS); !ok {
			t.Fatalf("openBlobs = %T, want *blobstore.FS", s)
		}
		roundTrip(t, s)
		ref, _, err := s.Put(ctx, strings.NewReader("where"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "blobs", ref[:2], ref[2:4], ref)); err != nil {
			t.Errorf("blob not under DataDir/blobs: %v", err)
		}
	})

	t.Run("S3", func(t *testing.T) {
		srv := s3test.Start(t)
		cfg := validConfig()
		cfg.DataDir = t.TempDir()
		cfg.BlobS3 = &BlobBucket{Endpoint: srv.Endpoint, Region: "us-east-1", Bucket: srv.NewBucket(t), Prefix: "c1/",
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
		s, err := openBlobs(ctx, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.(*blobstore.S3); !ok {
			t.Fatalf("openBlobs = %T, want *blobstore.S3", s)
		}
		roundTrip(t, s)

		cfg.BlobS3.Bucket = "no-such-bucket"
		if _, err := openBlobs(ctx, cfg, log); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("openBlobs(missing bucket) = %v, want an error saying so", err)
		}
	})
}
