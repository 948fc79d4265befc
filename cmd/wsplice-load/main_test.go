package main

import (
	"bufio"
	"bytes"
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
}

// echoServer is a minimal WebSocket echo server (RFC 6455: unmasks client
// frames, answers unmasked frames of the same opcode) with one fault.
type echoServer struct {
	ln    net.Listener
	f     fault
	n     atomic.Uint64
	stall sync.RWMutex // held for writing during a stall
	wg    sync.WaitGroup
}

func startEcho(t *testing.T, f fault) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, f: f}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return ln.Addr().String()
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
	sum := sha1.Sum([]byte(h.Get("Sec-WebSocket-Key") + wsGUID))
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n"); err != nil {
		return
	}
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
		if k == s.f.nth {
			switch {
			case s.f.corrupt:
				p[len(p)-1] ^= 0x40
			case s.f.drop:
				continue
			case s.f.stall > 0:
				s.stall.Lock()
				time.Sleep(s.f.stall)
				s.stall.Unlock()
			}
		}
		s.stall.RLock()
		s.stall.RUnlock()
		out := []byte{0x80 | op}
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
	var out, errb bytes.Buffer
	err := run(append([]string{"--baseline", "0"}, args...), &out, &errb)
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
	for _, args := range [][]string{{"--mode", "nope"}, {"--conns", "-1"}, {"--size", "3"}, {"extra"}} {
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
