package ktls

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// recordHeaderLen is the length of a TLS record header.
const recordHeaderLen = 5

// Conn is the TCP connection as a Go TLS server sees it during the
// handshake: reads never return a byte past the end of the current record,
// and records are counted both ways. After Passthrough it is a plain
// wrapper.
type Conn struct {
	*net.TCPConn
	passthrough atomic.Bool

	// Read side, used by the one goroutine reading through tls.Conn.
	rhdr    [recordHeaderLen]byte
	rhdrN   int
	rleft   int // body bytes left in the current record
	rinBody bool
	rx      atomic.Uint64 // complete records read

	// Write side, under wmu (tls.Conn serialises writes already).
	wmu     sync.Mutex
	whdr    [recordHeaderLen]byte
	whdrN   int
	wleft   int
	winBody bool
	tx      atomic.Uint64 // complete records written
}

// Read reads at most up to the end of the current record (or record
// header), so that bytes after it stay in the socket.
func (c *Conn) Read(p []byte) (int, error) {
	if c.passthrough.Load() || len(p) == 0 {
		return c.TCPConn.Read(p)
	}
	if !c.rinBody {
		n, err := c.TCPConn.Read(p[:min(len(p), recordHeaderLen-c.rhdrN)])
		copy(c.rhdr[c.rhdrN:], p[:n])
		c.rhdrN += n
		if c.rhdrN == recordHeaderLen {
			c.rhdrN = 0
			c.rleft = int(binary.BigEndian.Uint16(c.rhdr[3:]))
			c.rinBody = c.rleft > 0
			if !c.rinBody {
				c.rx.Add(1)
			}
		}
		return n, err
	}
	n, err := c.TCPConn.Read(p[:min(len(p), c.rleft)])
	c.rleft -= n
	if c.rleft == 0 {
		c.rinBody = false
		c.rx.Add(1)
	}
	return n, err
}

// Write writes p and counts the records it completes.
func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.wmu.Lock()
	for b := p[:n]; len(b) > 0; {
		if !c.winBody {
			k := copy(c.whdr[c.whdrN:], b)
			c.whdrN += k
			b = b[k:]
			if c.whdrN == recordHeaderLen {
				c.whdrN = 0
				c.wleft = int(binary.BigEndian.Uint16(c.whdr[3:]))
				c.winBody = c.wleft > 0
				if !c.winBody {
					c.tx.Add(1)
				}
			}
			continue
		}
		k := min(len(b), c.wleft)
		c.wleft -= k
		b = b[k:]
		if c.wleft == 0 {
			c.winBody = false
			c.tx.Add(1)
		}
	}
	c.wmu.Unlock()
	return n, err
}

// Records returns the number of complete records read and written.
func (c *Conn) Records() (read, written uint64) { return c.rx.Load(), c.tx.Load() }

// atBoundary reports whether both directions stand between records.
func (c *Conn) atBoundary() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return !c.rinBody && c.rhdrN == 0 && !c.winBody && c.whdrN == 0
}

// Session is one server-side TLS session prepared for kernel TLS.
type Session struct {
	// TLS is the Go session; it carries the bytes until Enable succeeds,
	// and for good if it does not.
	TLS  *tls.Conn
	Conn *Conn
	log  keyLog
	// Records read and written when the handshake ended: the application
	// traffic keys' sequence numbers count from there.
	rxMark, txMark uint64
}

// Server starts a server session over tc with a copy of cfg that logs this
// session's secrets and sends no session tickets.
func Server(tc *net.TCPConn, cfg *tls.Config) *Session {
	s := &Session{Conn: &Conn{TCPConn: tc}}
	cfg = cfg.Clone()
	cfg.KeyLogWriter = &s.log
	// With tickets on, Go sends NewSessionTicket under the application
	// keys in its first flight; the kernel's sequence numbers would be off.
	cfg.SessionTicketsDisabled = true
	s.TLS = tls.Server(s.Conn, cfg)
	return s
}

// Handshake runs the TLS handshake.
func (s *Session) Handshake(ctx context.Context) error {
	if err := s.TLS.HandshakeContext(ctx); err != nil {
		return err
	}
	// With TLS 1.3 and no tickets, Go has sent nothing and read nothing
	// under the application keys when the handshake returns: both
	// sequence numbers start here.
	s.rxMark, s.txMark = s.Conn.Records()
	return nil
}

// Passthrough stops the record-exact reads: the session stays in Go.
func (s *Session) Passthrough() { s.Conn.passthrough.Store(true) }

// ErrHalfInstalled means keys went in for one direction only: the socket
// is unusable and must be closed.
var ErrHalfInstalled = errors.New("kernel TLS keys installed for one direction only")

var (
	probeOnce sync.Once
	probed    map[string]bool
	probeErr  error
)

