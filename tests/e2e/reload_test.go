package e2e

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestReload: wsplice --config FILE re-reads it on SIGHUP. A bad file is
// refused with a log naming the line, and the old backends stay; a good
// one sends new connections to the new backend, while an established
// WebSocket keeps exchanging byte-exact.
func TestReload(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		path := filepath.Join(t.TempDir(), "wsplice.conf")
		write := func(s string) {
			if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write("# test config\nbackend " + backend1Addr + "\nmax-conns 100\n")
		d := e.startDaemonBackends(t, dp, nil, "--config", path)
		backendOf := func() string {
			t.Helper()
			ws, resp := d.dialWS(t, "/which")
			ws.Close()
			return resp.Header.Get("X-Backend-Name")
		}
		if b := backendOf(); b != "backend1" {
			t.Fatalf("before reload: %s", b)
		}
		old, _ := d.dialWS(t, "/established")
		rng := rand.NewChaCha8([32]byte{7})
		exchange := func(when string) {
			t.Helper()
			for i := range 20 {
				msg := make([]byte, 1+rng.Uint64()%8192)
				rng.Read(msg)
				old.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := old.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					t.Fatalf("%s: write %d: %v", when, i, err)
				}
				if _, got, err := old.ReadMessage(); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("%s: echo %d of %d bytes: %d bytes, %v", when, i, len(msg), len(got), err)
				}
			}
		}
		exchange("before reload")

		write("backend " + backend2Addr + "\n\nmax-conns lots\n")
		d.cmd.Process.Signal(syscall.SIGHUP)
		line := d.waitLog(t, "configuration reload failed", 5*time.Second)
		if !strings.Contains(line, "wsplice.conf:3") {
			t.Errorf("reload error does not name the line: %s", line)
		}
		if b := backendOf(); b != "backend1" {
			t.Fatalf("after a bad file: new connection on %s, want backend1", b)
		}
		exchange("after a bad file")

		write("backend " + backend2Addr + "\nlisten 198.18.1.1:1\n")
		d.cmd.Process.Signal(syscall.SIGHUP)
		d.waitLog(t, "configuration reloaded", 5*time.Second)
		for range 3 {
			if b := backendOf(); b != "backend2" {
				t.Fatalf("after reload: new connection on %s, want backend2", b)
			}
		}
		exchange("after reload")
		if !strings.Contains(d.log(), `"flags":["listen"]`) {
			t.Errorf("changed listener not logged as ignored")
		}
		m := d.scrapeMetrics(t)
		if m[`wsplice_config_reloads_total{result="success"}`] != 1 || m[`wsplice_config_reloads_total{result="failure"}`] != 1 {
			t.Errorf("reloads: success %v failure %v, want 1 and 1", m[`wsplice_config_reloads_total{result="success"}`], m[`wsplice_config_reloads_total{result="failure"}`])
		}
		if ts := m["wsplice_config_last_reload_success_timestamp_seconds"]; time.Since(time.Unix(int64(ts), 0)) > time.Minute {
			t.Errorf("last reload timestamp %v", ts)
		}
	})
}
