package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/tests/refused"
	"github.com/wsplice/wsplice/userspace/http1"
)

// bothPaths runs f with the handshake loop on and off: what a client sees
// must not depend on it.
func bothPaths(t *testing.T, f func(t *testing.T, loop bool, mod func(*Config))) {
	for _, loop := range []bool{true, false} {
		name := "loop"
		if !loop {
			name = "goroutines"
		}
		t.Run(name, func(t *testing.T) {
			f(t, loop, func(c *Config) { c.NoHandshakeLoop = !loop })
		})
	}
}

// TestHandshakeLoopEcho: the loop splices a plain handshake itself (the
// counter says which path took it) and bytes flow both ways.
func TestHandshakeLoopEcho(t *testing.T) {
	bothPaths(t, func(t *testing.T, loop bool, mod func(*Config)) {
		p := startProxy(t, []string{startWSBackend(t, "a")}, mod)
		c, _ := wsDial(t, p.addr, nil)
		if err := c.WriteMessage(1, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.ReadMessage(); err != nil || string(got) != "ping" {
			t.Fatalf("echo %q, %v", got, err)
		}
		want := uint64(0)
		if loop {
			want = 1
		}
		// Counted once Splice returns, which may be after the echo.
		deadline := time.Now().Add(testTimeout)
		for st := p.Stats(); st.HandshakesLoopTotal != want || st.SplicedTotal != 1; st = p.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("stats %+v, want %d handshake(s) in the loop", st, want)
			}
			time.Sleep(time.Millisecond)
		}
		if st := p.Stats(); st.HandshakesTotal != 1 || st.HandshakeErrorsTotal != 0 || st.Connections != 0 {
			t.Errorf("stats %+v", st)
		}
	})
}

// TestHandshakeLoopHandOver covers every turn where the loop hands the
// connection to the goroutine path, each against the goroutine path alone.
func TestHandshakeLoopHandOver(t *testing.T) {
	silent := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.Copy(io.Discard, br) // never answers
	})
	interim := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		time.Sleep(20 * time.Millisecond) // in a read of its own
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+switching(req)+"FRAME")
		_, _ = io.Copy(io.Discard, br)
	})
	slowHead := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		s := switching(req)
		_, _ = io.WriteString(c, s[:20])
		time.Sleep(30 * time.Millisecond)
		_, _ = io.WriteString(c, s[20:])
		_, _ = io.Copy(io.Discard, br)
	})
	hangUp := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		_, _ = io.WriteString(c, "HTTP/1.1 101 Swi")
	})
	refusing := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		if req.Header.Get("Upgrade") != "" {
			_, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
			return
		}
		// The client's next request, plain: proxied on a connection of
		// its own.
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"+req.Target[1:5])
	})
	ws := startWSBackend(t, "a")
	for _, tc := range []struct {
		name     string
		backends []string
		answer   time.Duration // ResponseTimeout, if set
		send     []string      // written with a pause between
		status   int
		after    string // bytes after the head (101) or the body
	}{
		{"backend never answers: 504", []string{silent}, 300 * time.Millisecond, []string{upgradeRequest()}, 504, ""},
		{"dead backend then a live one", []string{refused.Addr(t), ws}, 0, []string{upgradeRequest()}, 101, ""},
		{"only dead backends: 502", []string{refused.Addr(t), refused.Addr(t)}, 0, []string{upgradeRequest()}, 502, ""},
		{"interim answers before the 101", []string{interim}, 0, []string{upgradeRequest()}, 101, "FRAME"},
		{"101 head in two reads", []string{slowHead}, 0, []string{upgradeRequest()}, 101, ""},
		{"backend closes mid-head: 502", []string{hangUp}, 0, []string{upgradeRequest()}, 502, ""},
		{"request head in two writes", []string{ws}, 0, []string{upgradeRequest()[:30], upgradeRequest()[30:]}, 101, ""},
		{"backend by name", []string{strings.Replace(ws, "127.0.0.1", "localhost", 1)}, 0, []string{upgradeRequest()}, 101, ""},
		{"plain request", []string{ws}, 0, []string{"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"}, 200, "plain from a"},
		{"bare LF head: 400", []string{ws}, 0, []string{strings.ReplaceAll(upgradeRequest(), "\r\n", "\n")}, 400, ""},
		{"refusal relayed, then the next request", []string{refusing}, 0, []string{upgradeRequest() + "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"}, 403, "no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.backends[0], "localhost") {
				// A machine without /etc/hosts (the test VM) has no
				// localhost to resolve.
				if addrs, err := net.LookupHost("localhost"); err != nil || !slices.Contains(addrs, "127.0.0.1") {
					t.Skipf("localhost does not resolve to 127.0.0.1 here (%v, %v)", addrs, err)
				}
			}
			bothPaths(t, func(t *testing.T, loop bool, mod func(*Config)) {
				p := startProxy(t, tc.backends, func(c *Config) {
					mod(c)
					if tc.answer > 0 {
						c.ResponseTimeout = tc.answer
					}
				})
				cl := dial(t, p.addr)
				for i, s := range tc.send {
					if i > 0 {
						time.Sleep(30 * time.Millisecond)
					}
					cl.send(s)
				}
				resp := cl.head()
				if resp.Status != tc.status {
					t.Fatalf("status %d, want %d", resp.Status, tc.status)
				}
				switch {
				case tc.status == 101:
					if tc.after != "" {
						if got := cl.readN(len(tc.after)); got != tc.after {
							t.Errorf("after the 101: %q, want %q", got, tc.after)
						}
					}
					// Counted once the pair is handed over, which may
					// come just after the client has its 101.
					deadline := time.Now().Add(testTimeout)
					for st := p.Stats(); st.SplicedTotal != 1 || st.HandshakeErrorsTotal != 0; st = p.Stats() {
						if time.Now().After(deadline) {
							t.Fatalf("stats %+v", st)
						}
						time.Sleep(time.Millisecond)
					}
				case tc.status == 403:
					if got := cl.body(resp); got != tc.after {
						t.Errorf("body %q, want %q", got, tc.after)
					}
					next := cl.head()
					if got := cl.body(next); next.Status != 200 || got != "next" {
						t.Errorf("next request: %d %q", next.Status, got)
					}
				case tc.status == 200:
					if got := cl.body(resp); got != tc.after {
						t.Errorf("body %q, want %q", got, tc.after)
					}
				default:
					cl.body(resp)
					cl.expectClosed()
					if st := p.Stats(); st.HandshakesTotal != 1 || st.HandshakeErrorsTotal != 1 {
						t.Errorf("handshakes %d errors %d, want 1 1", st.HandshakesTotal, st.HandshakeErrorsTotal)
					}
				}
				if st := p.Stats(); st.HandshakesLoopTotal != 0 && tc.status == 101 && !loop {
					t.Errorf("loop counted %d with the loop off", st.HandshakesLoopTotal)
				}
			})
		})
	}
}

