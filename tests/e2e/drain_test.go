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
