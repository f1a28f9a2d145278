// Package cptest starts real control-plane parts for tests in any package:
// an embedded etcd member on loopback ports picked by the kernel, and a
// control-plane server on it.
package cptest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/cellmail/cellmail/controlplane"
)

// Etcd is a running embedded etcd member.
type Etcd struct {
	Endpoints []string
	e         *embed.Etcd
	once      sync.Once
}

// StartEtcd starts a single-member etcd in dir (a fresh temp dir when
// empty) and stops it when the test ends.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	e, err := NewEtcd(t.TempDir(), 0)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// NewEtcd starts a single-member etcd with data in dir, listening for
// clients on port (0: any free port). The caller closes it.
func NewEtcd(dir string, port int) (*Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "default"
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
	pu, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = "default=" + pu.String()
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embed etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd not ready after 30s")
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return &Etcd{Endpoints: []string{"http://" + e.Clients[0].Addr().String()}, e: e}, nil
}

// Close stops the member; closing twice is harmless.
func (e *Etcd) Close() { e.once.Do(e.e.Close) }

// Compact compacts etcd's history up to its current revision, so that
// watches from older revisions fail with a compaction.
func (e *Etcd) Compact(ctx context.Context) (int64, error) {
	rev := e.e.Server.KV().Rev()
	_, err := e.e.Server.Compact(ctx, &etcdserverpb.CompactionRequest{Revision: rev, Physical: true})
	return rev, err
}

// Tokens used by StartControlPlane.
const (
	AdminToken = "test-admin-token-0123456789"
	AgentToken = "test-agent-token-0123456789"
)

// ControlPlane is a running control-plane server.
type ControlPlane struct {
	URL  string
	Etcd *Etcd
}

// StartControlPlane starts etcd (unless given) and a control plane on it,
// stopped when the test ends.
func StartControlPlane(t testing.TB, etcd *Etcd) *ControlPlane {
	t.Helper()
	if etcd == nil {
		etcd = StartEtcd(t)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.Config{
			Listener: ln, Etcd: etcd.Endpoints, AdminToken: AdminToken, AgentToken: AgentToken,
			Logger: Logger(t),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	return &ControlPlane{URL: "http://" + ln.Addr().String(), Etcd: etcd}
}

// Logger logs to the test's output when -v is given, else nowhere.
func Logger(t testing.TB) *slog.Logger {
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}
