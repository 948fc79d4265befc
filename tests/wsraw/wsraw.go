// Package wsraw speaks WebSocket (RFC 6455) byte by byte, for tests that
// must control exactly what goes on the wire: a frame in the same write as
// the Upgrade request, a byte stream after the 101, malformed handshakes.
// Real clients (gorilla, Node's ws) are used everywhere else.
package wsraw

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Opcodes used by the tests.
const (
	OpText   = 0x1
	OpBinary = 0x2
	OpClose  = 0x8
)

// NewKey returns a fresh Sec-WebSocket-Key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// AcceptKey is the Sec-WebSocket-Accept a server must answer to key.
func AcceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// UpgradeRequest is a WebSocket Upgrade request for target on host, with key
// and extra header lines ("Name: value").
func UpgradeRequest(host, target, key string, extra ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", target, host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// ReadUpgradeResponse reads the server's handshake answer and checks that it
// is a 101 accepting key.
func ReadUpgradeResponse(br *bufio.Reader, key string) (*http.Response, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return resp, fmt.Errorf("upgrade answered %s, want 101", resp.Status)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), AcceptKey(key); got != want {
		return resp, fmt.Errorf("Sec-WebSocket-Accept %q, want %q", got, want)
	}
	return resp, nil
}

// AppendFrame appends one final frame with a masked payload, as a client
// sends it.
func AppendFrame(dst []byte, opcode byte, payload []byte) []byte {
	dst = append(dst, 0x80|opcode)
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	dst = append(dst, mask[:]...)
	for i, c := range payload {
		dst = append(dst, c^mask[i%4])
	}
	return dst
}

// Frame is one frame as read from a server.
type Frame struct {
	Fin     bool
	Opcode  byte
	Payload []byte
}

// ErrMasked means a server sent a masked frame, which RFC 6455 forbids: in
// these tests it means client bytes were sent back to the client.
var ErrMasked = errors.New("server frame is masked")

// ReadFrame reads one frame from a server. Frames over max bytes are an
// error, so that garbage cannot make a test allocate gigabytes.
func ReadFrame(br *bufio.Reader, max int) (Frame, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return Frame{}, err
	}
	f := Frame{Fin: hdr[0]&0x80 != 0, Opcode: hdr[0] & 0x0f}
	if hdr[0]&0x70 != 0 {
		return f, fmt.Errorf("frame header %#x has reserved bits set", hdr[0])
	}
	if hdr[1]&0x80 != 0 {
		return f, ErrMasked
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > uint64(max) {
		return f, fmt.Errorf("frame of %d bytes, more than the %d expected", n, max)
	}
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(br, f.Payload); err != nil {
		return f, err
	}
	return f, nil
}
