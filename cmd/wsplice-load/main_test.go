package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fault is what the test echo server does wrong, once, at its nth echoed
// message counted over all connections (0: never).
type fault struct {
	nth     uint64
	corrupt bool          // flip one payload byte
	stall   time.Duration // hold every connection's echoes this long
	drop    bool          // swallow the message: no echo at all
	rcvbuf  int           // SO_RCVBUF of the accepted connections, if not 0
	reset   bool          // reset the connection (RST) instead of echoing
	rsv1    bool          // echo with RSV1 set (as if compressed)
	// badHandshake: answer the nth connection's handshake with a 503
	// (connections counted apart from messages).
	badHandshake uint64
}

// echoServer is a minimal WebSocket echo server (RFC 6455: unmasks client
// frames, answers unmasked frames of the same opcode) with one fault.
type echoServer struct {
	ln    net.Listener
	f     fault
	n     atomic.Uint64 // messages
	conns atomic.Uint64 // connections accepted
	open  atomic.Int64  // connections open after their handshake
	stall sync.RWMutex  // held for writing during a stall
	wg    sync.WaitGroup
}

func startEcho(t *testing.T, f fault) string {
	return startEchoServer(t, f).ln.Addr().String()
}

func startEchoServer(t *testing.T, f fault) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, f: f}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *echoServer) serve() {
	defer s.wg.Done()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		conns = append(conns, c)
		if s.f.rcvbuf > 0 {
			c.(*net.TCPConn).SetReadBuffer(s.f.rcvbuf)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

func (s *echoServer) handle(c net.Conn) {
	r := bufio.NewReader(c)
	tp := textproto.NewReader(r)
	if _, err := tp.ReadLine(); err != nil {
		return
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return
	}
	if s.conns.Add(1) == s.f.badHandshake {
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
		return
	}
	sum := sha1.Sum([]byte(h.Get("Sec-WebSocket-Key") + wsGUID))
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n"); err != nil {
		return
	}
	s.open.Add(1)
	defer s.open.Add(-1)
	var hdr [14]byte
	for {
		if _, err := io.ReadFull(r, hdr[:2]); err != nil {
			return
		}
		op, n := hdr[0]&0x0f, uint64(hdr[1]&0x7f)
		switch n {
		case 126:
			if _, err := io.ReadFull(r, hdr[2:4]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(hdr[2:4]))
		case 127:
			if _, err := io.ReadFull(r, hdr[2:10]); err != nil {
				return
			}
			n = binary.BigEndian.Uint64(hdr[2:10])
		}
		var mask [4]byte
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return
		}
		for i := range p {
			p[i] ^= mask[i&3]
		}
		if op == 0x8 { // close
			return
		}
		k := s.n.Add(1)
		first := byte(0x80 | op)
		if k == s.f.nth {
			switch {
			case s.f.corrupt:
				p[len(p)-1] ^= 0x40
			case s.f.drop:
				continue
			case s.f.reset:
				c.(*net.TCPConn).SetLinger(0)
				return
			case s.f.rsv1:
				first |= 0x40
			case s.f.stall > 0:
				s.stall.Lock()
				time.Sleep(s.f.stall)
				s.stall.Unlock()
			}
		}
		s.stall.RLock()
		s.stall.RUnlock()
		out := []byte{first}
		switch {
		case n < 126:
			out = append(out, byte(n))
		case n < 1<<16:
			out = append(out, 126, byte(n>>8), byte(n))
		default:
			out = append(out, 127)
			out = binary.BigEndian.AppendUint64(out, n)
		}
		if _, err := c.Write(append(out, p...)); err != nil {
			return
		}
	}
}

// load runs the generator and returns its JSON result and error.
func load(t *testing.T, args ...string) (map[string]any, error) {
	t.Helper()
	return loadCtx(t, context.Background(), args...)
}

// loadCtx is load with a context, canceled as a signal would.
func loadCtx(t *testing.T, ctx context.Context, args ...string) (map[string]any, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(ctx, append([]string{"--baseline", "0"}, args...), &out, &errb)
	var res map[string]any
	if out.Len() > 0 {
		if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
			t.Fatalf("output is not JSON: %v\n%s", jerr, out.String())
		}
	}
	return res, err
}

