package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/topology"
)

// Two more echo backends, one in each backend namespace, on another port.
var (
	backend3Addr = netip.AddrPortFrom(topology.Backend1Addr, backendPort+1).String()
	backend4Addr = netip.AddrPortFrom(topology.Backend2Addr, backendPort+1).String()
)

// poolConn is one long-lived WebSocket of the pool tests and what it saw.
type poolConn struct {
	ws      *websocket.Conn
	backend string // X-Backend-Name of the 101
	msgs    atomic.Int64
	err     error // first exchange error
}

// openConns opens n WebSockets through d, parallel at a time, and checks
// that each one really reaches the backend its 101 names.
func openConns(t *testing.T, d *daemon, n, parallel int) []*poolConn {
	t.Helper()
	conns := make([]*poolConn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/pool", nil)
			if err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
				return
			}
			c := &poolConn{ws: ws, backend: resp.Header.Get("X-Backend-Name")}
			conns[i] = c
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			msg := "hello " + c.backend
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
				return
			}
			if _, got, err := ws.ReadMessage(); err != nil || string(got) != msg {
				errs <- fmt.Errorf("connection %d: echo %q, %v", i, got, err)
			}
			ws.SetReadDeadline(time.Time{})
		}()
	}
	wg.Wait()
	close(errs)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.ws.Close()
			}
		}
	})
	for err := range errs {
		t.Fatal(err)
	}
	return conns
}

func countByBackend(conns []*poolConn) map[string]int {
	m := map[string]int{}
	for _, c := range conns {
		m[c.backend]++
	}
	return m
}

// exchange sends random binary messages on c and checks each echo byte
// for byte, pausing between them, until stop is closed or an error.
func (c *poolConn) exchange(seed uint64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, 4096)
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(100+rng.IntN(200)) * time.Millisecond):
		}
		n := 1 + rng.IntN(len(buf))
		for i := range buf[:n] {
			buf[i] = byte(rng.Uint32())
		}
		c.ws.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.ws.WriteMessage(websocket.BinaryMessage, buf[:n]); err != nil {
			c.err = fmt.Errorf("write: %w", err)
			return
		}
		_, got, err := c.ws.ReadMessage()
		if err != nil {
			c.err = fmt.Errorf("read: %w", err)
			return
		}
		if !bytes.Equal(got, buf[:n]) {
			c.err = fmt.Errorf("echo of %d bytes differs (%d bytes back)", n, len(got))
			return
		}
		c.msgs.Add(1)
	}
}

// backendStatus mirrors an entry of GET /backends.
type backendStatus struct {
	Addr        string `json:"addr"`
	Weight      int    `json:"weight"`
	State       string `json:"state"`
	ActiveConns int64  `json:"active_conns"`
	MaxConns    int    `json:"max_conns"`
	Health      struct {
		Healthy bool `json:"healthy"`
	} `json:"health"`
}

func (d *daemon) adminDo(t *testing.T, method, path, body string, want int) []byte {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+adminAddr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.admin.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s, want %d: %s", method, path, resp.Status, want, b)
	}
	return b
}

func (d *daemon) backends(t *testing.T) map[string]backendStatus {
	t.Helper()
	var list []backendStatus
	if err := json.Unmarshal(d.adminDo(t, "GET", "/backends", "", 200), &list); err != nil {
		t.Fatal(err)
	}
	m := map[string]backendStatus{}
	for _, b := range list {
		m[b.Addr] = b
	}
	return m
}

