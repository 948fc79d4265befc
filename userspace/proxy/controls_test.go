package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/proxyproto"
)

// scrape returns GET /metrics as "name{labels}" → value.
func scrape(t *testing.T, p *Proxy) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	p.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return parseMetrics(t, rec.Body.String())
}

func parseMetrics(t *testing.T, text string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// expect503 checks a refused client's answer.
func expect503(t *testing.T, addr, msg string) {
	t.Helper()
	cl := dial(t, addr)
	cl.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp := cl.head()
	body := cl.body(resp)
	if resp.Status != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, msg) {
		t.Fatalf("refused client got %d Retry-After %q body %q; want 503, Retry-After 1, %q", resp.Status, resp.Header.Get("Retry-After"), body, msg)
	}
}

func TestMaxConns(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.MaxConns = 2 })
	ws, _ := wsDial(t, p.addr, nil) // spliced: still counts
	keep := dial(t, p.addr)         // open, not spliced
	keep.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if r := keep.head(); r.Status != 200 {
		t.Fatalf("second connection: %d", r.Status)
	}
	keep.body(&http1.ResponseHead{ContentLength: int64(len("plain from a"))})
	expect503(t, p.addr, "connection limit reached")

	ws.Close()
	deadline := time.Now().Add(testTimeout)
	for p.limiter.Stats().Conns != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("limiter still counts %d connections after the WebSocket closed", p.limiter.Stats().Conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	wsDial(t, p.addr, nil)
	if got := scrape(t, p.Proxy)[`wsplice_limit_rejections_total{reason="max_conns"}`]; got != 1 {
		t.Errorf("max_conns rejections = %v, want 1", got)
	}
}

func TestMaxConnsL4Closes(t *testing.T) {
	be := startRawEcho(t, false)
	p := startProxy(t, []string{be}, func(c *Config) {
		c.TCPListen, c.MaxConns = []string{"127.0.0.1:0"}, 1
	})
	addr := p.TCPAddrs()[0].String()
	a := dial(t, addr)
	a.send("x")
	if got := a.readN(1); got != "x" {
		t.Fatal(got)
	}
	b := dial(t, addr)
	b.expectClosed()
}

func TestConnRate(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.MaxConnRate = 3 })
	for range 3 {
		wsDial(t, p.addr, nil)
	}
	expect503(t, p.addr, "connection rate limit")
	time.Sleep(400 * time.Millisecond) // a token back
	wsDial(t, p.addr, nil)
}

func TestPerIPLimits(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.MaxConnsPerIP = 1 })
	wsDial(t, p.addr, nil)
	expect503(t, p.addr, "connection limit for this address reached")
	p2 := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.MaxConnRatePerIP = 1 })
	wsDial(t, p2.addr, nil)
	expect503(t, p2.addr, "connection rate limit for this address")
}

