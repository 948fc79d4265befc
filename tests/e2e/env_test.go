package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/topology"
	"github.com/wsplice/wsplice/tests/wsraw"
)

const (
	listenPort  = 8080
	backendPort = 9000
	// adminAddr is in the lb namespace: only the test reaches it.
	adminAddr = "127.0.0.1:9901"
)

var (
	listenAddr   = netip.AddrPortFrom(topology.LBClientAddr, listenPort).String()
	backend1Addr = netip.AddrPortFrom(topology.Backend1Addr, backendPort).String()
	backend2Addr = netip.AddrPortFrom(topology.Backend2Addr, backendPort).String()
)

// env is a topology with an echo backend in each backend namespace,
// answering with its name: backend1 and backend2.
type env struct {
	topo     *topology.Topology
	backends map[string]*proc // by name
	addrs    map[string]string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	topology.RequirePrivileged(t)
	requireBinaries(t)
	e := &env{topo: topology.New(t), backends: map[string]*proc{}, addrs: map[string]string{}}
	e.startEcho(t, e.topo.Backend1, backend1Addr, "backend1")
	e.startEcho(t, e.topo.Backend2, backend2Addr, "backend2")
	return e
}

// startEcho starts wsplice-echo in ns and waits until it answers.
func (e *env) startEcho(t *testing.T, ns *topology.NS, addr, name string) *proc {
	t.Helper()
	p := startProc(t, ns, name, bins.echo, "--listen", addr, "--name", name, "--log-level", "info")
	p.waitLog(t, "wsplice-echo started", 10*time.Second)
	e.backends[name], e.addrs[name] = p, addr
	return p
}

// backendGet does a GET on a backend directly, from the lb namespace.
func (e *env) backendGet(t *testing.T, name, path string, v any) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: e.topo.LB.DialContext}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + e.addrs[name] + path)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s on %s: %s %s", path, name, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s on %s: %v", path, name, err)
	}
}

// daemon is a running wsplice.
type daemon struct {
	*proc
	e     *env
	dp    string
	admin *http.Client
}

// startDaemon runs wsplice in the lb namespace with both echo backends and
// the given data path; args are added after the defaults (a repeated
// flag's last value wins, except --backend which repeats).
func (e *env) startDaemon(t *testing.T, dp string, args ...string) *daemon {
	t.Helper()
	return e.startDaemonBackends(t, dp, []string{backend1Addr, backend2Addr}, args...)
}

