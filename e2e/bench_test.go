package e2e_test

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	cellv1 "github.com/cellmail/cellmail/cell/gen/cellv1"
	"github.com/cellmail/cellmail/cell/gen/cellv1/cellv1connect"
)

// BenchmarkRouterOverhead compares a WhoAmI call made straight to the owning
// cell with the same call through the router (route lookup, buffering, one
// more HTTP/2 hop on loopback), and reports p50/p99 latency per call.
func BenchmarkRouterOverhead(b *testing.B) {
	s := newStack(b)
	routerURL := s.startRouter(nil)
	addr := "bench@us.example"
	for _, tc := range []struct{ name, url string }{{"direct", s.cells["us-1"]}, {"via-router", routerURL}} {
		b.Run(tc.name, func(b *testing.B) {
			hc := &http.Client{Transport: h2cTransport()}
			c := cellv1connect.NewCellServiceClient(hc, tc.url, connect.WithProtoJSON())
			req := func() error {
				_, err := c.WhoAmI(context.Background(), connect.NewRequest(&cellv1.WhoAmIRequest{Address: addr}))
				return err
			}
			if _, err := eventually(b, func() (struct{}, error) { return struct{}{}, req() }); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := req(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
