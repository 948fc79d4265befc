package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/refused"
	"github.com/wsplice/wsplice/userspace/http1"
)

// echoHandler answers with what it saw, as JSON, and streams it chunked.
type seen struct {
	Method, URI, Host, Body string
	Header                  http.Header
	Chunked                 bool
}

func startEchoHTTP(t *testing.T) string {
	t.Helper()
	return startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		s := seen{Method: r.Method, URI: r.RequestURI, Host: r.Host, Body: string(body), Header: r.Header,
			Chunked: len(r.TransferEncoding) > 0}
		b, _ := json.Marshal(s)
		w.Header().Set("Connection", "X-Drop")
		w.Header().Set("X-Drop", "1")
		if r.URL.Query().Get("chunked") != "" {
			// Two flushes: no Content-Length, chunked on the wire.
			w.Header().Set("Trailer", "X-Sum")
			_, _ = w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			_, _ = w.Write(b[len(b)/2:])
			w.Header().Set("X-Sum", "42")
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		_, _ = w.Write(b)
	}))
}

func readJSON(t *testing.T, br *bufio.Reader, method string) (*http.Response, seen) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	var s seen
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("body %q: %v", b, err)
		}
	}
	return resp, s
}

// TestPlainKeepAlive sends two requests on one connection, the second
// with a chunked body, and gets the second answer chunked.
func TestPlainKeepAlive(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("GET /a%2Fb?x=1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 192.0.2.1\r\nKeep-Alive: 5\r\nX-Hop: 1\r\nConnection: X-Hop\r\n\r\n")
	resp, s := readJSON(t, cl.br, "GET")
	if resp.StatusCode != 200 || resp.ContentLength < 0 {
		t.Fatalf("first: status %d length %d", resp.StatusCode, resp.ContentLength)
	}
	if s.URI != "/a%2Fb?x=1" || s.Host != "example.test" {
		t.Errorf("backend saw %s %s", s.URI, s.Host)
	}
	if got := s.Header.Get("X-Forwarded-For"); got != "192.0.2.1, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q", got)
	}
	if s.Header.Get("X-Forwarded-Proto") != "http" || s.Header.Get("X-Forwarded-Host") != "example.test" {
		t.Errorf("X-Forwarded-Proto/Host = %q %q", s.Header.Get("X-Forwarded-Proto"), s.Header.Get("X-Forwarded-Host"))
	}
	for _, h := range []string{"Keep-Alive", "X-Hop", "Connection", "User-Agent"} {
		if v, ok := s.Header[h]; ok {
			t.Errorf("backend got %s: %q", h, v)
		}
	}
	if resp.Header.Get("X-Drop") != "" {
		t.Error("client got a field the backend listed in Connection")
	}
	if resp.Close {
		t.Fatal("first response closes the connection")
	}

	cl.send("POST /upload?chunked=1 HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n")
	resp, s = readJSON(t, cl.br, "POST")
	if resp.StatusCode != 200 {
		t.Fatalf("second: status %d", resp.StatusCode)
	}
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("second response not chunked: %v", resp.TransferEncoding)
	}
	if resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailer = %v", resp.Trailer)
	}
	if s.Method != "POST" || s.Body != "hello, world" || !s.Chunked {
		t.Errorf("backend saw %s body %q chunked %v", s.Method, s.Body, s.Chunked)
	}

	// A Content-Length body and a third request on the same connection.
	cl.send("PUT /c HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc")
	resp, s = readJSON(t, cl.br, "PUT")
	if resp.StatusCode != 200 || s.Body != "abc" || s.Chunked {
		t.Errorf("third: status %d body %q chunked %v", resp.StatusCode, s.Body, s.Chunked)
	}
}