// startRawEcho answers a WebSocket handshake with 101 (when ws) and then
// echoes raw bytes until EOF; or, for L4, echoes from the first byte.
func startRawEcho(t *testing.T, ws bool) string {
	t.Helper()
	if ws {
		return startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
			_ = c.SetDeadline(time.Time{})
			_, _ = io.WriteString(c, switching(req))
			_, _ = io.Copy(c, br)
		})
	}
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
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestMetricsBytes: bytes per backend each way equal what the test
// exchanged after the handshake, while the pair lives and after it ends;
// connection gauges and counters follow.
func TestMetricsBytes(t *testing.T) {
	be := startRawEcho(t, true)
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send(upgradeRequest())
	if r := cl.head(); r.Status != 101 {
		t.Fatalf("status %d", r.Status)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if _, err := cl.c.Write(payload); err != nil {
		t.Fatal(err)
	}
	cl.readN(len(payload))
	n := float64(len(payload))
	labels := `{backend="` + be + `",dataplane="userspace",direction="to_backend"}`
	labelsBack := `{backend="` + be + `",dataplane="userspace",direction="to_client"}`
	// The copier counts a chunk once its splice(2) returns, which can be
	// after the client has read the bytes: wait for the count, bounded.
	m := scrape(t, p.Proxy)
	for deadline := time.Now().Add(testTimeout); time.Now().Before(deadline) &&
		(m["wsplice_backend_bytes_total"+labels] != n || m["wsplice_backend_bytes_total"+labelsBack] != n); {
		time.Sleep(5 * time.Millisecond)
		m = scrape(t, p.Proxy)
	}
	if m["wsplice_backend_bytes_total"+labels] != n || m["wsplice_backend_bytes_total"+labelsBack] != n {
		t.Errorf("live pair: bytes %v / %v, want %v each way", m["wsplice_backend_bytes_total"+labels], m["wsplice_backend_bytes_total"+labelsBack], n)
	}
	live := `wsplice_connections{backend="` + be + `",dataplane="userspace",listener="` + p.addr + `",state="spliced"}`
	if m[live] != 1 || m[`wsplice_handshakes_total{status="101"}`] != 1 || m[`wsplice_connections_accepted_total{listener="`+p.addr+`"}`] != 1 {
		t.Errorf("live %v handshakes %v accepted %v", m[live], m[`wsplice_handshakes_total{status="101"}`], m[`wsplice_connections_accepted_total{listener="`+p.addr+`"}`])
	}
	if m[`wsplice_handshake_duration_seconds_count{result="spliced"}`] != 1 {
		t.Errorf("handshake latency count %v", m[`wsplice_handshake_duration_seconds_count{result="spliced"}`])
	}
	// End the pair: the totals stay.
	_ = cl.c.CloseWrite()
	if b, _ := io.ReadAll(cl.br); len(b) != 0 {
		t.Fatalf("%d bytes after the echo", len(b))
	}
	deadline := time.Now().Add(testTimeout)
	for {
		m = scrape(t, p.Proxy)
		if m[live] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spliced gauge still %v after the pair ended", m[live])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m["wsplice_backend_bytes_total"+labels] != n || m["wsplice_backend_bytes_total"+labelsBack] != n {
		t.Errorf("ended pair: bytes %v / %v, want %v each way", m["wsplice_backend_bytes_total"+labels], m["wsplice_backend_bytes_total"+labelsBack], n)
	}
	if got := m[`wsplice_connections_spliced_total{backend="`+be+`",dataplane="userspace",listener="`+p.addr+`"}`]; got != 1 {
		t.Errorf("spliced total %v", got)
	}
}

// TestMetricsBackendHealth: the health hook is read at each scrape.
func TestMetricsBackendHealth(t *testing.T) {
	p := startProxy(t, nil, nil)
	if _, ok := scrape(t, p.Proxy)[`wsplice_backend_up{backend="10.0.0.1:80"}`]; ok {
		t.Fatal("backend_up without a hook")
	}
	p.SetBackendStates(func() []BackendState { return []BackendState{{Addr: "10.0.0.1:80", Up: true}, {Addr: "10.0.0.2:80"}} })
	m := scrape(t, p.Proxy)
	if m[`wsplice_backend_up{backend="10.0.0.1:80"}`] != 1 || m[`wsplice_backend_up{backend="10.0.0.2:80"}`] != 0 {
		t.Fatalf("backend_up: %v", m)
	}
}

// TestProxyProtocolL4: a backend marked for PROXY v2 reads the header,
// with the client's addresses, before the client's first byte; another
// backend gets none.
func TestProxyProtocolL4(t *testing.T) {
	got := make(chan proxyproto.Decoded, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 0, 256)
		for {
			b := make([]byte, 64)
			n, err := c.Read(b)
			buf = append(buf, b[:n]...)
			d, derr := proxyproto.Decode(buf)
			if derr == nil {
				got <- d
				_, _ = c.Write(buf[d.Len:])
				_, _ = io.Copy(c, c)
				return
			}
			if err != nil || !errors.Is(derr, proxyproto.ErrShort) {
				close(got)
				return
			}
		}
	}()
	be := ln.Addr().String()
	p := startProxy(t, []string{be + ",proxy-protocol=v2"}, func(c *Config) {
		c.TCPListen = []string{"127.0.0.1:0"}
	})
	cl := dial(t, p.TCPAddrs()[0].String())
	cl.send("hello")
	d, ok := <-got
	if !ok {
		t.Fatal("backend got no valid PROXY header")
	}
	if d.Src != cl.c.LocalAddr().(*net.TCPAddr).AddrPort() || d.Dst != netip.MustParseAddrPort(p.TCPAddrs()[0].String()) {
		t.Errorf("header src %v dst %v; client %v → %v", d.Src, d.Dst, cl.c.LocalAddr(), p.TCPAddrs()[0])
	}
	if s := cl.readN(5); s != "hello" {
		t.Errorf("echo %q", s)
	}
}