// waitBackends polls GET /backends until ok holds.
func (d *daemon) waitBackends(t *testing.T, timeout time.Duration, what string, ok func(map[string]backendStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := d.backends(t)
		if ok(m) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, GET /backends = %+v; want %s", timeout, m, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPoolLeastConn: 1,000 long-lived WebSockets spread evenly over four
// backends of equal weight by least-conn, every one reaching the backend
// it was counted on; the counts go back to zero when they close (spliced
// connections included: the data plane reports the pair's end).
func TestPoolLeastConn(t *testing.T) {
	e := newEnv(t)
	e.startEcho(t, e.topo.Backend1, backend3Addr, "backend3")
	e.startEcho(t, e.topo.Backend2, backend4Addr, "backend4")
	n := int(size(t, "WSPLICE_POOL_CONNS", 1000, 200))
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemonBackends(t, dp, []string{backend1Addr, backend2Addr, backend3Addr, backend4Addr}, "--balance", "least-conn")
		// Some connections first, closed again: least-conn must count
		// their end, or the survivors would be skewed.
		warm := openConns(t, d, 40, 8)
		for _, c := range warm[:20] {
			c.ws.Close()
		}
		conns := openConns(t, d, n, 32)
		for _, c := range warm[20:] {
			c.ws.Close()
		}
		counts := countByBackend(conns)
		t.Logf("%d connections: %v", n, counts)
		for _, name := range []string{"backend1", "backend2", "backend3", "backend4"} {
			if got := counts[name]; got < n/4-10 || got > n/4+10 {
				t.Errorf("%s has %d connections, want %d±10 (%v)", name, got, n/4, counts)
			}
		}
		d.waitBackends(t, 10*time.Second, "250 active connections on each backend", func(m map[string]backendStatus) bool {
			for _, a := range []string{backend1Addr, backend2Addr, backend3Addr, backend4Addr} {
				if m[a].ActiveConns < int64(n/4-10) || m[a].ActiveConns > int64(n/4+10) {
					return false
				}
			}
			return true
		})
		for _, c := range conns {
			c.ws.Close()
		}
		d.waitBackends(t, 15*time.Second, "no active connection left", func(m map[string]backendStatus) bool {
			for _, b := range m {
				if b.ActiveConns != 0 {
					return false
				}
			}
			return true
		})
		d.idle(t)
	})
}

// TestPoolBackendKilled: a backend is killed while clients chat on both.
// New connections avoid it after at most --health-fall failed connects
// (each retried on the other backend, so no new client sees an error), the
// health check marks it down, and the clients of the other backend never
// see an error.
func TestPoolBackendKilled(t *testing.T) {
	e := newEnv(t)
	const fall = 2
	outer := t // the restarted backend outlives each data path's subtest
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--health-check", "http:/healthz", "--health-interval", "300ms",
			"--health-timeout", "200ms", "--health-fall", fmt.Sprint(fall), "--health-rise", "2")
		conns := openConns(t, d, 100, 16)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() { c.exchange(uint64(i), stop) })
		}
		time.Sleep(500 * time.Millisecond)

		e.backends["backend2"].kill()
		// New connections right away: every one succeeds, on backend1.
		for i := range 20 {
			ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/pool", nil)
			if err != nil {
				t.Fatalf("new connection %d after the kill: %v", i, err)
			}
			if name := resp.Header.Get("X-Backend-Name"); name != "backend1" {
				t.Fatalf("new connection %d went to %s", i, name)
			}
			ws.Close()
		}
		failed := strings.Count(d.log(), backend2Addr+`","attempt"`)
		if failed > fall {
			t.Errorf("%d connects to the dead backend, want at most --health-fall %d", failed, fall)
		}
		d.waitBackends(t, 5*time.Second, "backend2 down", func(m map[string]backendStatus) bool {
			return m[backend2Addr].State == "down" && m[backend1Addr].State == "up"
		})
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		var on1, errs2 int
		for _, c := range conns {
			switch c.backend {
			case "backend1":
				on1++
				if c.err != nil {
					t.Errorf("client of backend1 saw an error: %v", c.err)
				}
			case "backend2":
				if c.err != nil {
					errs2++
				}
			}
		}
		if on1 < 40 || errs2 < 40 {
			t.Errorf("%d clients on backend1, %d clients of backend2 saw it die", on1, errs2)
		}
		t.Logf("%d connect attempts on the dead backend; %d clients of backend1 unaffected", failed, on1)

		// It comes back: the health check brings it up, and it takes
		// new connections again.
		e.startEcho(outer, e.topo.Backend2, backend2Addr, "backend2")
		d.waitBackends(t, 10*time.Second, "backend2 up again", func(m map[string]backendStatus) bool {
			return m[backend2Addr].State == "up"
		})
		seen := map[string]bool{}
		for range 4 {
			ws, resp := d.dialWS(t, "/pool")
			seen[resp.Header.Get("X-Backend-Name")] = true
			ws.Close()
		}
		if !seen["backend2"] {
			t.Errorf("backend2 takes no connection after rising: %v", seen)
		}
	})
}

