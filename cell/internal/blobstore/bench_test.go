package blobstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/blobstore/s3test"
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

// BenchmarkFS and BenchmarkS3 put and read back blobs of a message's size
// and of a large attachment's, from 8 goroutines: the files beside an S3
// server on this machine (weed, through its S3 gateway, filer and volume
// server).
func BenchmarkFS(b *testing.B) {
	f, err := blobstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	benchStore(b, f)
}

func BenchmarkS3(b *testing.B) {
	srv := s3test.Start(b)
	benchStore(b, newS3(b, srv, srv.NewBucket(b), func(c *blobstore.S3Config) { c.MaxSize = 0 }).S3)
}

func benchStore(b *testing.B, s blobstore.Store) {
	for _, size := range []int{10 << 10, 1 << 20} {
		name := fmt.Sprintf("%dKB", size>>10)
		if size >= 1<<20 {
			name = fmt.Sprintf("%dMB", size>>20)
		}
		var n atomic.Uint64
		body := bytes.Repeat([]byte("x"), size)
		var refs []string
		var mu sync.Mutex
		b.Run("Put/"+name, func(b *testing.B) {
			b.SetParallelism(4) // 8 goroutines on 2 cores
			b.SetBytes(int64(size))
			b.RunParallel(func(pb *testing.PB) {
				buf := bytes.Clone(body)
				for pb.Next() {
					binary.BigEndian.PutUint64(buf, n.Add(1))
					ref, _, err := s.Put(context.Background(), bytes.NewReader(buf))
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					if len(refs) < 1000 {
						refs = append(refs, ref)
					}
					mu.Unlock()
				}
			})
		})
		if len(refs) == 0 {
			continue
		}
		b.Run("Open/"+name, func(b *testing.B) {
			var i atomic.Uint64
			b.SetParallelism(4)
			b.SetBytes(int64(size))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					blob, err := s.Open(context.Background(), refs[int(i.Add(1))%len(refs)])
					if err != nil {
						b.Error(err)
						return
					}
					_, err = io.Copy(io.Discard, blob)
					blob.Close()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