// TestReload: a bad configuration changes nothing; a good one changes the
// backends for new connections while an established one keeps echoing;
// listener changes are reported as needing a restart.
func TestReload(t *testing.T) {
	a, b := startWSBackend(t, "a"), startWSBackend(t, "b")
	p := startProxy(t, []string{a}, nil)
	old, _ := wsDial(t, p.addr, nil)

	bad := p.Config()
	bad.Backends = []string{b, "no-port"}
	bad.MaxConns = 1
	if _, err := p.Reload(bad); err == nil {
		t.Fatal("bad configuration accepted")
	}
	if _, resp := wsDial(t, p.addr, nil); resp.Header.Get("X-Backend-Name") != "a" {
		t.Fatalf("after a refused reload, backend %q", resp.Header.Get("X-Backend-Name"))
	}
	if p.limiter.Config().MaxConns != 0 {
		t.Fatal("refused reload changed the limits")
	}

	good := p.Config()
	good.Backends = []string{b}
	good.Listen = []string{"127.0.0.1:1"}
	good.HeaderTimeout = 3 * time.Second
	ignored, err := p.Reload(good)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ignored, ",") != "listen" {
		t.Errorf("ignored %v, want [listen]", ignored)
	}
	if p.Config().HeaderTimeout != 3*time.Second || p.Config().Listen[0] == "127.0.0.1:1" {
		t.Errorf("config in force: %+v", p.Config())
	}
	for range 2 {
		if _, resp := wsDial(t, p.addr, nil); resp.Header.Get("X-Backend-Name") != "b" {
			t.Fatalf("after reload, backend %q", resp.Header.Get("X-Backend-Name"))
		}
	}
	if err := old.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := old.ReadMessage(); err != nil || string(msg) != "still here" {
		t.Fatalf("established connection after reload: %q %v", msg, err)
	}
	// Balance, sticky cookie and health checks change live too. Both
	// backends are taken down (connect failures), and passive probing
	// would bring them back in an hour; the reloaded check does at once.
	live := p.Config()
	live.Backends = []string{a, b}
	live.Health = backend.HealthConfig{Interval: time.Hour, Fall: 1}
	if _, err := p.Reload(live); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{a, b} {
		p.Pool().ReportConnect(p.Pool().Backend(addr), errors.New("test: refused"))
		if st := p.Pool().Backend(addr).State(); st != backend.StateDown {
			t.Fatalf("%s after one failure with the reloaded fall 1: %v, want down", addr, st)
		}
	}
	live.Balance = "hash-header:X-K"
	live.StickyCookie = "sb"
	live.Health = backend.HealthConfig{Check: "tcp", Interval: 20 * time.Millisecond, Rise: 1}
	if ignored, err := p.Reload(live); err != nil || len(ignored) > 0 {
		t.Fatalf("reload: ignored %v, err %v", ignored, err)
	}
	if st := p.Pool().Status(); st[0].Health.Check != "tcp" {
		t.Errorf("health check after reload: %q, want tcp", st[0].Health.Check)
	}
	waitFor(t, "both backends up by the reloaded check", func() bool {
		st := p.Pool().Status()
		return len(st) == 2 && st[0].Health.Healthy && st[1].Health.Healthy
	})
	seen := map[string]bool{}
	for range 6 {
		_, resp := wsDial(t, p.addr, http.Header{"X-K": {"same"}})
		seen[resp.Header.Get("X-Backend-Name")] = true
		if !strings.HasPrefix(resp.Header.Get("Set-Cookie"), "sb=") {
			t.Fatalf("no sticky cookie after reload: %q", resp.Header.Get("Set-Cookie"))
		}
	}
	if len(seen) != 1 {
		t.Errorf("one hash key on backends %v, want one", seen)
	}

	m := scrape(t, p.Proxy)
	if m[`wsplice_config_reloads_total{result="success"}`] != 3 || m[`wsplice_config_reloads_total{result="failure"}`] != 1 {
		t.Errorf("reload counters: %v %v", m[`wsplice_config_reloads_total{result="success"}`], m[`wsplice_config_reloads_total{result="failure"}`])
	}
}

// TestDrain: after shutdown starts, a spliced WebSocket keeps working
// until the drain timeout, and Serve returns then; one that ends earlier
// ends the drain early.
func TestDrain(t *testing.T) {
	be := startWSBackend(t, "a")
	for _, early := range []bool{false, true} {
		cfg := Config{Listen: []string{"127.0.0.1:0"}, Backends: []string{be}, DrainTimeout: 1500 * time.Millisecond}
		log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
		dp := dataplane.NewUserspace(log)
		p, err := New(cfg, dp, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Serve(ctx); close(done) }()
		ws, _ := wsDial(t, p.Addrs()[0].String(), nil)
		start := time.Now()
		cancel()
		time.Sleep(300 * time.Millisecond)
		if _, err := net.DialTimeout("tcp", p.Addrs()[0].String(), time.Second); err == nil {
			t.Error("listener still accepting during the drain")
		}
		if err := ws.WriteMessage(websocket.TextMessage, []byte("draining")); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "draining" {
			t.Fatalf("during the drain: %q %v", msg, err)
		}
		if early {
			ws.Close()
		}
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatal("Serve did not return after the drain timeout")
		}
		took := time.Since(start)
		if early && took > time.Second {
			t.Errorf("drain took %v after the last connection ended", took)
		}
		if !early && took < 1400*time.Millisecond {
			t.Errorf("drain ended after %v with a live connection, want the 1.5s timeout", took)
		}
		_ = dp.Close()
		if !early {
			_ = ws.SetReadDeadline(time.Now().Add(testTimeout))
			if _, _, err := ws.ReadMessage(); err == nil {
				t.Error("connection still open after the data plane closed")
			}
		}
	}
}