func TestPlainExpectContinue(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	line, err := cl.br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("got %q, %v; want 100 Continue", line, err)
	}
	if l, _ := cl.br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("100 Continue followed by %q", l)
	}
	cl.send("body")
	resp, s := readJSON(t, cl.br, "POST")
	if resp.StatusCode != 200 || s.Body != "body" || s.Header.Get("Expect") != "" {
		t.Errorf("status %d body %q expect %q", resp.StatusCode, s.Body, s.Header.Get("Expect"))
	}
}

func TestPlainHTTP10Closes(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("GET /?chunked=1 HTTP/1.0\r\nHost: h\r\n\r\n")
	resp, s := readJSON(t, cl.br, "GET")
	if resp.StatusCode != 200 || s.URI != "/?chunked=1" {
		t.Fatalf("status %d uri %q", resp.StatusCode, s.URI)
	}
	if len(resp.TransferEncoding) != 0 {
		t.Error("chunked answer to an HTTP/1.0 client")
	}
	cl.expectClosed()
}

func TestPlainConnectionClose(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	resp, _ := readJSON(t, cl.br, "GET")
	if !resp.Close {
		t.Error("answer to Connection: close does not close")
	}
	cl.expectClosed()
}

func TestPlainHead(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
	resp, err := http.ReadResponse(cl.br, &http.Request{Method: "HEAD"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	// The pipelined GET's answer comes next: the HEAD answer had no body.
	resp, s := readJSON(t, cl.br, "GET")
	if resp.StatusCode != 200 || s.Method != "GET" {
		t.Errorf("pipelined GET: status %d method %q", resp.StatusCode, s.Method)
	}
}

func TestPlainErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend string
		req     string
		status  int
	}{
		{"no backend", "", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 503},
		{"unreachable", refused.Addr(t), "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 502},
		{"cl and te", "127.0.0.1:1", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"two cl", "127.0.0.1:1", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
		{"missing host", "127.0.0.1:1", "GET / HTTP/1.1\r\n\r\n", 400},
		{"connect", "127.0.0.1:1", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var backends []string
			if tc.backend != "" {
				backends = []string{tc.backend}
			}
			p := startProxy(t, backends, nil)
			cl := dial(t, p.addr)
			cl.send(tc.req)
			resp := cl.head()
			if resp.Status != tc.status {
				t.Fatalf("status %d, want %d", resp.Status, tc.status)
			}
			cl.body(resp)
			cl.expectClosed()
		})
	}
}

// TestPlainBackendNotRead checks a backend that answers without reading a
// large body: the answer arrives, and the client connection is closed
// rather than reused with half a body in it.
func TestPlainBackendNotRead(t *testing.T) {
	be := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "nope", http.StatusForbidden)
	}))
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\npartial")
	resp := cl.head()
	if resp.Status != 403 {
		t.Fatalf("status %d", resp.Status)
	}
	cl.body(resp)
	_ = cl.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(cl.br); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Errorf("connection not closed: %v", err)
	}
}

// TestShutdown: idle keep-alive connections close at once, Serve returns,
// and the goroutines it started are gone.
func TestShutdown(t *testing.T) {
	before := runtime.NumGoroutine()
	be := startEchoHTTP(t)
	ws := startWSBackend(t, "a")
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	readJSON(t, cl.br, "GET")
	_ = ws
	// Trigger the cleanup registered by startProxy now.
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		_, err := io.ReadAll(cl.br)
		if err != nil {
			t.Errorf("idle connection: %v", err)
		}
	}()
	p.shutdownForTest(t)
	select {
	case <-stop:
	case <-time.After(testTimeout):
		t.Fatal("idle keep-alive connection not closed by shutdown")
	}
	if _, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		t.Error("listener still accepting after shutdown")
	}
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > before+8 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+8 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after shutdown, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestShutdownForcesStuckRelay: a backend that refuses the upgrade and then
// stalls mid-body must not keep shutdown waiting past its grace period.
func TestShutdownForcesStuckRelay(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.WriteString(c, "HTTP/1.1 503 Busy\r\n\r\npartial")
		<-release
	})
	p := startProxy(t, []string{be}, func(c *Config) { c.ShutdownTimeout = 200 * time.Millisecond })
	cl := dial(t, p.addr)
	cl.send(upgradeRequest())
	if resp := cl.head(); resp.Status != 503 {
		t.Fatalf("status %d", resp.Status)
	}
	start := time.Now()
	p.shutdownForTest(t)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v with a stuck relay", d)
	}
	if n := p.Stats().Connections; n != 0 {
		t.Errorf("%d connections still served after shutdown", n)
	}
}