// TestPoolDrainRemove: a backend added at runtime, then drained with a
// deadline and removed through the admin API while 1,000 connections on
// the others keep exchanging messages, byte for byte, without an error.
func TestPoolDrainRemove(t *testing.T) {
	e := newEnv(t)
	e.startEcho(t, e.topo.Backend1, backend3Addr, "backend3")
	n := int(size(t, "WSPLICE_POOL_CONNS", 1000, 200))
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--health-check", "ws:/health", "--health-interval", "500ms")
		d.adminDo(t, "POST", "/backends", `{"addr":"`+backend3Addr+`","weight":1}`, 201)
		conns := openConns(t, d, n, 32)
		counts := countByBackend(conns)
		t.Logf("%d connections: %v", n, counts)
		if counts["backend3"] < n/4 {
			t.Fatalf("backend3, added at runtime, took %d connections (%v)", counts["backend3"], counts)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() { c.exchange(uint64(i), stop) })
		}
		time.Sleep(time.Second)

		d.adminDo(t, "POST", "/backends/"+backend3Addr+"/drain", "deadline=2s", 200)
		if st := d.backends(t)[backend3Addr].State; st != "draining" {
			t.Fatalf("state %q after drain", st)
		}
		for range 10 {
			ws, resp := d.dialWS(t, "/pool")
			if resp.Header.Get("X-Backend-Name") == "backend3" {
				t.Fatal("new connection on a draining backend")
			}
			ws.Close()
		}
		d.waitBackends(t, 10*time.Second, "the drained backend's connections closed at the deadline", func(m map[string]backendStatus) bool {
			return m[backend3Addr].ActiveConns == 0
		})
		d.adminDo(t, "DELETE", "/backends/"+backend3Addr, "", 204)
		if m := d.backends(t); len(m) != 2 {
			t.Fatalf("after remove: %+v", m)
		}
		before := map[*poolConn]int64{}
		for _, c := range conns {
			before[c] = c.msgs.Load()
		}
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		var msgs int64
		for i, c := range conns {
			if c.backend == "backend3" {
				if c.err == nil {
					t.Errorf("connection %d on the drained backend still open after the deadline", i)
				}
				continue
			}
			if c.err != nil {
				t.Fatalf("connection %d on %s: %v", i, c.backend, c.err)
			}
			if c.msgs.Load() <= before[c] {
				t.Fatalf("connection %d on %s exchanged nothing after the removal", i, c.backend)
			}
			msgs += c.msgs.Load()
		}
		t.Logf("%d messages echoed byte-exact on the remaining backends", msgs)
	})
}

// TestPoolStickyCookie: plain requests set a cookie that pins the client
// to a backend; later requests and then an Upgrade carrying it reach the
// same backend; when that backend is drained, the client moves and the
// cookie is set again.
func TestPoolStickyCookie(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--sticky-cookie", "wsplice_be")
		var dials atomic.Int32
		hc := d.httpClient(t, &dials)
		hc.Jar, _ = cookiejar.New(nil)
		get := func() (string, string) {
			t.Helper()
			resp, err := hc.Get("http://" + listenAddr + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			return resp.Header.Get("X-Backend-Name"), resp.Header.Get("Set-Cookie")
		}
		first, cookie := get()
		if !strings.HasPrefix(cookie, "wsplice_be=") || !strings.Contains(cookie, "Path=/") || !strings.Contains(cookie, "HttpOnly") ||
			strings.Contains(cookie, "198.18.") {
			t.Fatalf("Set-Cookie %q", cookie)
		}
		for range 5 {
			if name, _ := get(); name != first {
				t.Fatalf("request went to %s, cookie says %s", name, first)
			}
		}
		u, _ := url.Parse("http://" + listenAddr + "/")
		hdr := http.Header{}
		for _, c := range hc.Jar.Cookies(u) {
			hdr.Add("Cookie", c.String())
		}
		for range 3 {
			ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/pool", hdr)
			if err != nil {
				t.Fatal(err)
			}
			if name := resp.Header.Get("X-Backend-Name"); name != first {
				t.Fatalf("upgrade went to %s, cookie says %s", name, first)
			}
			ws.Close()
		}
		d.adminDo(t, "POST", "/backends/"+e.addrs[first]+"/drain", "", 200)
		moved, recookie := get()
		if moved == first || recookie == "" || recookie == cookie {
			t.Fatalf("after draining %s: request on %s, Set-Cookie %q", first, moved, recookie)
		}
		if again, _ := get(); again != moved {
			t.Fatalf("new cookie not honoured: %s then %s", moved, again)
		}
	})
}
