package websocket

import (
	"errors"
	"testing"

	"github.com/wsplice/wsplice/userspace/http1"
)

const key = "dGhlIHNhbXBsZSBub25jZQ=="

func TestAcceptKey(t *testing.T) {
	// The example of RFC 6455 §1.3.
	if got := AcceptKey(key); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("AcceptKey = %q", got)
	}
}

func validRequest() *http1.RequestHead {
	return &http1.RequestHead{Method: "GET", Target: "/", Major: 1, Minor: 1, Header: http1.Header{
		{Name: "Host", Value: "h"},
		{Name: "Upgrade", Value: "WebSocket"},
		{Name: "Connection", Value: "keep-alive, Upgrade"},
		{Name: "Sec-WebSocket-Key", Value: key},
		{Name: "Sec-WebSocket-Version", Value: "13"},
	}}
}

func TestCheckRequest(t *testing.T) {
	if err := CheckRequest(validRequest()); err != nil {
		t.Fatalf("valid request: %v", err)
	}
	set := func(name, value string) func(*http1.RequestHead) {
		return func(r *http1.RequestHead) {
			var h http1.Header
			for _, f := range r.Header {
				if f.Name != name {
					h = append(h, f)
				}
			}
			if value != "" {
				h = append(h, http1.Field{Name: name, Value: value})
			}
			r.Header = h
		}
	}
	for _, tc := range []struct {
		name   string
		mod    func(*http1.RequestHead)
		status int
	}{
		{"post", func(r *http1.RequestHead) { r.Method = "POST" }, 400},
		{"http/1.0", func(r *http1.RequestHead) { r.Minor = 0 }, 400},
		{"no upgrade token", set("Upgrade", "h2c"), 400},
		{"no connection token", set("Connection", "keep-alive"), 400},
		{"missing key", set("Sec-WebSocket-Key", ""), 400},
		{"short key", set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j"), 400},
		{"key of 17 bytes", set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZTE="), 400},
		{"key not base64", set("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!=="), 400},
		{"missing version", set("Sec-WebSocket-Version", ""), 400},
		{"version 8", set("Sec-WebSocket-Version", "8"), 426},
		{"version list", set("Sec-WebSocket-Version", "13, 8"), 426},
		{"two versions", func(r *http1.RequestHead) {
			r.Header = append(r.Header, http1.Field{Name: "Sec-WebSocket-Version", Value: "13"})
		}, 400},
		{"two keys", func(r *http1.RequestHead) {
			r.Header = append(r.Header, http1.Field{Name: "Sec-WebSocket-Key", Value: key})
		}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validRequest()
			tc.mod(r)
			err := CheckRequest(r)
			var werr *Error
			if !errors.As(err, &werr) || werr.Status != tc.status {
				t.Fatalf("err = %v, want status %d", err, tc.status)
			}
			if tc.status == 426 && werr.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Error("426 without Sec-WebSocket-Version: 13")
			}
		})
	}
}

func TestIsUpgrade(t *testing.T) {
	if !IsUpgrade(validRequest().Header) {
		t.Error("valid request is not an upgrade")
	}
	if IsUpgrade(http1.Header{{Name: "Upgrade", Value: "h2c"}, {Name: "Connection", Value: "Upgrade"}}) {
		t.Error("h2c taken for websocket")
	}
	if IsUpgrade(http1.Header{{Name: "Upgrade", Value: "websocket"}}) {
		t.Error("Upgrade without Connection taken for an upgrade")
	}
}

func TestCheckResponse(t *testing.T) {
	ok := func() *http1.ResponseHead {
		return &http1.ResponseHead{Major: 1, Minor: 1, Status: 101, Header: http1.Header{
			{Name: "Upgrade", Value: "websocket"},
			{Name: "Connection", Value: "Upgrade"},
			{Name: "Sec-WebSocket-Accept", Value: AcceptKey(key)},
		}}
	}
	if err := CheckResponse(ok(), key); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*http1.ResponseHead){
		"200":          func(r *http1.ResponseHead) { r.Status = 200 },
		"no upgrade":   func(r *http1.ResponseHead) { r.Header[0].Value = "h2c" },
		"no conn":      func(r *http1.ResponseHead) { r.Header[1].Value = "close" },
		"wrong accept": func(r *http1.ResponseHead) { r.Header[2].Value = AcceptKey("x") },
		"no accept":    func(r *http1.ResponseHead) { r.Header = r.Header[:2] },
		"two accepts":  func(r *http1.ResponseHead) { r.Header = append(r.Header, r.Header[2]) },
	} {
		r := ok()
		mod(r)
		var werr *Error
		if err := CheckResponse(r, key); !errors.As(err, &werr) || werr.Status != 502 {
			t.Errorf("%s: err = %v, want 502", name, err)
		}
	}
}

// BenchmarkCheck checks a handshake both ways, as the proxy does for each.
func BenchmarkCheck(b *testing.B) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	req := &http1.RequestHead{Method: "GET", Minor: 1, Header: http1.Header{
		{Name: "Host", Value: "example.test"}, {Name: "Upgrade", Value: "websocket"}, {Name: "Connection", Value: "Upgrade"},
		{Name: "Sec-WebSocket-Key", Value: key}, {Name: "Sec-WebSocket-Version", Value: "13"},
	}}
	resp := &http1.ResponseHead{Status: 101, Header: http1.Header{
		{Name: "Upgrade", Value: "websocket"}, {Name: "Connection", Value: "Upgrade"},
		{Name: "Sec-WebSocket-Accept", Value: AcceptKey(key)},
	}}
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckRequest(req); err != nil {
			b.Fatal(err)
		}
		if err := CheckResponse(resp, key); err != nil {
			b.Fatal(err)
		}
	}
}