func TestKeepAliveOptions(t *testing.T) {
	for _, off := range []bool{false, true} {
		p := startProxy(t, nil, func(c *Config) { c.TCPKeepAliveOff = off })
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := p.dial(context.Background(), ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := c.SyscallConn()
		var on, idle, intvl, cnt int
		_ = raw.Control(func(fd uintptr) {
			on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			intvl, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
			cnt, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		})
		c.Close()
		if off && on != 0 {
			t.Errorf("keepalive off: SO_KEEPALIVE %d", on)
		}
		if !off && (on == 0 || idle != 30 || intvl != 10 || cnt != 3) {
			t.Errorf("keepalive on: SO_KEEPALIVE %d idle %d interval %d count %d", on, idle, intvl, cnt)
		}
	}
}

// TestKeepAliveAccepted: accepted client sockets carry the configured
// keepalive (copied from the listener), also after a reload turns it off
// or on again.
func TestKeepAliveAccepted(t *testing.T) {
	p := startProxy(t, nil, nil)
	// accepted returns the keepalive options of the proxy's side of a
	// new client connection.
	accepted := func() (on, idle, intvl, cnt int) {
		t.Helper()
		c := dial(t, p.addr)
		defer c.c.Close()
		local := c.c.LocalAddr().String()
		deadline := time.Now().Add(testTimeout)
		for {
			p.mu.Lock()
			var conn *dataplane.Conn
			for cc := range p.conns {
				if cc.conn.RemoteAddr().String() == local {
					conn = cc.conn
				}
			}
			p.mu.Unlock()
			read := func(fd uintptr) {
				on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
				idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
				intvl, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
				cnt, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
			}
			if conn != nil {
				raw, _ := conn.SyscallConn()
				_ = raw.Control(read)
				return
			}
			// A silent connection waits in the handshake loop.
			found := false
			if p.hsl != nil {
				p.hsl.mu.Lock()
				for _, h := range p.hsl.conns {
					if h.loopFD != h.client.FD {
						continue
					}
					if sa, err := unix.Getpeername(h.client.FD); err == nil {
						if a, ok := sa.(*unix.SockaddrInet4); ok && fmt.Sprintf("%d.%d.%d.%d:%d", a.Addr[0], a.Addr[1], a.Addr[2], a.Addr[3], a.Port) == local {
							read(uintptr(h.client.FD))
							found = true
						}
					}
				}
				p.hsl.mu.Unlock()
			}
			if found {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("connection not registered by the proxy")
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i, off := range []bool{false, true, false} {
		if i > 0 {
			cfg := p.Config()
			cfg.TCPKeepAliveOff = off
			if _, err := p.Reload(cfg); err != nil {
				t.Fatal(err)
			}
		}
		on, idle, intvl, cnt := accepted()
		if off && on != 0 {
			t.Errorf("step %d, keepalive off: SO_KEEPALIVE %d", i, on)
		}
		if !off && (on == 0 || idle != 30 || intvl != 10 || cnt != 3) {
			t.Errorf("step %d, keepalive on: SO_KEEPALIVE %d idle %d interval %d count %d", i, on, idle, intvl, cnt)
		}
	}
}

// TestSameListeners: a reload that reorders or respells the listeners
// changes nothing and must not report them as needing a restart.
func TestSameListeners(t *testing.T) {
	for _, tc := range []struct {
		a, b []string
		same bool
	}{
		{[]string{"127.0.0.1:8080", "127.0.0.1:8081"}, []string{"127.0.0.1:8081", "127.0.0.1:8080"}, true},
		{[]string{"127.0.0.1:08080"}, []string{"127.0.0.1:8080"}, true},
		{[]string{"[0:0::1]:80"}, []string{"[::1]:80"}, true},
		{[]string{":8080"}, []string{":8080"}, true},
		{nil, []string{}, true},
		{[]string{"127.0.0.1:8080"}, []string{"127.0.0.1:8081"}, false},
		{[]string{"127.0.0.1:8080"}, []string{"127.0.0.1:8080", "127.0.0.1:8081"}, false},
		{[]string{"127.0.0.1:8080"}, []string{"127.0.0.2:8080"}, false},
	} {
		if got := sameListeners(tc.a, tc.b); got != tc.same {
			t.Errorf("sameListeners(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}