// Enable moves the session into the kernel and returns its cipher suite's
// name. On an error wrapping ErrUnsupported nothing changed on the socket
// that Go's session cares about: go on through s.TLS (after Passthrough).
// Any other error leaves the socket unusable.
func (s *Session) Enable() (string, error) {
	if err := Available(); err != nil {
		return "", err
	}
	probeOnce.Do(func() { probed, probeErr = Probe() })
	if probeErr != nil {
		return "", fmt.Errorf("%w: probe: %w", ErrUnsupported, probeErr)
	}
	st := s.TLS.ConnectionState()
	if !st.HandshakeComplete {
		return "", fmt.Errorf("%w: handshake not complete", ErrUnsupported)
	}
	if st.Version != tls.VersionTLS13 {
		return "", fmt.Errorf("%w: %s session (only TLS 1.3 keys are derived)", ErrUnsupported, tls.VersionName(st.Version))
	}
	su, ok := suiteByID(st.CipherSuite)
	if !ok || !probed[su.name] {
		return "", fmt.Errorf("%w: kernel lacks cipher %s", ErrUnsupported, tls.CipherSuiteName(st.CipherSuite))
	}
	clientSecret, serverSecret := s.log.secrets()
	if clientSecret == nil || serverSecret == nil {
		return "", fmt.Errorf("%w: traffic secrets not logged", ErrUnsupported)
	}
	if !s.Conn.atBoundary() {
		return "", fmt.Errorf("%w: stream not at a record boundary", ErrUnsupported)
	}
	rx, err := trafficKeys(su, clientSecret)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	tx, err := trafficKeys(su, serverSecret)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	r, w := s.Conn.Records()
	if err := install(s.Conn.TCPConn, su, rx, tx, r-s.rxMark, w-s.txMark); err != nil {
		return "", err
	}
	s.Passthrough()
	return su.name, nil
}

// cryptoInfo builds struct tls12_crypto_info_* of linux/tls.h for TLS 1.3.
// For AES-GCM the kernel splits the 12-byte IV into a 4-byte salt and an
// 8-byte "iv"; it XORs the record sequence number in as RFC 8446 §5.3 says.
func cryptoInfo(s suite, k directionKeys, seq uint64) []byte {
	b := make([]byte, 0, 64)
	b = binary.NativeEndian.AppendUint16(b, tls13Version)
	b = binary.NativeEndian.AppendUint16(b, s.cipher)
	switch s.cipher {
	case cipherChaCha20Poly1305:
		b = append(b, k.iv...) // iv[12], key[32], no salt
		b = append(b, k.key...)
	default:
		b = append(b, k.iv[4:12]...) // iv[8], key[16|32], salt[4]
		b = append(b, k.key...)
		b = append(b, k.iv[:4]...)
	}
	return binary.BigEndian.AppendUint64(b, seq) // rec_seq[8]
}

// install sets the TLS ULP and both directions' keys on tc.
func install(tc *net.TCPConn, s suite, rx, tx directionKeys, rxSeq, txSeq uint64) error {
	raw, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	var opErr error
	cerr := raw.Control(func(fd uintptr) {
		if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_ULP, "tls"); err != nil {
			opErr = fmt.Errorf("%w: set TCP_ULP tls: %w", ErrUnsupported, err)
			return
		}
		// With the ULP but no keys the socket still passes bytes as is,
		// so a failure here leaves Go's session working.
		if err := unix.SetsockoptString(int(fd), solTLS, tlsTX, string(cryptoInfo(s, tx, txSeq))); err != nil {
			opErr = fmt.Errorf("%w: set TLS_TX (%s): %w", ErrUnsupported, s.name, err)
			return
		}
		if err := unix.SetsockoptString(int(fd), solTLS, tlsRX, string(cryptoInfo(s, rx, rxSeq))); err != nil {
			opErr = fmt.Errorf("%w: set TLS_RX (%s): %w", ErrHalfInstalled, s.name, err)
		}
	})
	if cerr != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, cerr)
	}
	return opErr
}

// ReadRecord peeks at the record at the head of a kernel TLS socket's
// receive queue and returns its content type and plaintext. It does not
// wait. Used after a read failed on a record that is not application data.
func ReadRecord(tc *net.TCPConn) (typ uint8, body []byte, err error) {
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, 16<<10)
	oob := make([]byte, unix.CmsgSpace(1))
	var n, oobn int
	var rerr error
	if err := raw.Control(func(fd uintptr) {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}); err != nil {
		return 0, nil, err
	}
	if rerr != nil {
		return 0, nil, fmt.Errorf("recvmsg: %w", rerr)
	}
	typ = RecordApplicationData
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, nil, fmt.Errorf("parse control message: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level == solTLS && m.Header.Type == tlsGetRecordType && len(m.Data) > 0 {
			typ = m.Data[0]
		}
	}
	return typ, buf[:n], nil
}

// IsCloseNotify reports whether a record is a close_notify alert.
func IsCloseNotify(typ uint8, body []byte) bool {
	return typ == RecordAlert && len(body) >= 2 && body[1] == 0
}
