package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	wsrules "github.com/wsplice/wsplice/userspace/websocket"
)

// testTimeout bounds every blocking step of a test.
const testTimeout = 5 * time.Second

const testKey = "dGhlIHNhbXBsZSBub25jZQ=="

type testProxy struct {
	*Proxy
	addr string
	dp   dataplane.Dataplane
	stop func()
}

// shutdownForTest stops the proxy now instead of at cleanup.
func (p *testProxy) shutdownForTest(t *testing.T) {
	t.Helper()
	p.stop()
}

// startProxy runs a proxy with the userspace data plane on loopback and
// stops it when the test ends, failing if shutdown hangs.
func startProxy(t testing.TB, backends []string, mod func(*Config)) *testProxy {
	t.Helper()
	cfg := Config{Listen: []string{"127.0.0.1:0"}, Backends: backends, ShutdownTimeout: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	errs := &errorLines{}
	log := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), errs)).Level(zerolog.WarnLevel)
	dp := dataplane.NewUserspace(log)
	p, err := New(cfg, dp, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(3 * testTimeout):
				t.Error("Serve did not return after cancel")
			}
			_ = dp.Close()
			if n := errs.count.Load(); n > 0 {
				t.Errorf("%d error lines logged (see above)", n)
			}
		})
	}
	t.Cleanup(stop)
	return &testProxy{Proxy: p, addr: p.Addrs()[0].String(), dp: dp, stop: stop}
}

// errorLines counts error-level log lines: none is expected in these tests.
type errorLines struct{ count atomic.Int32 }

func (e *errorLines) Write(p []byte) (int, error) {
	if strings.Contains(string(p), `"level":"error"`) {
		e.count.Add(1)
	}
	return len(p), nil
}

// startWSBackend runs a gorilla WebSocket echo server that names itself in
// X-Backend-Name and picks the first subprotocol offered.
func startWSBackend(t *testing.T, name string) string {
	t.Helper()
	up := websocket.Upgrader{Subprotocols: []string{"chat", "superchat"}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			w.Header().Set("X-Backend-Name", name)
			fmt.Fprintf(w, "plain from %s", name)
			return
		}
		c, err := up.Upgrade(w, r, http.Header{"X-Backend-Name": {name}})
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})
	return startHTTPServer(t, mux)
}

func startHTTPServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// startRawBackend runs handle for every connection to a loopback listener.
// The handler gets the connection, a reader on it, and the request head
// already read with the strict parser.
func startRawBackend(t testing.TB, handle func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testTimeout))
				br := bufio.NewReader(c)
				req, err := http1.ReadRequestHead(br, 0)
				if err != nil {
					return
				}
				handle(c.(*net.TCPConn), br, req)
			}()
		}
	}()
	return ln.Addr().String()
}

// switching is a valid 101 for req, with extra fields.
func switching(req *http1.RequestHead, extra ...string) string {
	s := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		wsrules.AcceptKey(req.Header.Get("Sec-WebSocket-Key")) + "\r\n"
	for _, e := range extra {
		s += e + "\r\n"
	}
	return s + "\r\n"
}

// upgradeRequest is a valid handshake with extra fields.
func upgradeRequest(extra ...string) string {
	s := "GET /chat?room=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + testKey + "\r\nSec-WebSocket-Version: 13\r\n"
	for _, e := range extra {
		s += e + "\r\n"
	}
	return s + "\r\n"
}

type client struct {
	t  *testing.T
	c  *net.TCPConn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	return &client{t: t, c: c.(*net.TCPConn), br: bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) head() *http1.ResponseHead {
	c.t.Helper()
	resp, err := http1.ReadResponseHead(c.br, 0)
	if err != nil {
		c.t.Fatalf("read response head: %v", err)
	}
	return resp
}

// body reads a Content-Length body.
func (c *client) body(resp *http1.ResponseHead) string {
	c.t.Helper()
	if resp.ContentLength < 0 {
		c.t.Fatalf("response without Content-Length: %+v", resp)
	}
	b := make([]byte, resp.ContentLength)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatal(err)
	}
	return string(b)
}

func (c *client) readN(n int) string {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read %d bytes: %v (got %q)", n, err, b)
	}
	return string(b)
}

// expectClosed checks the proxy closes the connection.
// expectError reads an error answer to a request sent at start: its
// status must be status, it must come between lo and hi after start, and
// the connection must close after it.
func (c *client) expectError(what string, start time.Time, status int, lo, hi time.Duration) {
	c.t.Helper()
	resp := c.head()
	if resp.Status != status {
		c.t.Fatalf("%s: status %d, want %d", what, resp.Status, status)
	}
	if d := time.Since(start); d < lo || d > hi {
		c.t.Errorf("%s: %d after %v, want between %v and %v", what, status, d, lo, hi)
	}
	c.body(resp)
	c.expectClosed()
}

func (c *client) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c.br)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("connection not closed: %v", err)
	}
	if len(b) > 0 {
		c.t.Fatalf("unexpected bytes before close: %q", b)
	}
}