func (e *env) startDaemonBackends(t *testing.T, dp string, backends []string, args ...string) *daemon {
	t.Helper()
	argv := []string{
		"--listen", listenAddr, "--admin", adminAddr, "--dataplane", dp,
		"--log-level", "info", "--log-format", "json",
	}
	for _, b := range backends {
		argv = append(argv, "--backend", b)
	}
	argv = append(argv, args...)
	p := startProc(t, e.topo.LB, "wsplice-"+dp, bins.wsplice, argv...)
	line := p.waitLog(t, "wsplice started", 15*time.Second)
	var started struct {
		Dataplane string   `json:"dataplane"`
		Listeners []string `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(line), &started); err != nil {
		t.Fatalf("start line %q: %v", line, err)
	}
	if started.Dataplane != dp {
		t.Fatalf("asked for --dataplane %s, wsplice started with %q", dp, started.Dataplane)
	}
	d := &daemon{proc: p, e: e, dp: dp, admin: &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: e.topo.LB.DialContext},
	}}
	t.Cleanup(d.admin.CloseIdleConnections)
	d.stats(t) // the admin server answers
	return d
}

// stats mirrors the daemon's GET /debug/stats.
type stats struct {
	Dataplane            string `json:"dataplane"`
	Spliced              int64  `json:"spliced"`
	SplicedTotal         uint64 `json:"spliced_total"`
	MapEntries           int    `json:"map_entries"`
	BytesKernel          uint64 `json:"bytes_kernel"`
	BytesUserspace       uint64 `json:"bytes_userspace"`
	Goroutines           int    `json:"goroutines"`
	OpenFDs              int    `json:"open_fds"`
	Connections          int64  `json:"connections"`
	HandshakesTotal      uint64 `json:"handshakes_total"`
	HandshakeErrorsTotal uint64 `json:"handshake_errors_total"`
	IdleClosed           uint64 `json:"idle_closed"`
	OverlapTrimmed       uint64 `json:"overlap_trimmed"`
}

func (d *daemon) stats(t *testing.T) stats {
	t.Helper()
	resp, err := d.admin.Get("http://" + adminAddr + "/debug/stats")
	if err != nil {
		t.Fatalf("GET /debug/stats: %v", err)
	}
	defer resp.Body.Close()
	var s stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decode /debug/stats: %v", err)
	}
	return s
}

// waitStats polls /debug/stats until ok holds, or fails t after timeout
// with the last stats and what was expected.
func (d *daemon) waitStats(t *testing.T, timeout time.Duration, what string, ok func(stats) bool) stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := d.stats(t)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, /debug/stats = %+v; want %s", timeout, s, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// idle waits until no pair is spliced and, on sockmap, the maps are empty.
func (d *daemon) idle(t *testing.T) stats {
	t.Helper()
	return d.waitStats(t, 5*time.Second, "spliced 0, map_entries 0 (or -1 on userspace), connections 0", func(s stats) bool {
		return s.Spliced == 0 && s.MapEntries <= 0 && s.Connections == 0
	})
}

// dialWS opens a WebSocket through the daemon from the client namespace.
func (d *daemon) dialWS(t *testing.T, path string, protos ...string) (*websocket.Conn, *http.Response) {
	t.Helper()
	ws, resp, err := d.dialer(protos...).Dial("ws://"+listenAddr+path, nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dial ws %s: %v %s", path, err, status)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, resp
}

func (d *daemon) dialer(protos ...string) *websocket.Dialer {
	return &websocket.Dialer{
		NetDialContext:   d.e.topo.Client.DialContext,
		HandshakeTimeout: 10 * time.Second,
		Subprotocols:     protos,
		ReadBufferSize:   64 << 10,
		WriteBufferSize:  64 << 10,
	}
}

// dialTCP opens a TCP connection to the daemon from the client namespace.
func (d *daemon) dialTCP(t *testing.T) *net.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.e.topo.Client.DialContext(ctx, "tcp", listenAddr)
	if err != nil {
		t.Fatalf("dial %s: %v", listenAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// rawUpgrade sends an Upgrade request for target and then extra in the
// same write, and reads the 101. Bytes behind the 101 stay in the reader.
func (d *daemon) rawUpgrade(t *testing.T, target string, extra []byte) (*net.TCPConn, *bufio.Reader, *http.Response) {
	t.Helper()
	c := d.dialTCP(t)
	key := wsraw.NewKey()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(wsraw.UpgradeRequest(listenAddr, target, key), extra...)); err != nil {
		t.Fatalf("write upgrade: %v", err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := wsraw.ReadUpgradeResponse(br, key)
	if err != nil {
		t.Fatalf("upgrade %s: %v", target, err)
	}
	c.SetDeadline(time.Time{})
	return c, br, resp
}

// httpClient makes plain HTTP requests through the daemon from the client
// namespace, and counts the TCP connections it opens.
func (d *daemon) httpClient(t *testing.T, dials *atomic.Int32) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.e.topo.Client.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 1,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

func isBackendName(s string) bool { return s == "backend1" || s == "backend2" }

// mib formats a byte count for messages.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// debugDump fetches /debug/stats and, on the kernel path, /debug/pairs,
// for a failure message about a stalled transfer.
func (d *daemon) debugDump() string {
	var b strings.Builder
	for _, path := range []string{"/debug/stats", "/debug/pairs"} {
		resp, err := d.admin.Get("http://" + adminAddr + path)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", path, err)
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		fmt.Fprintf(&b, "%s: %s\n", path, body)
	}
	return b.String()
}