func TestClosedLoopCleanEcho(t *testing.T) {
	addr := startEcho(t, fault{})
	res, err := load(t, "--mode", "closed-loop", "--addr", addr, "--conns", "4", "--warmup", "100ms", "--duration", "400ms")
	if err != nil {
		t.Fatalf("clean echo: %v", err)
	}
	if res["integrity_ok"] != true || res["errors"] != 0.0 || res["messages"].(float64) < 100 {
		t.Fatalf("clean echo: integrity_ok %v, errors %v, messages %v", res["integrity_ok"], res["errors"], res["messages"])
	}
}

// One flipped byte in one echo fails the run, in every mode that echoes.
func TestIntegrityErrorFailsTheRun(t *testing.T) {
	for _, mode := range []string{"closed-loop", "open-loop", "bulk", "handshake"} {
		t.Run(mode, func(t *testing.T) {
			addr := startEcho(t, fault{nth: 20, corrupt: true})
			args := []string{"--mode", mode, "--addr", addr, "--conns", "2", "--warmup", "100ms", "--duration", "500ms"}
			switch mode {
			case "open-loop":
				args = append(args, "--rate", "1000")
			case "bulk":
				args = append(args, "--size", "65536")
			}
			res, err := load(t, args...)
			if !errors.Is(err, errIntegrity) {
				t.Fatalf("a corrupted echo: error %v, want an integrity error", err)
			}
			if res == nil || res["integrity_ok"] != false || !strings.Contains(res["first_error"].(string), "echo differs") {
				t.Fatalf("result %v: want integrity_ok false and the error", res)
			}
		})
	}
}

// An echo that never comes back is an error, not a dropped sample.
func TestOpenLoopMissingEchoIsAnError(t *testing.T) {
	addr := startEcho(t, fault{nth: 50, drop: true})
	_, err := load(t, "--mode", "open-loop", "--addr", addr, "--conns", "2", "--rate", "500", "--warmup", "100ms", "--duration", "400ms")
	if err == nil {
		t.Fatal("an echo went missing and the run passed")
	}
}

// Open-loop latency runs from each message's scheduled send time to its
// echo: a 300 ms stall of the server delays every message scheduled during
// it, so about a third of a 1 s run's messages wait 0-300 ms and the 90th
// percentile is far above the unloaded echo's; none of them is dropped
// from the histogram. (Here the sends themselves never block, so this does
// not tell the schedule from the actual send time: the code does, see
// runOpenLoop.)
func TestOpenLoopStallShowsInPercentiles(t *testing.T) {
	addr := startEcho(t, fault{nth: 300, stall: 300 * time.Millisecond})
	res, err := load(t, "--mode", "open-loop", "--addr", addr, "--conns", "4", "--rate", "1000", "--warmup", "100ms", "--duration", "1s")
	if err != nil {
		t.Fatal(err)
	}
	lat := res["latency"].(map[string]any)
	if got, want := lat["count"].(float64), 1000.0; got < want*0.95 || got > want*1.05 {
		t.Fatalf("%v echoes timed in 1 s at 1000 msgs/s: messages missing from the histogram (%v)", got, lat)
	}
	if p90 := lat["p90_us"].(float64); p90 < 50_000 {
		t.Fatalf("p90 %v µs after a 300 ms stall in a 1 s run: the delayed echoes are not in the histogram (%v)", p90, lat)
	}
	if p50 := lat["p50_us"].(float64); p50 > 100_000 {
		t.Fatalf("p50 %v µs: most messages were not delayed (%v)", p50, lat)
	}
}

