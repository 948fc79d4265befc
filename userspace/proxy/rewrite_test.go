package proxy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/wsplice/wsplice/userspace/http1"
)

// The handshake's header rewriting as it was written first (maps, a
// lower-cased copy of every name, Header values joined): the reference
// FuzzRewrite holds the allocation-free version to.

type refDropper struct{ listed map[string]bool }

func refNewDropper(h http1.Header) refDropper {
	d := refDropper{}
	for _, t := range h.Tokens("Connection") {
		t = strings.ToLower(t)
		if !protected[t] {
			if d.listed == nil {
				d.listed = make(map[string]bool)
			}
			d.listed[t] = true
		}
	}
	return d
}

func (d refDropper) drop(lname string) bool {
	return hopByHop[lname] || d.listed[lname] || strings.HasPrefix(lname, "proxy-")
}

func refForwardedValue(v string) string {
	if v != "" && strings.IndexFunc(v, func(r rune) bool { return !isTchar(r) }) < 0 {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

func refForwardedElement(ip, proto, host string) string {
	node := ip
	if strings.Contains(ip, ":") {
		node = "[" + ip + "]"
	}
	e := "for=" + refForwardedValue(node) + ";proto=" + refForwardedValue(proto)
	if host != "" {
		e += ";host=" + refForwardedValue(host)
	}
	return e
}

func refFields(f *forwarded, ip, host, proto string) http1.Header {
	h := http1.Header{
		{Name: "X-Forwarded-For", Value: strings.Join(append(f.forIPs, ip), ", ")},
		{Name: "X-Forwarded-Proto", Value: proto},
	}
	if host != "" {
		h = append(h, http1.Field{Name: "X-Forwarded-Host", Value: host})
	}
	h = append(h, http1.Field{Name: "Forwarded", Value: strings.Join(append(f.elems, refForwardedElement(ip, proto, host)), ", ")})
	return h
}

func refUpgradeRequest(req *http1.RequestHead, ip, proto string) []byte {
	target, authority := originForm(req.Target)
	host := req.Host
	if authority != "" {
		host = authority
	}
	out := &http1.RequestHead{Method: req.Method, Target: target, Major: 1, Minor: 1}
	d := refNewDropper(req.Header)
	var fwd forwarded
	for _, f := range req.Header {
		lname := strings.ToLower(f.Name)
		if d.drop(lname) || fwd.take(lname, f.Value) {
			continue
		}
		if lname == "host" {
			f.Value = host
		}
		out.Header = append(out.Header, f)
	}
	out.Header = append(out.Header,
		http1.Field{Name: "Connection", Value: "Upgrade"},
		http1.Field{Name: "Upgrade", Value: "websocket"})
	out.Header = append(out.Header, refFields(&fwd, ip, host, proto)...)
	return out.Append(nil)
}

func refSwitchingHead(resp *http1.ResponseHead, extra http1.Header) []byte {
	reason := resp.Reason
	if reason == "" {
		reason = "Switching Protocols"
	}
	out := &http1.ResponseHead{Major: 1, Minor: 1, Status: 101, Reason: reason}
	out.Header = http1.Header{{Name: "Upgrade", Value: "websocket"}, {Name: "Connection", Value: "Upgrade"}}
	d := refNewDropper(resp.Header)
	for _, f := range resp.Header {
		lname := strings.ToLower(f.Name)
		if d.drop(lname) || lname == "content-length" {
			continue
		}
		out.Header = append(out.Header, f)
	}
	out.Header = append(out.Header, extra...)
	return out.Append(nil)
}

// fuzzHeader turns "name:value" lines into a header, as sent (names
// are not checked: the rewrite must not depend on the parser for its
// answer).
func fuzzHeader(s string) http1.Header {
	var h http1.Header
	for _, line := range strings.Split(s, "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok {
			h = append(h, http1.Field{Name: name, Value: value})
		}
	}
	return h
}

// TestForwardedEmptyValues: an empty X-Forwarded-For or Forwarded field
// lists no hop; the proxy's own entry must not follow a bare ", ".
func TestForwardedEmptyValues(t *testing.T) {
	var f forwarded
	for _, fl := range [][2]string{{"x-forwarded-for", ""}, {"x-forwarded-for", " "}, {"forwarded", ""}, {"x-forwarded-for", "192.0.2.1"}} {
		if !f.take(fl[0], fl[1]) {
			t.Fatalf("take(%q) = false", fl[0])
		}
	}
	h := f.fields("127.0.0.1", "", "http")
	if got := h.Get("X-Forwarded-For"); got != "192.0.2.1, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want %q", got, "192.0.2.1, 127.0.0.1")
	}
	if got := h.Get("Forwarded"); got != "for=127.0.0.1;proto=http" {
		t.Errorf("Forwarded = %q, want %q", got, "for=127.0.0.1;proto=http")
	}
}

func FuzzRewrite(f *testing.F) {
	f.Add("Host:example.test\nUpgrade:websocket\nConnection:Upgrade\nSec-WebSocket-Key:dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version:13", "/chat", "example.test", "198.18.0.2", "")
	f.Add("Connection:keep-alive, X-Secret ,Sec-WebSocket-Key,\tproxy-x\nX-SECRET:1\nKeep-Alive:5\nProxy-Authorization:x\nX-Forwarded-For:1.2.3.4\nForwarded:for=1.2.3.4\nX-Forwarded-Proto:ftp\nTE:trailers\nConnection:,,Foo\nfoo:bar",
		"http://h:1/p?q", "ignored", "2001:db8::1", "x")
	f.Add("Connection:\u212aeep-alive\nKeep-Alive:1\nConnection:\u017fec-websocket-key\nSec-WebSocket-Key:k\nX-\u212a:v\nContent-Length:0", "*", "", "10.0.0.1", "a\"b\\c")
	f.Fuzz(func(t *testing.T, header, target, host, ip, sticky string) {
		h := fuzzHeader(header)
		ref, d := refNewDropper(h), newDropper(h)
		for _, fl := range h {
			lname := strings.ToLower(fl.Name)
			if ref.drop(lname) != d.drop(lname) {
				t.Fatalf("drop(%q): got %v, want %v (header %q)", lname, d.drop(lname), ref.drop(lname), h)
			}
			if got := string(appendLower(nil, fl.Name)); got != lname {
				t.Fatalf("appendLower(%q) = %q, want %q", fl.Name, got, lname)
			}
		}
		req := &http1.RequestHead{Method: "GET", Target: target, Minor: 1, Header: h, Host: host}
		cc := &clientConn{kind: kindHTTP}
		if got, want := cc.upgradeRequest(req, ip), refUpgradeRequest(req, ip, "http"); !bytes.Equal(got, want) {
			t.Fatalf("upgradeRequest\n got %q\nwant %q", got, want)
		}
		var extra http1.Header
		if sticky != "" {
			extra = http1.Header{{Name: "Set-Cookie", Value: sticky}}
		}
		resp := &http1.ResponseHead{Major: 1, Minor: 1, Status: 101, Reason: host, Header: h}
		if got, want := switchingHead(resp, extra), refSwitchingHead(resp, extra); !bytes.Equal(got, want) {
			t.Fatalf("switchingHead\n got %q\nwant %q", got, want)
		}
	})
}
