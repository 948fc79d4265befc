package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDrain: on SIGTERM with --drain-timeout, the listener closes at once,
// a live WebSocket keeps working during the drain and is closed at the
// deadline, and wsplice exits 0.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		const drain = 2 * time.Second
		d := e.startDaemon(t, dp, "--drain-timeout", drain.String())
		ws, _ := d.dialWS(t, "/drain")
		echoOnce(t, ws, "before")
		start := time.Now()
		d.cmd.Process.Signal(syscall.SIGTERM)
		d.waitLog(t, "shutting down", 5*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if c, err := d.e.topo.Client.DialContext(ctx, "tcp", listenAddr); err == nil {
			c.Close()
			t.Error("listener still accepting during the drain")
		}
		cancel()
		for _, after := range []time.Duration{300 * time.Millisecond, 1200 * time.Millisecond} {
			time.Sleep(time.Until(start.Add(after)))
			echoOnce(t, ws, "during the drain")
		}
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := ws.ReadMessage()
		took := time.Since(start)
		if err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("connection not closed after the drain: %v", err)
		}
		if took < drain-100*time.Millisecond || took > drain+2*time.Second {
			t.Errorf("closed %v after SIGTERM, want about %v", took, drain)
		}
		code, err := d.wait(5 * time.Second)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; want 0", code, err)
		}
		for _, line := range strings.Split(d.log(), "\n") {
			if strings.Contains(line, `"level":"error"`) {
				t.Errorf("error logged during the drain: %s", line)
			}
		}
	})
}

// TestDrainZero: with --drain-timeout 0, SIGTERM closes established
// WebSockets at once, even while a request is still in flight (a client
// half-way through its request head), which gets the shutdown grace on
// its own. Before, every spliced pair waited for that grace too (5 s).
func TestDrainZero(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--drain-timeout", "0")
		ws, _ := d.dialWS(t, "/drain0")
		echoOnce(t, ws, "before")
		slow := d.dialTCP(t)
		defer slow.Close()
		if _, err := slow.Write([]byte("GET /slow HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // the head is being read
		start := time.Now()
		d.cmd.Process.Signal(syscall.SIGTERM)
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := ws.ReadMessage()
		took := time.Since(start)
		if err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("connection not closed after SIGTERM: %v", err)
		}
		if took > 2*time.Second {
			t.Errorf("WebSocket closed %v after SIGTERM with --drain-timeout 0, want at once", took)
		}
		code, err := d.wait(10 * time.Second)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; want 0", code, err)
		}
	})
}
