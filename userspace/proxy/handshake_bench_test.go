package proxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/wsplice/wsplice/userspace/http1"
)

// BenchmarkHandshake runs what the bench's handshake scenario does (dial,
// upgrade, one echoed frame, close) through the proxy on the userspace
// data path, against a minimal raw backend. Client and backend allocate
// too: the proxy's share of allocs/op is the difference from "direct".
func BenchmarkHandshake(b *testing.B) {
	backend := startRawBackend(b, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		if _, err := io.WriteString(c, switching(req)); err != nil {
			return
		}
		buf := make([]byte, 64)
		n, err := br.Read(buf)
		if err != nil {
			return
		}
		_, _ = c.Write(buf[:n])
		_, _ = br.Read(buf) // until the client closes
	})
	run := func(b *testing.B, addr string) {
		req := []byte(upgradeRequest())
		frame := []byte("0123456789abcdef0123456789abcdef")
		buf := make([]byte, len(frame))
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.DialTimeout("tcp", addr, testTimeout)
			if err != nil {
				b.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(testTimeout))
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			br := bufio.NewReaderSize(c, 512)
			resp, err := http1.ReadResponseHead(br, 0)
			if err != nil || resp.Status != 101 {
				b.Fatalf("handshake: %v %+v", err, resp)
			}
			if _, err := c.Write(frame); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(br, buf); err != nil {
				b.Fatal(err)
			}
			_ = c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, backend) })
	b.Run("proxy", func(b *testing.B) {
		p := startProxy(b, []string{backend}, nil)
		run(b, p.addr)
	})
	// 16 clients at once, as the bench's handshake scenario: the time
	// per handshake is then the CPU it takes (both CPUs busy), not its
	// latency.
	b.Run("proxy-parallel", func(b *testing.B) {
		p := startProxy(b, []string{backend}, nil)
		req := []byte(upgradeRequest())
		frame := []byte("0123456789abcdef0123456789abcdef")
		b.SetParallelism(8)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, len(frame))
			for pb.Next() {
				c, err := net.DialTimeout("tcp", p.addr, testTimeout)
				if err != nil {
					b.Error(err)
					return
				}
				_ = c.SetDeadline(time.Now().Add(testTimeout))
				br := bufio.NewReaderSize(c, 512)
				_, err = c.Write(req)
				if err == nil {
					_, err = http1.ReadResponseHead(br, 0)
				}
				if err == nil {
					_, err = c.Write(frame)
				}
				if err == nil {
					_, err = io.ReadFull(br, buf)
				}
				_ = c.Close()
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
