package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

// scrapeMetrics returns the daemon's GET /metrics as "name{labels}" → value.
func (d *daemon) scrapeMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := d.admin.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s %v", resp.Status, err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
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

// waitMetric polls /metrics until name's value satisfies ok.
func (d *daemon) waitMetric(t *testing.T, name string, ok func(float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := d.scrapeMetrics(t)
		if ok(m[name]) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric %s = %v after 5s", name, m[name])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// refusedWS dials a WebSocket that a limit must refuse, and checks the
// 503, its Retry-After and its body.
func (d *daemon) refusedWS(t *testing.T, msg string) {
	t.Helper()
	ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/refused", nil)
	if err == nil {
		ws.Close()
		t.Fatalf("WebSocket accepted past the limit (want 503 %q)", msg)
	}
	if resp == nil {
		t.Fatalf("no HTTP answer past the limit: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), msg) {
		t.Fatalf("past the limit: %s, Retry-After %q, body %q; want 503 with Retry-After and %q", resp.Status, resp.Header.Get("Retry-After"), body, msg)
	}
}

// echoOnce checks a WebSocket still echoes.
func echoOnce(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	if _, got, err := ws.ReadMessage(); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
}

// TestMaxConns: past --max-conns a WebSocket gets 503 with Retry-After
// while the spliced connections keep working; a closed one frees its
// place; an L4 listener closes at once; --max-conns-per-ip likewise.
func TestMaxConns(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--max-conns", "2", "--listen-tcp", tcpAddr)
		a, _ := d.dialWS(t, "/a")
		b, _ := d.dialWS(t, "/b")
		d.refusedWS(t, "connection limit reached")
		echoOnce(t, a, "a still works")

		// L4: closed at once, nothing read.
		c, err := d.e.topo.Client.DialContext(context.Background(), "tcp", tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("L4 connection past the limit: read %d bytes, %v; want it closed", n, err)
		}
		c.Close()

		b.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			// The place frees when the pair's end is seen.
			ws, _, err := d.dialer().Dial("ws://"+listenAddr+"/c", nil)
			if err == nil {
				echoOnce(t, ws, "c")
				ws.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no room after a WebSocket closed: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		m := d.scrapeMetrics(t)
		if m[`wsplice_limit_rejections_total{reason="max_conns"}`] < 2 {
			t.Errorf("max_conns rejections %v, want >= 2", m[`wsplice_limit_rejections_total{reason="max_conns"}`])
		}
	})
	t.Run("per_ip", func(t *testing.T) {
		d := e.startDaemon(t, "userspace", "--max-conns-per-ip", "1")
		a, _ := d.dialWS(t, "/a")
		d.refusedWS(t, "connection limit for this address reached")
		echoOnce(t, a, "a")
	})
}

// TestConnRate: connections over --max-conn-rate get 503 "connection rate
// limit" at once; those admitted work.
func TestConnRate(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--max-conn-rate", "5")
		// Ten connections at once: the burst of five goes through.
		var conns []net.Conn
		for range 10 {
			c, err := d.e.topo.Client.DialContext(context.Background(), "tcp", listenAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, c)
		}
		ok, refused := 0, 0
		for _, c := range conns {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			switch {
			case resp.StatusCode == 200:
				ok++
			case resp.StatusCode == 503 && strings.Contains(string(body), "connection rate limit") && resp.Header.Get("Retry-After") != "":
				refused++
			default:
				t.Fatalf("answer %s %q", resp.Status, body)
			}
		}
		if ok < 5 || refused < 3 {
			t.Errorf("10 connections at once at 5/s: %d served, %d refused; want >= 5 and >= 3", ok, refused)
		}
		if got := d.scrapeMetrics(t)[`wsplice_limit_rejections_total{reason="conn_rate"}`]; int(got) != refused {
			t.Errorf("conn_rate rejections %v, want %d", got, refused)
		}
		time.Sleep(time.Second)
		ws, _ := d.dialWS(t, "/after")
		echoOnce(t, ws, "after a second")
	})
}

// TestFDLimit: at the process's fd limit new clients are answered at once
// (a 503 with Retry-After, or a close where no fd is left to answer from:
// the userspace path's hand-over of the 101), never left waiting in the
// listen queue; the backends are not blamed for the daemon's own shortage
// (a connect that fails with EMFILE does not take them down, even with
// --health-fall 1); and service is back as soon as connections close.
func TestFDLimit(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		for _, loop := range []string{"true", "false"} { // the accept loops of both designs
			// With an even room the limit falls on an accept, with an
			// odd one on a backend connect.
			for _, room := range []int{24, 23} {
				t.Run(fmt.Sprintf("handshake-loop=%s/room=%d", loop, room), func(t *testing.T) { fdLimit(t, e, dp, loop, room) })
			}
		}
	})
}

func fdLimit(t *testing.T, e *env, dp, loop string, room int) {
	d := e.startDaemon(t, dp, "--health-fall", "1", "--health-interval", "1m", "--handshake-loop="+loop)
	base := d.stats(t).OpenFDs
	// Room for a few pairs (two fds each) and nothing more.
	lim := uint64(base + room)
	if err := unix.Prlimit(d.pid(), unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: lim, Max: lim}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	var open []*websocket.Conn
	defer func() {
		for _, ws := range open {
			ws.Close()
		}
	}()
	refused, closed := 0, 0
	for i := 0; i < 40 && refused < 3; i++ {
		start := time.Now()
		ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/fill", nil)
		took := time.Since(start)
		switch {
		case err == nil:
			open = append(open, ws)
			continue
		case took > 2*time.Second:
			t.Fatalf("connection %d at the fd limit: no answer for %v: %v", i, took.Round(time.Millisecond), err)
		case resp != nil:
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("past the fd limit: %s %q, want 503 with Retry-After", resp.Status, body)
			}
			if refused == 0 {
				t.Logf("%d connections, then %s %q", len(open), resp.Status, strings.TrimSpace(string(body)))
			}
			refused++
		default:
			closed++
		}
	}
	if len(open) == 0 || refused+closed == 0 {
		t.Fatalf("%d connections opened, %d refused, %d closed (limit %d, %d fds at start)", len(open), refused, closed, lim, base)
	}
	if refused == 0 {
		t.Errorf("no 503 at the fd limit, %d closes", closed)
	}
	t.Logf("%d refused with 503, %d closed without an answer", refused, closed)
	for _, ws := range open {
		ws.Close()
	}
	open = nil
	d.waitStats(t, 10*time.Second, "the pairs closed", func(s stats) bool { return s.Spliced == 0 && s.Connections == 0 })
	for addr, b := range d.backends(t) {
		if !b.Health.Healthy {
			t.Errorf("backend %s marked down by the daemon's own fd shortage", addr)
		}
	}
	if got := d.scrapeMetrics(t)[`wsplice_limit_rejections_total{reason="fd_limit"}`]; got != float64(refused) {
		t.Errorf(`wsplice_limit_rejections_total{reason="fd_limit"} = %v, want the %d refused`, got, refused)
	}
	ws, resp, err := d.dialer().Dial("ws://"+listenAddr+"/after", nil)
	if err != nil {
		var b []byte
		if resp != nil {
			b, _ = io.ReadAll(resp.Body)
		}
		t.Fatalf("after the connections closed: %v %q", err, b)
	}
	defer ws.Close()
	echoOnce(t, ws, "served again")
}
