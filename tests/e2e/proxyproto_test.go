package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/topology"
	"github.com/wsplice/wsplice/userspace/proxyproto"
)

// TestProxyProtocolL4: a backend given as HOST:PORT,proxy-protocol=v2
// receives, on an L4 listener's connection, a PROXY v2 header with the
// client's address and the address it connected to, before the client's
// first byte; then the stream, both ways.
func TestProxyProtocolL4(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		ppAddr := netip.AddrPortFrom(topology.Backend1Addr, 9300).String()
		ln, err := e.topo.Backend1.Listen("tcp", ppAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		got := make(chan proxyproto.Decoded, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(got)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var buf []byte
			b := make([]byte, 256)
			for {
				n, err := c.Read(b)
				buf = append(buf, b[:n]...)
				h, derr := proxyproto.Decode(buf)
				if derr == nil {
					got <- h
					c.Write(buf[h.Len:]) // the client's bytes after the header
					io.Copy(c, c)
					return
				}
				if err != nil || !errors.Is(derr, proxyproto.ErrShort) {
					close(got)
					return
				}
			}
		}()
		e.startDaemonBackends(t, dp, []string{ppAddr + ",proxy-protocol=v2"}, "--listen-tcp", tcpAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.topo.Client.DialContext(ctx, "tcp", tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "hello through L4"); err != nil {
			t.Fatal(err)
		}
		h, ok := <-got
		if !ok {
			t.Fatal("backend got no valid PROXY v2 header")
		}
		if h.Src != c.LocalAddr().(*net.TCPAddr).AddrPort() || h.Dst.String() != tcpAddr || h.Local {
			t.Errorf("PROXY header src %v dst %v; the client is %v connected to %s", h.Src, h.Dst, c.LocalAddr(), tcpAddr)
		}
		b := make([]byte, len("hello through L4"))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello through L4" {
			t.Fatalf("echo %q, %v", b, err)
		}
		io.WriteString(c, "second")
		b = b[:6]
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "second" {
			t.Fatalf("echo %q, %v", b, err)
		}
	})
}
