// Package proxyproto writes the PROXY protocol version 2 header that tells
// a backend the client's address on an L4 connection
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt, section
// 2.2). It writes the binary form only, command PROXY, over TCP; Decode is
// for tests.
package proxyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Signature starts every version 2 header.
var Signature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// Header byte 13: version 2 in the high nibble, the command in the low one.
const (
	verCmdLocal = 0x20
	verCmdProxy = 0x21
)

// Header byte 14: address family in the high nibble, transport in the low.
const (
	famTCP4 = 0x11
	famTCP6 = 0x21
)

// Header returns the v2 header for a TCP connection from src to dst (the
// client's address and the address it connected to). Both IPv4 (or
// 4-in-6 mapped): TCP4; otherwise both are written as IPv6 (an IPv4 one
// mapped): TCP6.
func Header(src, dst netip.AddrPort) ([]byte, error) {
	if !src.IsValid() || !dst.IsValid() {
		return nil, errors.New("proxy protocol: invalid address")
	}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	b := make([]byte, 0, 16+36)
	b = append(b, Signature[:]...)
	b = append(b, verCmdProxy)
	if s.Is4() && d.Is4() {
		b = append(b, famTCP4)
		b = binary.BigEndian.AppendUint16(b, 12)
		s4, d4 := s.As4(), d.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	} else {
		b = append(b, famTCP6)
		b = binary.BigEndian.AppendUint16(b, 36)
		s16, d16 := src.Addr().As16(), dst.Addr().As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	return b, nil
}

// Decoded is a parsed v2 header.
type Decoded struct {
	// Local is set for the LOCAL command (no addresses).
	Local    bool
	Src, Dst netip.AddrPort
	// Len is the header's whole length in bytes.
	Len int
}

// ErrShort means b does not hold a whole header yet.
var ErrShort = errors.New("proxy protocol: short header")

// Decode parses a v2 header at the start of b (TCP over IPv4 or IPv6, or
// LOCAL). It is strict: tests use it to check what a backend received.
func Decode(b []byte) (Decoded, error) {
	if len(b) < 16 {
		return Decoded{}, ErrShort
	}
	if [12]byte(b[:12]) != Signature {
		return Decoded{}, errors.New("proxy protocol: bad signature")
	}
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if len(b) < 16+n {
		return Decoded{}, ErrShort
	}
	d := Decoded{Len: 16 + n}
	body := b[16 : 16+n]
	switch b[12] {
	case verCmdLocal:
		d.Local = true
		return d, nil
	case verCmdProxy:
	default:
		return Decoded{}, fmt.Errorf("proxy protocol: version/command byte %#x", b[12])
	}
	switch b[13] {
	case famTCP4:
		if n < 12 {
			return Decoded{}, fmt.Errorf("proxy protocol: TCP4 with %d address bytes", n)
		}
		d.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		d.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case famTCP6:
		if n < 36 {
			return Decoded{}, fmt.Errorf("proxy protocol: TCP6 with %d address bytes", n)
		}
		d.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		d.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
	default:
		return Decoded{}, fmt.Errorf("proxy protocol: family/transport byte %#x", b[13])
	}
	return d, nil
}