// A stall that outlasts the measured window blocks the sender (the server
// reads nothing, the socket buffers fill) past the window's end: the
// messages of the window it had not sent yet are sent late and timed all
// the same, none missing from the histogram.
func TestOpenLoopStallPastTheWindowKeepsEveryMessage(t *testing.T) {
	// 100 msgs/s of 256 KiB over 2 connections, each sending every 20 ms:
	// 150 messages in the 1.5 s window after a 100 ms warmup. The stall
	// starts 0.8 s into the window (message 90) and ends 0.5 s after it;
	// the 9 MB each connection sends meanwhile overflow its socket buffers
	// (the client's send buffer grows to 4 MB).
	addr := startEcho(t, fault{nth: 90, stall: 1200 * time.Millisecond, rcvbuf: 64 << 10})
	res, err := load(t, "--mode", "open-loop", "--addr", addr, "--conns", "2", "--rate", "100", "--size", "262144",
		"--warmup", "100ms", "--duration", "1500ms")
	if err != nil {
		t.Fatal(err)
	}
	lat := res["latency"].(map[string]any)
	if got := lat["count"].(float64); got != 150 {
		t.Fatalf("%v echoes timed of the 150 messages scheduled in the window (%v)", got, lat)
	}
	// Else the sender never blocked and this proves nothing.
	if r := res["achieved_rate"].(float64); r > 90 {
		t.Fatalf("achieved rate %v of 100: the stall did not hold the sender past the window", r)
	}
	if mx := lat["max_us"].(float64); mx < 500_000 {
		t.Fatalf("max latency %v µs after a 1.2 s stall", mx)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.9, 9 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}} {
		got := h.quantile(c.q)
		if d := got - c.want; d < -c.want/100 || d > c.want/100 {
			t.Errorf("q%v = %v, want %v within 1%%", c.q, got, c.want)
		}
	}
	var a, b histogram
	a.record(time.Millisecond)
	b.record(3 * time.Millisecond)
	a.merge(&b)
	if a.n != 2 || a.max != int64(3*time.Millisecond) {
		t.Errorf("merged n %d max %v", a.n, time.Duration(a.max))
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"--mode", "nope"}, {"--conns", "-1"}, {"--size", "3"}, {"extra"}, {"--mode", "idle", "--conns", "1"}} {
		if _, err := load(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("%q: error %v, want a usage error", args, err)
		}
	}
}

// Kernel threads come and go during a run: the attributed CPU of two
// snapshots never goes negative (it once read 3.7e18 µs per message).
func TestTicksSince(t *testing.T) {
	a := map[int]uint64{1: 100, 2: 50, 3: 70}
	b := map[int]uint64{1: 130, 3: 5, 4: 20} // 2 ended, 3 is a new task, 4 started
	if got := ticksSince(a, b); got != 30+5+20 {
		t.Fatalf("ticksSince = %d, want 55", got)
	}
	if got := ticksSince(b, b); got != 0 {
		t.Fatalf("ticksSince of a snapshot and itself = %d", got)
	}
}

// System-wide CPU is what the machine did not spend idle or stolen, over
// CPUs x wall time: not the tick-sampled busy fields, which can fall short.
func TestCPUDeltaNonIdle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := cpuTimes{user: 100, system: 100, idle: 1000, steal: 10, cpus: 2, at: t0}
	// 10 s on 2 CPUs: 20 s. Busy ticks add up to 2 s only, idle 9 s,
	// steal 1 s: 8 s went unsampled.
	b := cpuTimes{user: 200, system: 200, idle: 1900, steal: 110, cpus: 2, at: t0.Add(10 * time.Second)}
	u := cpuDelta(a, b)
	if u.Busy != 2 || u.Capacity != 20 || u.NonIdle != 10 {
		t.Fatalf("busy %.1f capacity %.1f nonidle %.1f, want 2, 20, 10", u.Busy, u.Capacity, u.NonIdle)
	}
}

func TestReadCPU(t *testing.T) {
	c, err := readCPU()
	if err != nil {
		t.Fatal(err)
	}
	if c.cpus < 1 || c.cpus < runtime.NumCPU() || c.idle == 0 {
		t.Fatalf("readCPU: %d CPUs (NumCPU %d), idle %d", c.cpus, runtime.NumCPU(), c.idle)
	}
}