// TestKeepAliveIdleCloses: after a request, an idle connection closes
// silently after the header timeout, without a 408.
func TestKeepAliveIdleCloses(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, func(c *Config) { c.HeaderTimeout = 200 * time.Millisecond })
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	readJSON(t, cl.br, "GET")
	start := time.Now()
	cl.expectClosed()
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("closed after %v, want about 200ms", d)
	}
}

// TestPlainOtherUpgrade: an Upgrade that is not websocket is proxied as a
// plain request, without the hop-by-hop Upgrade.
func TestPlainOtherUpgrade(t *testing.T) {
	p := startProxy(t, []string{startEchoHTTP(t)}, nil)
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
	resp, s := readJSON(t, cl.br, "GET")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, h := range []string{"Upgrade", "Http2-Settings", "Connection"} {
		if _, ok := s.Header[h]; ok {
			t.Errorf("backend got %s", h)
		}
	}
}

// TestPlainBadBody: a body the client got wrong is the client's fault:
// 400 (not 502, "backend failed"), and the connection is closed.
func TestPlainBadBody(t *testing.T) {
	be := startEchoHTTP(t)
	p := startProxy(t, []string{be}, nil)
	for _, tc := range []struct{ name, body string }{
		{"bad chunk size", "zz\r\nabc\r\n0\r\n\r\n"},
		{"chunk size overflow", "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"},
		{"chunk longer than its size", "3\r\nabcdef\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := dial(t, p.addr)
			cl.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + tc.body)
			resp := cl.head()
			if resp.Status != 400 {
				t.Fatalf("status %d, want 400", resp.Status)
			}
			cl.body(resp)
			cl.expectClosed()
		})
	}
}

// TestPlainBackendTimeout: a backend that does not answer within
// ResponseTimeout of the request being sent gets the client a 504; the
// time a client takes to send its body does not count.
func TestPlainBackendTimeout(t *testing.T) {
	be := startBodyEcho(t)
	p := startProxy(t, []string{be}, func(c *Config) { c.ResponseTimeout = 300 * time.Millisecond })

	cl := dial(t, p.addr)
	start := time.Now()
	cl.send("GET /hang HTTP/1.1\r\nHost: h\r\n\r\n")
	cl.expectError("silent backend", start, 504, 250*time.Millisecond, 1500*time.Millisecond)

	// A body sent over 600 ms, twice the timeout: the backend answers at
	// once when it has it all.
	cl = dial(t, p.addr)
	cl.send("POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nab")
	time.Sleep(300 * time.Millisecond)
	cl.send("cd")
	time.Sleep(300 * time.Millisecond)
	cl.send("ef")
	resp := cl.head()
	if resp.Status != 200 {
		t.Fatalf("slow body: status %d, want 200", resp.Status)
	}
	if b := cl.body(resp); string(b) != "abcdef" {
		t.Errorf("slow body: answer %q", b)
	}
}

// TestPlainBodyStall: a request body gets the header timeout between two
// reads, not in all: a slow upload that keeps coming goes through, one
// that stops gets 408 and a close.
func TestPlainBodyStall(t *testing.T) {
	be := startBodyEcho(t)
	p := startProxy(t, []string{be}, func(c *Config) { c.HeaderTimeout = 400 * time.Millisecond })

	cl := dial(t, p.addr)
	cl.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\na")
	for _, s := range []string{"b", "c", "d"} { // 750 ms in all
		time.Sleep(250 * time.Millisecond)
		cl.send(s)
	}
	resp := cl.head()
	if resp.Status != 200 {
		t.Fatalf("slow upload: status %d, want 200", resp.Status)
	}
	if b := cl.body(resp); string(b) != "abcd" {
		t.Errorf("slow upload: answer %q", b)
	}

	cl = dial(t, p.addr)
	start := time.Now()
	cl.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
	cl.expectError("stalled upload", start, 408, 350*time.Millisecond, 2*time.Second)
}

