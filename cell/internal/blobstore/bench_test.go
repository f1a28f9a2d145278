package blobstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
)

// BenchmarkFSPut puts distinct 10 KB blobs from 8 goroutines, as the
// delivery pipeline does: every Put durable when it returns.
func BenchmarkFSPut(b *testing.B) {
	f, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Uint64
	body := bytes.Repeat([]byte("x"), 10<<10)
	b.SetParallelism(4) // 8 goroutines on 2 cores
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, len(body))
		copy(buf, body)
		for pb.Next() {
			binary.BigEndian.PutUint64(buf, n.Add(1))
			if _, _, err := f.Put(context.Background(), bytes.NewReader(buf)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