// TestHandshakeLoopShutdown: a handshake waiting in the loop for its
// backend when shutdown's grace runs out is closed, and Serve returns.
func TestHandshakeLoopShutdown(t *testing.T) {
	entered := make(chan struct{}, 1)
	silent := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		entered <- struct{}{}
		_, _ = io.Copy(io.Discard, br)
	})
	p := startProxy(t, []string{silent}, func(c *Config) { c.ResponseTimeout = 30 * time.Second })
	cl := dial(t, p.addr)
	cl.send(upgradeRequest())
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("the backend got no request")
	}
	start := time.Now()
	p.shutdownForTest(t) // ShutdownTimeout is 1s
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if _, err := io.ReadAll(cl.br); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Errorf("client connection not closed: %v", err)
	}
}

// TestHandshakeLoopShutdownIdle: shutdown closes a connection that has
// sent nothing yet at once, as it closes idle connections on the goroutine
// path, instead of waiting for its head timeout.
func TestHandshakeLoopShutdownIdle(t *testing.T) {
	bothPaths(t, func(t *testing.T, loop bool, mod func(*Config)) {
		p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) {
			mod(c)
			c.HeaderTimeout = 20 * time.Second
			c.ShutdownTimeout = 10 * time.Second
		})
		cl := dial(t, p.addr)
		deadline := time.Now().Add(testTimeout)
		for p.Stats().Connections != 1 {
			if time.Now().After(deadline) {
				t.Fatal("connection not counted")
			}
			time.Sleep(time.Millisecond)
		}
		start := time.Now()
		p.shutdownForTest(t)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("shutdown took %v with an idle connection", d)
		}
		if _, err := io.ReadAll(cl.br); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Errorf("idle connection not closed: %v", err)
		}
	})
}

