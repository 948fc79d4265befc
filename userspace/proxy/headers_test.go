package proxy

import (
	"net"
	"testing"
)

// TestForwarded: RFC 7239 elements, IPv6 bracketed and quoted (§6), values
// that are not tokens quoted, earlier values kept in front.
func TestForwarded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		client  net.Addr
		host    string
		proto   string
		earlier []string
		want    string
	}{
		{"ipv4", &net.TCPAddr{IP: net.ParseIP("198.18.0.2"), Port: 5000}, "example.com", "http", nil,
			`for=198.18.0.2;proto=http;host=example.com`},
		{"ipv6 and host with port", &net.TCPAddr{IP: net.ParseIP("2001:db8:cafe::17"), Port: 5000}, "example.com:8443", "https", nil,
			`for="[2001:db8:cafe::17]";proto=https;host="example.com:8443"`},
		{"no host", &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1}, "", "http", nil,
			`for=192.0.2.1;proto=http`},
		{"appended", &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1}, "h", "http", []string{`for=192.0.2.43, for="[2001:db8::1]"`, `for=unknown`},
			`for=192.0.2.43, for="[2001:db8::1]", for=unknown, for=192.0.2.1;proto=http;host=h`},
		{"quote and backslash", &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1}, `a"b\c`, "http", nil,
			`for=192.0.2.1;proto=http;host="a\"b\\c"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f forwarded
			for _, v := range tc.earlier {
				if !f.take("forwarded", v) {
					t.Fatal("Forwarded not taken")
				}
			}
			got := f.fields(remoteIP(tc.client), tc.host, tc.proto).Get("Forwarded")
			if got != tc.want {
				t.Fatalf("Forwarded\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}
