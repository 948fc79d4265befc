package proxyproto

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeaderBytes compares with headers built by hand from the spec's
// layout (section 2.2): signature, 0x21 (v2, PROXY), family, length,
// addresses, ports, all big-endian.
func TestHeaderBytes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst string
		want     string
	}{
		{"tcp4", "198.18.0.2:51234", "198.18.1.1:8080",
			"0d0a0d0a000d0a515549540a 21 11 000c c6120002 c6120101 c822 1f90"},
		{"tcp4 from mapped", "[::ffff:198.18.0.2]:51234", "[::ffff:198.18.1.1]:8080",
			"0d0a0d0a000d0a515549540a 21 11 000c c6120002 c6120101 c822 1f90"},
		{"tcp6", "[2001:db8::1]:443", "[2001:db8::2]:9000",
			"0d0a0d0a000d0a515549540a 21 21 0024 20010db8000000000000000000000001 20010db8000000000000000000000002 01bb 2328"},
		{"mixed becomes tcp6", "198.18.0.2:1", "[::1]:2",
			"0d0a0d0a000d0a515549540a 21 21 0024 00000000000000000000ffffc6120002 00000000000000000000000000000001 0001 0002"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Header(netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst))
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, tc.want); !bytes.Equal(got, want) {
				t.Fatalf("header\n got %x\nwant %x", got, want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	src, dst := netip.MustParseAddrPort("[2001:db8::7]:40000"), netip.MustParseAddrPort("[2001:db8::8]:443")
	h, err := Header(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(append(h, "GET / HTTP/1.1\r\n"...))
	if err != nil {
		t.Fatal(err)
	}
	if d.Src != src || d.Dst != dst || d.Len != 52 || d.Local {
		t.Fatalf("decoded %+v", d)
	}
	if _, err := Decode(h[:20]); err != ErrShort {
		t.Fatalf("truncated: %v, want ErrShort", err)
	}
	bad := append([]byte(nil), h...)
	bad[0] = 'P'
	if _, err := Decode(bad); err == nil {
		t.Fatal("bad signature accepted")
	}
	if _, err := Header(netip.AddrPort{}, dst); err == nil {
		t.Fatal("invalid source accepted")
	}
}