// FuzzLoopHeads: the loop parses heads from whatever bytes have arrived so
// far. For any input and any point it has arrived up to, the loop's parse
// of the prefix must either say "incomplete" (io.ErrUnexpectedEOF: wait for
// more) or agree with the parse of the whole input, for requests and for
// answers (with their interim heads), and never take more bytes than the
// prefix holds.
func FuzzLoopHeads(f *testing.F) {
	f.Add([]byte(upgradeRequest()), 30)
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nFRAME"), 26)
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 5)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), 40)
	p := &Proxy{cfg: Config{MaxHeaderBytes: 1024}}
	p.readers.New = func() any { return bufio.NewReaderSize(nil, p.cfg.MaxHeaderBytes) }
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		if len(b) > 4096 {
			return
		}
		if cut < 0 {
			cut = -cut
		}
		cut %= len(b) + 1
		// Requests.
		whole, wn, werr := parseRequest(p, b)
		part, pn, perr := parseRequest(p, b[:cut])
		if pn > cut || wn > len(b) {
			t.Fatalf("request: consumed %d of %d, %d of %d", pn, cut, wn, len(b))
		}
		if perr == nil && (werr != nil || pn != wn || part.Method != whole.Method || part.Target != whole.Target || len(part.Header) != len(whole.Header)) {
			t.Fatalf("request: prefix of %d parsed as %+v (%d), whole as %+v (%d, %v)", cut, part, pn, whole, wn, werr)
		}
		if perr != nil && !errors.Is(perr, io.ErrUnexpectedEOF) && !errors.Is(perr, io.EOF) && werr == nil {
			t.Fatalf("request: prefix of %d failed (%v), the whole parsed", cut, perr)
		}
		// Answers.
		wr, wn, werr := parseResponse(p, b)
		pr, pn, perr := parseResponse(p, b[:cut])
		if pn > cut || wn > len(b) {
			t.Fatalf("answer: consumed %d of %d, %d of %d", pn, cut, wn, len(b))
		}
		if perr == nil && (werr != nil || pn != wn || pr.Status != wr.Status || len(pr.Header) != len(wr.Header)) {
			t.Fatalf("answer: prefix of %d parsed as %+v (%d), whole as %+v (%d, %v)", cut, pr, pn, wr, wn, werr)
		}
		if perr != nil && !errors.Is(perr, io.ErrUnexpectedEOF) && !errors.Is(perr, io.EOF) && werr == nil {
			t.Fatalf("answer: prefix of %d failed (%v), the whole parsed", cut, perr)
		}
	})
}

// TestHandshakeLoopKeepAliveSpliced: on the userspace data plane the loop's
// sockets become Go conns at splice (net.FileConn, which sets Go's own
// keepalive): both of a spliced pair keep wsplice's keepalive instead.
func TestHandshakeLoopKeepAliveSpliced(t *testing.T) {
	be := startWSBackend(t, "a")
	p := startProxy(t, []string{be}, nil)
	c, _ := wsDial(t, p.addr, nil)
	if err := c.WriteMessage(1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.HandshakesLoopTotal != 1 {
		t.Fatalf("handshake not served by the loop: %+v", st)
	}
	// The proxy's two sockets: the one whose peer is the client, the one
	// whose peer is the backend (dialled by the proxy, not accepted).
	want := map[string]bool{c.LocalAddr().String(): false, be: false}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		a, ok := sa.(*unix.SockaddrInet4)
		if err != nil || !ok {
			continue
		}
		peer := netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
		if _, ok := want[peer]; !ok {
			continue
		}
		if peer == be {
			// The backend's listener is in this process too: only the
			// socket that connected to it, not one accepted by it.
			la, _ := unix.Getsockname(fd)
			if l4, ok := la.(*unix.SockaddrInet4); ok && netip.AddrPortFrom(netip.AddrFrom4(l4.Addr), uint16(l4.Port)).String() == be {
				continue
			}
		}
		on, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		intvl, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		cnt, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		if on != 1 || idle != int(KeepAliveIdle/time.Second) || intvl != int(KeepAliveInterval/time.Second) || cnt != KeepAliveCount {
			t.Errorf("socket to %s: keepalive %d idle %d interval %d count %d", peer, on, idle, intvl, cnt)
		}
		want[peer] = true
	}
	for peer, seen := range want {
		if !seen {
			t.Errorf("no proxy socket to %s found", peer)
		}
	}
}
