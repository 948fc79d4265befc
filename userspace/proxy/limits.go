package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/limit"
	"github.com/wsplice/wsplice/userspace/proxyproto"
)

// maxRejecting bounds the refused HTTP clients answered at once (each
// answer lingers up to lingerTimeout); more are closed without one.
const maxRejecting = 256

// retryAfter is the Retry-After, in seconds, of a limit's 503.
const retryAfter = "1"

// retryLater is the extra field of every 503 that asks the client to
// come back (limits, the fd limit, a local shortage).
var retryLater = http1.Header{{Name: "Retry-After", Value: retryAfter}}

// conf returns the configuration in force (see Proxy.live).
func (p *Proxy) conf() *Config { return p.live.Load() }

// refuse ends a connection a limit refused, decided at accept before any
// byte is read: an L4 listener's is closed at once; an HTTP listener's
// client gets a 503 that says which limit, with Retry-After (after the
// TLS handshake on a TLS listener), from a goroutine of its own, unless
// too many are being answered already.
func (p *Proxy) refuse(c *net.TCPConn, kind listenerKind, listener string, reason limit.Reason) {
	p.metrics.accepted.WithLabelValues(listener).Inc()
	p.metrics.rejections.WithLabelValues(string(reason)).Inc()
	if p.log.Debug().Enabled() {
		p.log.Debug().Stringer("remote", c.RemoteAddr()).Str("listener", listener).Str("reason", string(reason)).Msg("connection refused by a limit")
	}
	if kind == kindTCP || kind == kindTCPTLS {
		_ = c.Close()
		return
	}
	select {
	case p.rejecting <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	cc := &clientConn{p: p, conn: dataplane.NewConn(c), kind: kind, refused: reason}
	p.mu.Lock()
	if p.shuttingDown.Load() {
		p.mu.Unlock()
		<-p.rejecting
		_ = c.Close()
		return
	}
	p.conns[cc] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	p.connections.Add(1)
	go cc.serve()
}

// answerRefused answers a refused client with its 503.
func (cc *clientConn) answerRefused() {
	defer func() { <-cc.p.rejecting }()
	_ = cc.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	cc.fail(503, cc.refused.Message(), retryLater)
}

// addrIP is the IP of a TCP address (the zero Addr if it has none).
func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// keepAlive sets TCP keepalive on c (a backend connection) as the live
// config says (accepted sockets inherit their listener's, see
// setListenersKeepAlive). The options are the socket's own, so they hold
// on the kernel data path too.
func (p *Proxy) keepAlive(c *net.TCPConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	off := p.conf().TCPKeepAliveOff
	_ = raw.Control(func(fd uintptr) { _ = setKeepAlive(int(fd), off) })
}

// setListenersKeepAlive sets the keepalive configuration on every
// listening socket. Accepted sockets inherit it from their listener (the
// kernel copies SO_KEEPALIVE and the TCP_KEEP* values into the child and
// arms its timer), so accepted connections need no setsockopt of their
// own: four system calls fewer per connection. A reload that changes it
// applies to connections accepted afterwards.
func (p *Proxy) setListenersKeepAlive(off bool) error {
	for _, ln := range p.lns {
		raw, err := ln.SyscallConn()
		if err != nil {
			return fmt.Errorf("keepalive on listener %s: %w", ln.Addr(), err)
		}
		var serr error
		err = raw.Control(func(fd uintptr) { serr = setKeepAlive(int(fd), off) })
		if err = errors.Join(err, serr); err != nil {
			return fmt.Errorf("keepalive on listener %s: %w", ln.Addr(), err)
		}
	}
	return nil
}

// setKeepAlive sets SO_KEEPALIVE and, when on, the probe timings.
func setKeepAlive(fd int, off bool) error {
	if off {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
	}
	return errors.Join(
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(KeepAliveIdle/time.Second)),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(KeepAliveInterval/time.Second)),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, KeepAliveCount))
}

// dial connects to a backend within the live DialTimeout, with keepalive.
func (p *Proxy) dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.conf().DialTimeout)
	defer cancel()
	// Not Dialer.DialTCP with a parsed netip.AddrPort, though it skips the
	// resolver's address lists (a few percent of a handshake's CPU): with
	// a zero local address it binds ":0" before connecting, and bind
	// picks a port without the connect-time reuse of TIME_WAIT ports, so
	// under a handshake load it failed with EADDRINUSE (go1.26, seen
	// here).
	c, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial backend %s: %w", addr, err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("dial backend %s: not a TCP connection", addr)
	}
	p.keepAlive(tc)
	return tc, nil
}

// writeProxyHeader writes the PROXY protocol v2 header for client cc to
// the backend, before any byte of the client's, on the L4 listeners, for a
// backend given with proxy-protocol=v2.
func (p *Proxy) writeProxyHeader(cc *clientConn, bconn *dataplane.Conn) error {
	src, _ := cc.conn.RemoteAddr().(*net.TCPAddr)
	dst, _ := cc.conn.LocalAddr().(*net.TCPAddr)
	if src == nil || dst == nil {
		return fmt.Errorf("proxy protocol: not a TCP connection")
	}
	h, err := proxyproto.Header(src.AddrPort(), dst.AddrPort())
	if err != nil {
		return err
	}
	_ = bconn.SetWriteDeadline(time.Now().Add(p.conf().DialTimeout))
	if _, err := bconn.Write(h); err != nil {
		return fmt.Errorf("write PROXY header: %w", err)
	}
	_ = bconn.SetWriteDeadline(time.Time{})
	return nil
}