// startBodyEcho starts a backend that answers with the request's body,
// once it has it all; on /hang, two seconds later.
func startBodyEcho(t *testing.T) string {
	return startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/hang" {
			time.Sleep(2 * time.Second)
		}
		_, _ = w.Write(b)
	}))
}

// A backend that fails halfway through a body must not reach the client as
// a whole answer, whatever framing the client can take: an HTTP/1.1 client
// that asked to close gets chunked framing without its last chunk, an
// HTTP/1.0 client (close-delimited framing) a reset instead of a FIN.
func TestPlainTruncatedResponseNotWhole(t *testing.T) {
	half := strings.Repeat("x", 100000)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		// Chunked, one chunk of the promised two, then a reset.
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		io.WriteString(c, "186a0\r\n"+half+"\r\n")
		time.Sleep(50 * time.Millisecond)
		_ = c.SetLinger(0)
	})
	p := startProxy(t, []string{be}, nil)
	for _, tc := range []struct{ name, req string }{
		{"http/1.1 connection close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := dial(t, p.addr)
			cl.send(tc.req)
			resp := cl.head()
			if resp.Status != 200 {
				t.Fatalf("status %d", resp.Status)
			}
			var err error
			var got []byte
			if resp.Chunked {
				got, err = io.ReadAll(http1.NewChunkedReader(cl.br, 1<<10, 502))
			} else {
				got, err = io.ReadAll(cl.br)
			}
			if err == nil {
				t.Fatalf("the client read %d of 200000 bytes and a clean end (chunked %v): a truncated answer looks whole", len(got), resp.Chunked)
			}
			if tc.name == "http/1.1 connection close" && !resp.Chunked {
				t.Errorf("an HTTP/1.1 client got a close-delimited body, whose truncation it cannot tell")
			}
		})
	}
}

// A backend that answers an upload before reading it (413, a large body,
// then close): the client receives the whole answer, announced with
// Connection: close, although it is still sending its body.
func TestPlainEarlyAnswerToUpload(t *testing.T) {
	answer := bytes.Repeat([]byte("y"), 4<<20)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4194304\r\nConnection: close\r\n\r\n")
		c.Write(answer)
		// A lingering close, as servers do: the upload still arriving
		// must not reset the answer on this side either.
		c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, br)
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 52428800\r\n\r\n")
	// Keep uploading while the answer is read, slowly at first.
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 800; i++ {
			if _, err := cl.c.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	resp := cl.head()
	if resp.Status != 413 {
		t.Fatalf("status %d", resp.Status)
	}
	if !resp.Header.HasToken("Connection", "close") {
		t.Errorf("the answer does not say Connection: close, yet the connection closes after it")
	}
	got := make([]byte, len(answer))
	if n, err := io.ReadFull(cl.br, got); err != nil {
		t.Fatalf("the client got %d of %d bytes of the answer: %v", n, len(answer), err)
	}
}

