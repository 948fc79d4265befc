package proxy

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/refused"
	"github.com/wsplice/wsplice/userspace/backend"
)

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUpgradeRetriesAnotherBackend(t *testing.T) {
	dead := refused.Addr(t)
	live := startWSBackend(t, "live")
	p := startProxy(t, []string{dead, live}, func(c *Config) { c.Health.Fall = 2 })
	// Round-robin starts on the dead one: every handshake still succeeds.
	for range 4 {
		c, resp := wsDial(t, p.addr, nil)
		if resp.Header.Get("X-Backend-Name") != "live" {
			t.Fatalf("backend %q", resp.Header.Get("X-Backend-Name"))
		}
		c.Close()
	}
	if st := p.Pool().Backend(dead).State(); st != backend.StateDown {
		t.Errorf("dead backend state %v, want down after its connect failures", st)
	}
}

func TestAllBackendsFail502NoneUp503(t *testing.T) {
	a, b := refused.Addr(t), refused.Addr(t)
	p := startProxy(t, []string{a, b}, func(c *Config) { c.Health.Fall = 1 })
	c := dial(t, p.addr)
	c.send(upgradeRequest())
	if resp := c.head(); resp.Status != 502 {
		t.Fatalf("every connect failing: status %d, want 502", resp.Status)
	}
	// Both are down now (fall 1): nothing to try.
	c = dial(t, p.addr)
	c.send(upgradeRequest())
	if resp := c.head(); resp.Status != 503 {
		t.Fatalf("no backend up: status %d, want 503", resp.Status)
	}
	c = dial(t, p.addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp := c.head(); resp.Status != 503 {
		t.Fatalf("plain, no backend up: status %d, want 503", resp.Status)
	}
}

func TestPlainRetriesAnotherBackend(t *testing.T) {
	p := startProxy(t, []string{refused.Addr(t), startWSBackend(t, "live")}, nil)
	for range 4 {
		resp, err := http.Get("http://" + p.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "plain from live" {
			t.Fatalf("status %d body %q", resp.StatusCode, b)
		}
	}
}

func TestLeaseEndsWithSplicedConnection(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a"), startWSBackend(t, "b")}, func(c *Config) { c.Balance = "least-conn" })
	var conns []*websocket.Conn
	for range 10 {
		c, _ := wsDial(t, p.addr, nil)
		conns = append(conns, c)
	}
	for _, b := range p.Pool().Backends() {
		if b.Active() != 5 {
			t.Errorf("%s has %d connections, want 5", b.Addr(), b.Active())
		}
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "leases released", func() bool {
		for _, b := range p.Pool().Backends() {
			if b.Active() != 0 {
				return false
			}
		}
		return true
	})
}

func TestStickyCookieRoundTrip(t *testing.T) {
	names := []string{"a", "b", "c"}
	var addrs []string
	for _, n := range names {
		addrs = append(addrs, startWSBackend(t, n))
	}
	p := startProxy(t, addrs, func(c *Config) { c.StickyCookie = "lb" })
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: testTimeout}
	get := func() (string, *http.Response) {
		resp, err := hc.Get("http://" + p.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimPrefix(string(b), "plain from "), resp
	}
	first, resp := get()
	sc := resp.Header.Get("Set-Cookie")
	if !strings.HasPrefix(sc, "lb=") || !strings.Contains(sc, "Path=/") || !strings.Contains(sc, "HttpOnly") {
		t.Fatalf("Set-Cookie %q", sc)
	}
	for _, a := range addrs {
		if strings.Contains(sc, a) || strings.Contains(sc, strings.Split(a, ":")[1]) {
			t.Fatalf("cookie %q leaks the backend address %s", sc, a)
		}
	}
	for range 6 {
		got, resp := get()
		if got != first {
			t.Fatalf("sticky request went to %s, want %s", got, first)
		}
		if resp.Header.Get("Set-Cookie") != "" {
			t.Errorf("cookie set again while still valid")
		}
	}
	// The Upgrade carries the cookie and lands on the same backend.
	u, _ := url.Parse("http://" + p.addr + "/")
	hdr := http.Header{}
	for _, c := range jar.Cookies(u) {
		hdr.Add("Cookie", c.String())
	}
	_, wresp := wsDial(t, p.addr, hdr)
	if got := wresp.Header.Get("X-Backend-Name"); got != first {
		t.Fatalf("upgrade went to %s, want %s", got, first)
	}
	// Its backend drained: another one, and the cookie is set again.
	var firstAddr string
	for i, n := range names {
		if n == first {
			firstAddr = addrs[i]
		}
	}
	if err := p.Pool().Drain(firstAddr, 0); err != nil {
		t.Fatal(err)
	}
	got, resp := get()
	if got == first || resp.Header.Get("Set-Cookie") == "" || resp.Header.Get("Set-Cookie") == sc {
		t.Fatalf("after drain: backend %s, Set-Cookie %q", got, resp.Header.Get("Set-Cookie"))
	}
	again, _ := get()
	if again != got {
		t.Fatalf("new cookie not honoured: %s then %s", got, again)
	}
}

func TestAdminBackends(t *testing.T) {
	a, b := startWSBackend(t, "a"), startWSBackend(t, "b")
	p := startProxy(t, []string{a}, func(c *Config) {
		c.Admin = "127.0.0.1:0"
		c.Balance = "least-conn"
	})
	admin := "http://" + p.AdminAddr().String()
	hc := &http.Client{Timeout: testTimeout}
	do := func(method, path, body string, want int) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, admin+path, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, out)
		}
		return out
	}
	list := func() []backend.Status {
		var st []backend.Status
		if err := json.Unmarshal(do("GET", "/backends", "", 200), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	ca, _ := wsDial(t, p.addr, nil)
	st := list()
	if len(st) != 1 || st[0].Addr != a || st[0].State != "up" || st[0].ActiveConns != 1 || st[0].Weight != 1 {
		t.Fatalf("backends %+v", st)
	}
	do("POST", "/backends", `{"addr":"`+b+`","weight":2,"max_conns":10}`, 201)
	do("POST", "/backends", b, 409)
	do("POST", "/backends", "nohost", 400)
	do("PUT", "/backends/"+b+"/weight", "3", 200)
	do("PUT", "/backends/"+b+"/weight", `{"weight":0}`, 400)
	do("PUT", "/backends/nope:1/weight", "3", 404)
	st = list()
	if len(st) != 2 || st[1].Weight != 3 || st[1].MaxConns != 10 {
		t.Fatalf("after add: %+v", st)
	}
	// Least-conn: the new backend takes the next one.
	_, resp := wsDial(t, p.addr, nil)
	if resp.Header.Get("X-Backend-Name") != "b" {
		t.Fatalf("new connection on %s", resp.Header.Get("X-Backend-Name"))
	}
	// Drain a with a deadline: no new connections, and its spliced
	// connection is closed at the deadline; b's stays.
	do("POST", "/backends/"+a+"/drain", "deadline=100ms", 200) // a form body without Content-Type
	if st := list(); st[0].State != "draining" {
		t.Fatalf("state %q", st[0].State)
	}
	// Draining is not down: backend_up is health.
	if up := scrape(t, p.Proxy)[`wsplice_backend_up{backend="`+a+`"}`]; up != 1 {
		t.Errorf("wsplice_backend_up of a healthy draining backend: %v, want 1", up)
	}
	for range 3 {
		_, resp := wsDial(t, p.addr, nil)
		if resp.Header.Get("X-Backend-Name") != "b" {
			t.Fatal("new connection on a draining backend")
		}
	}
	_ = ca.SetReadDeadline(time.Now().Add(testTimeout))
	if _, _, err := ca.ReadMessage(); err == nil {
		t.Fatal("connection on the drained backend not closed")
	}
	waitFor(t, "drained backend empty", func() bool { return list()[0].ActiveConns == 0 })
	do("DELETE", "/backends/"+a, "", 204)
	do("DELETE", "/backends/"+a, "", 404)
	do("POST", "/backends/"+a+"/drain", "", 404)
	if st := list(); len(st) != 1 || st[0].Addr != b || st[0].ActiveConns != 4 {
		t.Fatalf("after remove: %+v", st)
	}

	// Refused: another spelling of a backend in the pool, a weight of 0
	// (as in the --backend form), a second JSON value or trailing bytes,
	// unknown fields.
	host, port, _ := net.SplitHostPort(b)
	do("POST", "/backends", host+":0"+port, 409)
	do("POST", "/backends", `{"addr":"[::ffff:`+host+`]:`+port+`"}`, 409)
	do("POST", "/backends", `{"addr":"127.0.0.1:9","weight":0}`, 400)
	do("POST", "/backends", `{"addr":"127.0.0.1:9"}{"addr":"127.0.0.1:10"}`, 400)
	do("POST", "/backends", `{"addr":"127.0.0.1:9"} junk`, 400)
	do("PUT", "/backends/"+b+"/weight", `{"weight":4,"bogus":true}`, 400)
	do("PUT", "/backends/"+host+":0"+port+"/weight", `{"weight":4}`, 200)
	// A body over the limit is refused whole, not cut to a prefix that
	// reads as a request of its own.
	do("PUT", "/backends/"+b+"/weight", strings.Repeat(" ", maxAdminBody-1)+"12", 413) // cut, it read as weight 1
	do("POST", "/backends", strings.Repeat(" ", maxAdminBody)+"127.0.0.1:9", 413)
	if st := list(); len(st) != 1 || st[0].Weight != 4 {
		t.Fatalf("after the refusals: %+v", st)
	}
	// A drain body not understood is refused: a typo must not drain
	// without the deadline meant. Each form that is understood works
	// (a later drain replaces the deadline, so 1h leaves b's alone).
	for _, bad := range []string{"deadlin=1s", "deadline=1s&x=1", `{"deadline":1}`, `{"deadlin":"1s"}`, "soon", "deadline=-1s", "0s"} {
		do("POST", "/backends/"+b+"/drain", bad, 400)
	}
	if st := list(); st[0].State != "up" {
		t.Fatalf("a refused drain drained: %+v", st)
	}
	for _, good := range []string{"deadline=1h", `{"deadline":"1h"}`, "1h", ""} {
		do("POST", "/backends/"+b+"/drain", good, 200)
	}
	do("POST", "/backends/"+b+"/drain?deadline=1h", "", 200)
	// Empty: a list, not null.
	do("DELETE", "/backends/"+b, "", 204)
	if out := strings.TrimSpace(string(do("GET", "/backends", "", 200))); out != "[]" {
		t.Fatalf("empty pool listed as %q, want []", out)
	}
}

// TestReaddedBackendCountsLiveConns: a backend removed while its
// connections live, then added again, counts them against its max-conns.
func TestReaddedBackendCountsLiveConns(t *testing.T) {
	a := startWSBackend(t, "a")
	p := startProxy(t, []string{a + ",max-conns=2"}, nil)
	for range 2 {
		c, _ := wsDial(t, p.addr, nil)
		defer c.Close()
	}
	if err := p.Pool().Remove(a); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Pool().Add(backend.Spec{Addr: a, MaxConns: 2}); err != nil {
		t.Fatal(err)
	}
	if n := p.Pool().Backend(a).Active(); n != 2 {
		t.Fatalf("re-added backend counts %d connections, want the 2 still open", n)
	}
	c := dial(t, p.addr)
	c.send(upgradeRequest())
	if resp := c.head(); resp.Status != 503 {
		t.Fatalf("third connection to a backend with max-conns 2: status %d, want 503", resp.Status)
	}
}
