package http1

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func readReq(t *testing.T, s string, max int) (*RequestHead, *bufio.Reader, error) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(s), 64)
	req, err := ReadRequestHead(br, max)
	return req, br, err
}

func TestReadRequestHeadValid(t *testing.T) {
	in := "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nupgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nX-Empty:\r\nX-Multi: a\r\nX-Multi:  b \t\r\n\r\nREST"
	req, br, err := readReq(t, in, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{
		{"Host", "example.com:8080"}, {"upgrade", "websocket"}, {"Connection", "keep-alive, Upgrade"},
		{"X-Empty", ""}, {"X-Multi", "a"}, {"X-Multi", "b"},
	}
	if req.Method != "GET" || req.Target != "/chat?x=1" || req.Proto() != "HTTP/1.1" || req.Host != "example.com:8080" {
		t.Errorf("request line: %+v", req)
	}
	if !reflect.DeepEqual(req.Header, want) {
		t.Errorf("header = %q, want %q", req.Header, want)
	}
	if req.ContentLength != -1 || req.Chunked || req.HasBody() {
		t.Errorf("framing: cl=%d chunked=%v", req.ContentLength, req.Chunked)
	}
	if req.Size != len(in)-len("REST") {
		t.Errorf("Size = %d, want %d", req.Size, len(in)-4)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "REST" {
		t.Errorf("left in reader: %q, want REST", rest)
	}
	if !req.Header.HasToken("connection", "UPGRADE") || req.Header.HasToken("Connection", "keep") {
		t.Error("HasToken")
	}
	if got := req.Header.Values("x-multi"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("Values = %q", got)
	}
	if req.Header.Get("UPGRADE") != "websocket" || req.Header.Get("missing") != "" {
		t.Error("Get")
	}
	if CanonicalName("sec-websocket-key") != "Sec-Websocket-Key" {
		t.Error(CanonicalName("sec-websocket-key"))
	}
}

func TestReadRequestHeadFraming(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		cl      int64
		chunked bool
	}{
		{"content-length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n", 12, false},
		{"repeated identical", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 5, false},
		{"identical list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", 5, false},
		{"chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", -1, true},
		{"http/1.0 no host", "GET / HTTP/1.0\r\n\r\n", -1, false},
		{"leading empty line", "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", -1, false},
		{"absolute form", "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n", -1, false},
		{"absolute form with port and query", "GET http://h.example:8080?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", -1, false},
		{"absolute form ipv6", "GET https://[::1]:443/x HTTP/1.1\r\nHost: h\r\n\r\n", -1, false},
		{"options asterisk", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", -1, false},
		{"connect", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", -1, false},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", -1, false},
		{"obs-text value", "GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _, err := readReq(t, tc.in, 0)
			if err != nil {
				t.Fatal(err)
			}
			if req.ContentLength != tc.cl || req.Chunked != tc.chunked {
				t.Errorf("cl=%d chunked=%v, want %d %v", req.ContentLength, req.Chunked, tc.cl, tc.chunked)
			}
		})
	}
}

// TestReadRequestHeadRejects covers every shape the parser refuses.
func TestReadRequestHeadRejects(t *testing.T) {
	const host = "Host: h\r\n"
	for _, tc := range []struct {
		name   string
		in     string
		status int
	}{
		{"too large", "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 300) + "\r\n\r\n", 431},
		{"too large request line", "GET /" + strings.Repeat("a", 300) + " HTTP/1.1\r\n\r\n", 431},
		{"too many empty lines", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"no spaces", "GET\r\n" + host + "\r\n", 400},
		{"two spaces", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"trailing space", "GET / HTTP/1.1 \r\n" + host + "\r\n", 400},
		{"bad method", "G(T / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"empty method", " / HTTP/1.1\r\n" + host + "\r\n", 400},
		{"bad target", "GET foo HTTP/1.1\r\n" + host + "\r\n", 400},
		{"target with fragment", "GET /a#b HTTP/1.1\r\n" + host + "\r\n", 400},
		{"target with control", "GET /a\x01 HTTP/1.1\r\n" + host + "\r\n", 400},
		{"target non-ascii", "GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n", 400},
		{"asterisk not options", "GET * HTTP/1.1\r\n" + host + "\r\n", 400},
		{"authority not connect", "GET h:80 HTTP/1.1\r\n" + host + "\r\n", 400},
		// The authority of an absolute-form target replaces Host, so it
		// is checked as Host is.
		{"absolute form bad host", "GET http://evil.example<script>/p HTTP/1.1\r\n" + host + "\r\n", 400},
		{"absolute form userinfo", "GET http://u:p@h/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"absolute form quote", "GET http://a\"b/ HTTP/1.1\r\n" + host + "\r\n", 400},
		{"absolute form empty authority", "GET http:///p HTTP/1.1\r\n" + host + "\r\n", 400},
		{"version 2", "GET / HTTP/2.0\r\n" + host + "\r\n", 400},
		{"version 0.9", "GET / HTTP/0.9\r\n" + host + "\r\n", 400},
		{"version lower case", "GET / http/1.1\r\n" + host + "\r\n", 400},
		{"version long", "GET / HTTP/1.10\r\n" + host + "\r\n", 400},
		{"header name with space", "GET / HTTP/1.1\r\n" + host + "X Y: z\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\n" + host + "X : z\r\n\r\n", 400},
		{"empty header name", "GET / HTTP/1.1\r\n" + host + ": z\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\n" + host + "Xyz\r\n\r\n", 400},
		{"control in value", "GET / HTTP/1.1\r\n" + host + "X: a\x00b\r\n\r\n", 400},
		{"DEL in value", "GET / HTTP/1.1\r\n" + host + "X: a\x7fb\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X: a\r\n b\r\n\r\n", 400},
		{"obs-fold tab", "GET / HTTP/1.1\r\n" + host + "X: a\r\n\tb\r\n\r\n", 400},
		{"whitespace before first field", "GET / HTTP/1.1\r\n " + host + "\r\n", 400},
		{"bare LF request line", "GET / HTTP/1.1\n" + host + "\r\n", 400},
		{"bare LF header", "GET / HTTP/1.1\r\nHost: h\n\r\n", 400},
		{"bare LF end", "GET / HTTP/1.1\r\n" + host + "\n", 400},
		{"bare CR", "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"multiple host", "GET / HTTP/1.1\r\n" + host + host + "\r\n", 400},
		{"multiple host 1.0", "GET / HTTP/1.0\r\n" + host + host + "\r\n", 400},
		{"bad host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
		{"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"cl and te", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"te and cl", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400},
		{"differing cl", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
		{"differing cl list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 6\r\n\r\n", 400},
		{"non-numeric cl", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5a\r\n\r\n", 400},
		{"signed cl", "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\n", 400},
		{"negative cl", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", 400},
		{"empty cl", "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n", 400},
		{"huge cl", "POST / HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999\r\n\r\n", 400},
		{"te gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\r\n", 400},
		{"te gzip chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n", 400},
		{"te chunked twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"te chunked not final", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, identity\r\n\r\n", 400},
		{"te misspelt", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n", 400},
		{"te empty", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding:\r\n\r\n", 400},
		{"te in http/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readReq(t, tc.in, 256)
			var herr *Error
			if !errors.As(err, &herr) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if herr.Status != tc.status {
				t.Errorf("status = %d (%s), want %d", herr.Status, herr.Reason, tc.status)
			}
		})
	}
}

func TestReadRequestHeadEOF(t *testing.T) {
	if _, _, err := readReq(t, "", 0); err != io.EOF {
		t.Errorf("empty input: err = %v, want io.EOF", err)
	}
	for _, in := range []string{"GET", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: h\r\n"} {
		if _, _, err := readReq(t, in, 0); err != io.ErrUnexpectedEOF {
			t.Errorf("%q: err = %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
}

// TestReadRequestHeadExactMax checks the bound is inclusive.
func TestReadRequestHeadExactMax(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: h\r\n\r\n"
	if _, _, err := readReq(t, in, len(in)); err != nil {
		t.Errorf("head of exactly max bytes: %v", err)
	}
	_, _, err := readReq(t, in, len(in)-1)
	var herr *Error
	if !errors.As(err, &herr) || herr.Status != 431 {
		t.Errorf("head one byte over max: err = %v, want 431", err)
	}
}

func TestReadResponseHead(t *testing.T) {
	in := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
	br := bufio.NewReader(strings.NewReader(in))
	resp, err := ReadResponseHead(br, 0)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 101 || resp.Reason != "Switching Protocols" || len(resp.Header) != 2 {
		t.Errorf("resp = %+v", resp)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "\x81\x02hi" {
		t.Errorf("left in reader: %q", rest)
	}
	for _, in := range []string{"HTTP/1.1 204\r\n\r\n", "HTTP/1.1 200 \r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n"} {
		if _, err := ReadResponseHead(bufio.NewReader(strings.NewReader(in)), 0); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestReadResponseHeadRejects(t *testing.T) {
	for _, in := range []string{
		"HTTP/1.1 20 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 600 OK\r\n\r\n",
		"HTTP/2 200 OK\r\n\r\n",
		"HTTP/1.1\r\n\r\n",
		"HTTP/1.1 200 OK\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 300) + "\r\n\r\n",
	} {
		_, err := ReadResponseHead(bufio.NewReader(strings.NewReader(in)), 256)
		var herr *Error
		if !errors.As(err, &herr) || herr.Status != 502 {
			t.Errorf("%q: err = %v, want *Error 502", in, err)
		}
	}
}

func TestChunkedReader(t *testing.T) {
	in := "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	cr := NewChunkedReader(br, 0, 400)
	b, err := io.ReadAll(cr)
	if err != nil || string(b) != "hello world" {
		t.Fatalf("body %q, err %v", b, err)
	}
	if got := cr.Trailer().Get("x-trailer"); got != "t" {
		t.Errorf("trailer = %q", got)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
		t.Errorf("left in reader: %q", rest)
	}
	for _, bad := range []string{
		"5\r\nhelloX\r\n0\r\n\r\n",  // data longer than size
		"5\nhello\r\n0\r\n\r\n",     // bare LF
		"-5\r\nhello\r\n0\r\n\r\n",  // signed
		" 5\r\nhello\r\n0\r\n\r\n",  // whitespace
		"g\r\nhello\r\n0\r\n\r\n",   // not hex
		"5\r\nhel",                  // truncated
		"0\r\nX: a\n\r\n",           // bare LF in trailer
		"1111111111111111\r\n",      // overflow
		"5;a\x01\r\nhello\r\n0\r\n", // control in extension
	} {
		_, err := io.ReadAll(NewChunkedReader(bufio.NewReader(strings.NewReader(bad)), 0, 400))
		if err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestChunkedWriterRoundTrip(t *testing.T) {
	var sb strings.Builder
	w := ChunkedWriter{W: &sb}
	_, _ = w.Write([]byte("hello "))
	_, _ = w.Write(make([]byte, 300))
	_ = w.Close(Header{{"X-T", "v"}})
	cr := NewChunkedReader(bufio.NewReader(strings.NewReader(sb.String())), 0, 400)
	b, err := io.ReadAll(cr)
	if err != nil || len(b) != 306 || string(b[:6]) != "hello " {
		t.Fatalf("len %d err %v", len(b), err)
	}
	if cr.Trailer().Get("X-T") != "v" {
		t.Error("trailer lost")
	}
}

// BenchmarkReadRequestHead reads a WebSocket handshake as browsers send it.
func BenchmarkReadRequestHead(b *testing.B) {
	in := "GET /chat?room=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://example.test\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
	sr := strings.NewReader(in)
	br := bufio.NewReaderSize(sr, 4096)
	b.ReportAllocs()
	for b.Loop() {
		sr.Reset(in)
		br.Reset(sr)
		if _, err := ReadRequestHead(br, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func TestValidHost(t *testing.T) {
	for _, c := range []struct {
		host string
		ok   bool
	}{
		{"example.com", true}, {"example.com:8080", true}, {"example.com:", true}, {"10.0.0.1:80", true},
		{"[::1]", true}, {"[::1]:8080", true}, {"[fe80::1%25eth0]:1", true}, {"xn--bcher-kva.example", true}, {"", true},
		{"example.com:abc", false}, {"example.com:80a", false}, {"example.com:123456", false}, {"exa mple.com", false},
		{"a:b:c", false}, {"[::1", false}, {"[]", false}, {"[::1]x", false}, {"[::1]:x", false}, {":80", false},
		{"user@host", false}, {"host/path", false}, {"host?q", false}, {"host#f", false},
	} {
		if got := validHost(c.host); got != c.ok {
			t.Errorf("validHost(%q) = %v, want %v", c.host, got, c.ok)
		}
	}
}