// A client that resets its connection while its request waits for the
// backend cancels the request: the backend connection closes at once
// instead of at --backend-timeout. A client that only half-closes still
// gets its answer.
func TestPlainClientResetCancels(t *testing.T) {
	gone := make(chan time.Duration, 4)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		start := time.Now()
		if req.Target == "/halfclose" {
			time.Sleep(300 * time.Millisecond)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		// Answer in 5 s, unless wsplice gives the request up first.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = br.ReadByte()
		gone <- time.Since(start)
	})
	p := startProxy(t, []string{be}, nil)

	cl := dial(t, p.addr)
	cl.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	time.Sleep(200 * time.Millisecond) // the request reaches the backend
	_ = cl.c.SetLinger(0)
	_ = cl.c.Close()
	select {
	case d := <-gone:
		if d > 2*time.Second {
			t.Errorf("the backend's connection stayed %v after the client reset, want it closed at once", d)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("the backend connection did not close")
	}

	cl = dial(t, p.addr)
	cl.send("GET /halfclose HTTP/1.1\r\nHost: h\r\n\r\n")
	_ = cl.c.CloseWrite()
	resp := cl.head()
	if resp.Status != 200 || cl.body(resp) != "ok" {
		t.Fatalf("a half-closed client got %d, want its answer", resp.Status)
	}
}

// A client's request trailer fields reach the backend after the body,
// declared or not; framing and routing fields among them do not.
func TestPlainRequestTrailers(t *testing.T) {
	got := make(chan string, 1)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		cr := http1.NewChunkedReader(br, 1<<10, 400)
		body, err := io.ReadAll(cr)
		if err != nil {
			got <- "body: " + err.Error()
			return
		}
		got <- string(body) + "|" + cr.Trailer().Get("X-Check") + "|" + cr.Trailer().Get("X-Other") + "|" + cr.Trailer().Get("Host")
		io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("POST /tr HTTP/1.1\r\nHost: h\r\nTrailer: X-Check\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0\r\nX-Check: 42\r\nX-Other: 7\r\nHost: evil\r\n\r\n")
	if resp := cl.head(); resp.Status != 204 {
		t.Fatalf("status %d", resp.Status)
	}
	if s := <-got; s != "abc|42|7|" {
		t.Errorf("backend got body|X-Check|X-Other|Host = %q, want %q", s, "abc|42|7|")
	}
}

// stalledAnswers are backend answers whose body starts ("hello") and then
// stops for good, the backend keeping its connection open: to a plain
// request, and to an upgrade the backend refuses.
var stalledAnswers = []struct{ name, request, answer string }{
	{"plain", "GET /events HTTP/1.1\r\nHost: example.test\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"},
	{"plain-chunked", "GET /events HTTP/1.1\r\nHost: example.test\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
	{"refused-upgrade", upgradeRequest(), "HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nhello"},
}

// startStallingBackend answers every request with answer and then waits
// for wsplice to close the connection, which it reports on closed.
func startStallingBackend(t *testing.T, answer string) (addr string, closed chan struct{}) {
	closed = make(chan struct{}, 4)
	addr = startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		_, _ = io.WriteString(c, answer)
		_, _ = io.Copy(io.Discard, br)
		closed <- struct{}{}
	})
	return addr, closed
}

// TestStalledAnswerBodyTimesOut: an answer's body that goes without a byte
// for the backend timeout ends the relay: the client's connection is
// closed without the body's end (so it cannot take the answer for whole),
// and so is the backend's; nothing is held for good.
func TestStalledAnswerBodyTimesOut(t *testing.T) {
	for _, tc := range stalledAnswers {
		t.Run(tc.name, func(t *testing.T) {
			be, closed := startStallingBackend(t, tc.answer)
			p := startProxy(t, []string{be}, func(c *Config) { c.ResponseTimeout = 300 * time.Millisecond })
			cl := dial(t, p.addr)
			start := time.Now()
			cl.send(tc.request)
			cl.head()
			rest, err := io.ReadAll(cl.br)
			if err == nil && strings.HasSuffix(string(rest), "0\r\n\r\n") {
				t.Fatalf("the stalled body ended as if whole: %q", rest)
			}
			if !strings.Contains(string(rest), "hello") {
				t.Errorf("client got %q (%v), want the body's start", rest, err)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
				t.Errorf("relay ended after %v, want about the 300ms backend timeout", d)
			}
			select {
			case <-closed:
			case <-time.After(testTimeout):
				t.Fatal("backend connection still open")
			}
		})
	}
}