// The quantile is the smallest value with at least q of the samples at or
// below it: the ceil(q*n)-th, not the nearest rank.
func TestHistogramQuantileRank(t *testing.T) {
	var h histogram
	for i := 1; i <= 10; i++ {
		h.record(time.Duration(i))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.04, 1}, {0.1, 1}, {0.11, 2}, {0.5, 5}, {0.51, 6}, {0.54, 6}, {0.9, 9}, {0.91, 10}, {1, 10}} {
		if got := h.quantile(c.q); got != c.want {
			t.Errorf("1..10 ns: q%v = %v, want %v", c.q, got, c.want)
		}
	}
	// 0.54*450 is 243.00000000000003 in floating point: still the 243rd.
	var g histogram
	for i := 1; i <= 450; i++ {
		g.record(time.Duration(i))
	}
	if got := g.quantile(0.54); got != 243 {
		t.Errorf("1..450 ns: q0.54 = %v, want 243ns", got)
	}
}

// A frame with an RSV bit set (no extension was negotiated) or a reserved
// opcode is a protocol error, not a frame to read or skip.
func TestReadMessageRejectsReservedBitsAndOpcodes(t *testing.T) {
	binary := []byte{0x82, 3, 'a', 'b', 'c'}
	for _, c := range []struct {
		name   string
		frames []byte
		want   string // error, or "" for the payload "abc"
	}{
		{"binary", binary, ""},
		{"ping then binary", append([]byte{0x89, 1, 'x'}, binary...), ""},
		{"RSV1", []byte{0xc2, 3, 'a', 'b', 'c'}, "frame with RSV1 set"},
		{"RSV2", []byte{0xa2, 3, 'a', 'b', 'c'}, "frame with RSV2 set"},
		{"RSV3", []byte{0x92, 3, 'a', 'b', 'c'}, "frame with RSV3 set"},
		{"RSV1 on a ping", append([]byte{0xc9, 0}, binary...), "frame with RSV1 set"},
		{"reserved data opcode", []byte{0x83, 3, 'a', 'b', 'c'}, "reserved opcode 0x3"},
		{"reserved data opcode 0x7", []byte{0x87, 3, 'a', 'b', 'c'}, "reserved opcode 0x7"},
		{"reserved control opcode", append([]byte{0x8b, 0}, binary...), "reserved opcode 0xb"},
		{"reserved control opcode 0xf", append([]byte{0x8f, 1, 'x'}, binary...), "reserved opcode 0xf"},
		{"reserved opcode in a fragmented message", []byte{0x02, 1, 'a', 0x84, 2, 'b', 'c'}, "reserved opcode 0x4"},
	} {
		w := &wsConn{r: bufio.NewReader(bytes.NewReader(c.frames))}
		got, err := w.readMessage(nil)
		switch {
		case c.want == "" && (err != nil || string(got) != "abc"):
			t.Errorf("%s: %q, %v; want \"abc\"", c.name, got, err)
		case c.want != "" && (!errors.Is(err, errIntegrity) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %q, %v; want an integrity error %q", c.name, got, err, c.want)
		}
	}
}

// An echo with RSV1 set fails the run as an integrity error.
func TestRSVFrameFailsTheRun(t *testing.T) {
	addr := startEcho(t, fault{nth: 20, rsv1: true})
	res, err := load(t, "--mode", "closed-loop", "--addr", addr, "--conns", "2", "--warmup", "100ms", "--duration", "400ms")
	if !errors.Is(err, errIntegrity) {
		t.Fatalf("an echo with RSV1: error %v, want an integrity error", err)
	}
	if res["integrity_ok"] != false || !strings.Contains(res["first_error"].(string), "frame with RSV1 set") {
		t.Fatalf("result %v: want integrity_ok false and the RSV1 error", res)
	}
}

// In handshake mode, a connection that fails after its 101 (here the
// server resets it instead of echoing) lost data: the run fails, whatever
// the share of such connections.
func TestHandshakeEchoErrorFailsTheRun(t *testing.T) {
	addr := startEcho(t, fault{nth: 20, reset: true})
	res, err := load(t, "--mode", "handshake", "--addr", addr, "--conns", "2", "--warmup", "100ms", "--duration", "500ms")
	if err == nil {
		t.Fatalf("an echo lost after the handshake and the run passed: %v", res)
	}
	if errors.Is(err, errIntegrity) || res["integrity_ok"] != true {
		t.Fatalf("a reset is not an integrity error: %v, integrity_ok %v", err, res["integrity_ok"])
	}
	if fe, _ := res["first_error"].(string); !strings.Contains(fe, "echo") || res["errors"].(float64) < 1 {
		t.Fatalf("first_error %q, errors %v: want the echo's error", fe, res["errors"])
	}
}

// A failed handshake (a refused connection under load) before the 101 is
// counted, and tolerated up to 1% of the attempts.
func TestHandshakeFewFailedHandshakesTolerated(t *testing.T) {
	addr := startEcho(t, fault{badHandshake: 150})
	res, err := load(t, "--mode", "handshake", "--addr", addr, "--conns", "2", "--warmup", "100ms", "--duration", "500ms")
	if err != nil {
		t.Fatalf("one failed handshake: %v", err)
	}
	if fe, _ := res["first_error"].(string); res["errors"] != 1.0 || !strings.Contains(fe, "503") || res["handshakes"].(float64) < 150 {
		t.Fatalf("errors %v, first_error %q, handshakes %v: want the failed handshake reported", res["errors"], fe, res["handshakes"])
	}
}

// A run cut short by a signal fails, with its partial result marked.
func TestInterruptedRunFails(t *testing.T) {
	for _, mode := range []string{"closed-loop", "open-loop"} {
		t.Run(mode, func(t *testing.T) {
			addr := startEcho(t, fault{})
			ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
			defer cancel()
			t0 := time.Now()
			res, err := loadCtx(t, ctx, "--mode", mode, "--addr", addr, "--conns", "2", "--rate", "200", "--warmup", "100ms", "--duration", "10s")
			if err == nil || !strings.Contains(err.Error(), "interrupted after") {
				t.Fatalf("interrupted run: error %v, want \"interrupted after\"", err)
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Fatalf("the interrupted run took %v", d)
			}
			if res == nil || res["interrupted"] != true || res["duration_s"].(float64) > 1 {
				t.Fatalf("result %v: want it written, interrupted", res)
			}
		})
	}
}

// Idle mode's memory per connection is the slope between the first half
// of the connections and all of them: what a process grew by once, before
// or with the first connections, does not count. The fake RSS and kernel
// figures here grow by 5 MB with the first connection, then by 1000 B
// (slab 300 B, TCP 4096 B) per open connection.
func TestIdlePerConnIsASlope(t *testing.T) {
	s := startEchoServer(t, fault{})
	settle, rss, kmem := idleSettle, idleRSS, idleKernelMem
	t.Cleanup(func() { idleSettle, idleRSS, idleKernelMem = settle, rss, kmem })
	idleSettle = 10 * time.Millisecond
	grown := func() int64 {
		n := s.open.Load()
		if n == 0 {
			return 0
		}
		return 5_000_000 + n*1000
	}
	idleRSS = func([]int) (int64, error) { return 1_000_000 + grown(), nil }
	idleKernelMem = func() (kernelMem, error) {
		n := s.open.Load()
		return kernelMem{SlabBytes: 7_000_000 + grown() + n*300, TCPMemBytes: n * 4096}, nil
	}
	res, err := load(t, "--mode", "idle", "--addr", s.ln.Addr().String(), "--conns", "20", "--pids", "1")
	if err != nil {
		t.Fatal(err)
	}
	idle := res["idle"].(map[string]any)
	for k, want := range map[string]float64{
		"slope_conns":                   10,
		"rss_before_bytes":              1_000_000,
		"rss_half_bytes":                6_010_000,
		"rss_after_bytes":               6_020_000,
		"rss_per_conn_bytes":            1000,
		"rss_growth_per_conn_bytes":     251_000,
		"slab_per_conn_bytes":           1300,
		"slab_growth_per_conn_bytes":    251_300,
		"tcp_mem_per_conn_bytes":        4096,
		"tcp_mem_growth_per_conn_bytes": 4096,
	} {
		if got := idle[k]; got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	// Every connection echoed once when opened and once at the end.
	if got := s.n.Load(); got != 40 {
		t.Errorf("%d echoes over 20 idle connections, want 40", got)
	}
}
