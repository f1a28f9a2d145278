// Command devbroker runs a Kafka-protocol broker (franz-go's kfake) as its
// own process, with its data directory and synchronous writes, for the dev
// stack and the crash tests: Redpanda is what production runs, and it
// cannot run on these machines. Being a process of its own, it can be
// killed with SIGKILL and started again on the same data.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

// topics are the cell's topics (cell/internal/queue.Topics).
var topics = []string{"inbound", "outbound", "changes", "errors"}

func main() {
	fs := flag.NewFlagSet("devbroker", flag.ExitOnError)
	port := fs.Int("port", 0, "TCP port on 127.0.0.1")
	dir := fs.String("dir", "", "data directory (kept across restarts)")
	partitions := fs.Int("partitions", 4, "partitions per topic")
	_ = fs.Parse(os.Args[1:])
	if *port == 0 || *dir == "" {
		fmt.Fprintln(os.Stderr, "devbroker: -port and -dir are required")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "devbroker:", err)
		os.Exit(1)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(*port), kfake.DataDir(*dir), kfake.SyncWrites(),
		kfake.SeedTopics(int32(*partitions), topics...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "devbroker:", err)
		os.Exit(1)
	}
	fmt.Println("devbroker listening on", c.ListenAddrs()[0])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	c.Close()
}