// TestClientResetEndsStalledAnswer: a client that resets its connection
// while an answer's body is relayed ends the relay at once, long before
// the backend timeout.
func TestClientResetEndsStalledAnswer(t *testing.T) {
	for _, tc := range stalledAnswers {
		t.Run(tc.name, func(t *testing.T) {
			be, closed := startStallingBackend(t, tc.answer)
			p := startProxy(t, []string{be}, func(c *Config) { c.ResponseTimeout = time.Minute })
			cl := dial(t, p.addr)
			cl.send(tc.request)
			cl.head()
			var got []byte
			for !bytes.Contains(got, []byte("hello")) {
				b, err := cl.br.ReadByte()
				if err != nil {
					t.Fatalf("body start %q: %v", got, err)
				}
				got = append(got, b)
			}
			_ = cl.c.SetLinger(0)
			_ = cl.c.Close()
			select {
			case <-closed:
			case <-time.After(testTimeout):
				t.Fatal("backend connection still open after the client's reset")
			}
		})
	}
}

// TestPlainForwardsInterimAnswers: a backend's interim answers (103 Early
// Hints, 102) reach an HTTP/1.1 client before the final one, hop-by-hop
// fields left out (RFC 9110 §15.2); a 100 Continue does not (the proxy
// answers Expect itself), and an HTTP/1.0 client gets none.
func TestPlainForwardsInterimAnswers(t *testing.T) {
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"+
			"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nKeep-Alive: timeout=5\r\n\r\n"+
			"HTTP/1.1 102 Processing\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
	var got []int
	for {
		r := cl.head()
		got = append(got, r.Status)
		if r.Status == 103 && (r.Header.Get("Link") != "</a.css>; rel=preload" || r.Header.Get("Keep-Alive") != "") {
			t.Errorf("103 fields %v", r.Header)
		}
		if r.Status >= 200 {
			if b := cl.body(r); b != "ok" {
				t.Errorf("body %q", b)
			}
			break
		}
	}
	if fmt.Sprint(got) != "[103 102 200]" {
		t.Errorf("answers %v, want [103 102 200]", got)
	}

	old := dial(t, p.addr)
	old.send("GET / HTTP/1.0\r\nHost: example.test\r\n\r\n")
	if r := old.head(); r.Status != 200 {
		t.Errorf("HTTP/1.0 client got %d first, want the final 200", r.Status)
	}
}

// TestPlainInterimLeavesNoDeadline: forwarding an interim answer leaves no
// write deadline behind: an answer whose body comes slower than the
// header timeout after a 103 still arrives whole.
func TestPlainInterimLeavesNoDeadline(t *testing.T) {
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
		time.Sleep(800 * time.Millisecond)
		_, _ = io.WriteString(c, "world")
	})
	p := startProxy(t, []string{be}, func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	cl := dial(t, p.addr)
	cl.send("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
	if r := cl.head(); r.Status != 103 {
		t.Fatalf("first answer %d, want 103", r.Status)
	}
	if r := cl.head(); r.Status != 200 {
		t.Fatalf("final answer %d", r.Status)
	}
	if b := cl.readN(10); b != "helloworld" {
		t.Fatalf("body %q", b)
	}
}

// TestPlainInterimEveryRequest: every request on a keep-alive connection
// gets its interim answers, not only the first.
func TestPlainInterimEveryRequest(t *testing.T) {
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		for {
			_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			if _, err := http1.ReadRequestHead(br, 0); err != nil {
				return
			}
		}
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	for i := 1; i <= 3; i++ {
		cl.send("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
		r := cl.head()
		if r.Status != 103 {
			t.Errorf("request %d: first answer %d, want 103", i, r.Status)
		}
		for r.Status < 200 {
			r = cl.head()
		}
		if b := cl.body(r); b != "ok" {
			t.Fatalf("request %d: body %q", i, b)
		}
	}
}
