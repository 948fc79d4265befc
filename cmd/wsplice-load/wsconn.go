package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// A hand-rolled client rather than gorilla/websocket: the load generator
// shares two vCPUs with the proxy under test and the backend, so every
// cycle it spends is a cycle the system under test does not get. This client
// does one write(2) per frame (header and masked payload in one buffer),
// reads echoes straight into a reused buffer and allocates nothing per
// message. It speaks only what the benchmark needs: binary frames, client
// masking, unfragmented server frames, a close frame ending the stream.

// errIntegrity marks an echo that differs from what was sent: the run fails.
var errIntegrity = errors.New("integrity error")

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

type wsConn struct {
	c    net.Conn // *net.TCPConn, or *tls.Conn with --tls
	r    *bufio.Reader
	mask [4]byte
	wbuf []byte
	hdr  [14]byte
}

// dialWS opens a TCP connection to addr, with tlsCfg a TLS session over it
// (wss://), and performs the opening handshake for path. It returns once a
// valid 101 has been read.
func dialWS(addr, path string, timeout time.Duration, tlsCfg *tls.Config) (*wsConn, error) {
	d := net.Dialer{Timeout: timeout}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := nc
	if tlsCfg != nil {
		tc := tls.Client(nc, tlsCfg)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		c = tc
	}
	ws, err := handshake(c, addr, path, timeout)
	if err != nil {
		c.Close()
		return nil, err
	}
	return ws, nil
}

func handshake(c net.Conn, host, path string, timeout time.Duration) (*wsConn, error) {
	var keyRaw [16]byte
	rand.Read(keyRaw[:])
	key := base64.StdEncoding.EncodeToString(keyRaw[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if timeout > 0 {
		c.SetDeadline(time.Now().Add(timeout))
		defer c.SetDeadline(time.Time{})
	}
	if _, err := io.WriteString(c, req); err != nil {
		return nil, fmt.Errorf("write handshake: %w", err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	tp := textproto.NewReader(r)
	status, err := tp.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("read handshake status: %w", err)
	}
	if !strings.HasPrefix(status, "HTTP/1.1 101") {
		return nil, fmt.Errorf("handshake: got %q, want 101", status)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("read handshake headers: %w", err)
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if got, want := h.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		return nil, fmt.Errorf("handshake: Sec-WebSocket-Accept %q, want %q", got, want)
	}
	ws := &wsConn{c: c, r: r}
	rand.Read(ws.mask[:])
	return ws, nil
}

// writeBinary sends p as one masked binary frame in a single write.
func (w *wsConn) writeBinary(p []byte) error {
	n := len(p)
	var hl int
	w.hdr[0] = 0x82 // FIN + binary
	switch {
	case n < 126:
		w.hdr[1] = 0x80 | byte(n)
		hl = 2
	case n < 1<<16:
		w.hdr[1] = 0x80 | 126
		binary.BigEndian.PutUint16(w.hdr[2:], uint16(n))
		hl = 4
	default:
		w.hdr[1] = 0x80 | 127
		binary.BigEndian.PutUint64(w.hdr[2:], uint64(n))
		hl = 10
	}
	copy(w.hdr[hl:], w.mask[:])
	hl += 4
	if cap(w.wbuf) < hl+n {
		w.wbuf = make([]byte, hl+n)
	}
	b := w.wbuf[:hl+n]
	copy(b, w.hdr[:hl])
	maskCopy(b[hl:], p, w.mask)
	_, err := w.c.Write(b)
	return err
}

// maskCopy writes p XOR the repeating mask into dst, eight bytes at a time.
func maskCopy(dst, p []byte, mask [4]byte) {
	m32 := binary.LittleEndian.Uint32(mask[:])
	m64 := uint64(m32) | uint64(m32)<<32
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(p[i:])^m64)
	}
	for ; i < len(p); i++ {
		dst[i] = p[i] ^ mask[i&3]
	}
}

// readMessage reads one binary message from the server into buf (grown if
// needed) and returns its payload, joining continuation frames: the echo
// server streams large messages as several frames. Ping and pong frames are
// skipped; a close frame returns io.EOF; a frame with an RSV bit set or a
// reserved opcode is an integrity error.
func (w *wsConn) readMessage(buf []byte) ([]byte, error) {
	n := 0
	started := false
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.r, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		if h[1]&0x80 != 0 {
			return nil, fmt.Errorf("%w: masked frame from server", errIntegrity)
		}
		// The handshake negotiates no extension, so an RSV bit (RSV1:
		// permessage-deflate) or a reserved opcode means the payload is
		// not what this client can read: a protocol error (RFC 6455 5.2),
		// not a frame to skip.
		if rsv := h[0] & 0x70; rsv != 0 {
			return nil, fmt.Errorf("%w: frame with RSV%d set", errIntegrity, bits.LeadingZeros8(rsv))
		}
		if op >= 0x3 && op <= 0x7 || op >= 0xb {
			return nil, fmt.Errorf("%w: reserved opcode %#x", errIntegrity, op)
		}
		size := uint64(h[1] & 0x7f)
		switch size {
		case 126:
			var e [2]byte
			if _, err := io.ReadFull(w.r, e[:]); err != nil {
				return nil, err
			}
			size = uint64(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			if _, err := io.ReadFull(w.r, e[:]); err != nil {
				return nil, err
			}
			size = binary.BigEndian.Uint64(e[:])
		}
		if uint64(n)+size > 64<<20 {
			return nil, fmt.Errorf("%w: message over 64 MiB", errIntegrity)
		}
		if op >= 0x8 { // control frame: never fragmented, at most 125 bytes
			var ctl [125]byte
			if size > 125 {
				return nil, fmt.Errorf("%w: control frame of %d bytes", errIntegrity, size)
			}
			if _, err := io.ReadFull(w.r, ctl[:size]); err != nil {
				return nil, err
			}
			if op == 0x8 {
				return nil, io.EOF
			}
			continue
		}
		switch {
		case !started && op != 0x2:
			return nil, fmt.Errorf("%w: message opcode %#x, want binary", errIntegrity, op)
		case started && op != 0x0:
			return nil, fmt.Errorf("%w: opcode %#x inside a fragmented message", errIntegrity, op)
		}
		started = true
		end := n + int(size)
		if cap(buf) < end {
			nb := make([]byte, end, max(end, 2*cap(buf)))
			copy(nb, buf[:n])
			buf = nb
		}
		buf = buf[:cap(buf)]
		if _, err := io.ReadFull(w.r, buf[n:end]); err != nil {
			return nil, err
		}
		n = end
		if fin {
			return buf[:n], nil
		}
	}
}

func (w *wsConn) Close() error { return w.c.Close() }
