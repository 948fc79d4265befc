package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// TestMetrics: /metrics counts, per backend and each way, exactly the bytes
// the test exchanged over spliced connections (read from the kernel on the
// sockmap path), while they live and after they end, and the connections
// and handshakes.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)
		// Light traffic (ping-pong of small chunks): the kernel path
		// stays in redirect, away from its slow-path race.
		sent := map[string]int64{}
		type conn struct {
			name string
			c    io.ReadWriter
			cl   interface{ CloseWrite() error }
		}
		var conns []conn
		for i := range 4 {
			c, br, resp := d.rawUpgrade(t, "/?raw=1", nil)
			name := resp.Header.Get("X-Backend-Name")
			conns = append(conns, conn{name, struct {
				io.Reader
				io.Writer
			}{br, c}, c})
			rng := rand.NewChaCha8([32]byte{byte(i)})
			for range 20 + i*10 {
				chunk := make([]byte, 1+rng.Uint64()%4096)
				rng.Read(chunk)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(chunk); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(chunk))
				if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, chunk) {
					t.Fatalf("echo of %d bytes: %v", len(chunk), err)
				}
				sent[e.addrs[name]] += int64(len(chunk))
			}
		}
		if len(sent) != 2 {
			t.Fatalf("connections reached %d backends, want 2", len(sent))
		}
		bytesKey := func(be, dir string) string {
			return fmt.Sprintf(`wsplice_backend_bytes_total{backend=%q,dataplane=%q,direction=%q}`, be, dp, dir)
		}
		check := func(when string, m map[string]float64) {
			t.Helper()
			for be, n := range sent {
				for _, dir := range []string{"to_backend", "to_client"} {
					if k := bytesKey(be, dir); m[k] != float64(n) {
						t.Errorf("%s: %s = %v, want %d (the bytes the test exchanged)", when, k, m[k], n)
					}
				}
			}
		}
		// The userspace path counts a chunk once its write has returned,
		// which the client can see before that: wait for every count to
		// reach what was exchanged (5 s at most), then check them all.
		var m map[string]float64
		for be, n := range sent {
			for _, dir := range []string{"to_backend", "to_client"} {
				m = d.waitMetric(t, bytesKey(be, dir), func(v float64) bool { return v >= float64(n) })
			}
		}
		check("live", m)
		for be := range sent {
			for _, k := range []string{
				fmt.Sprintf(`wsplice_connections{backend=%q,dataplane=%q,listener=%q,state="spliced"}`, be, dp, listenAddr),
				fmt.Sprintf(`wsplice_connections_spliced_total{backend=%q,dataplane=%q,listener=%q}`, be, dp, listenAddr),
			} {
				if m[k] != 2 {
					t.Errorf("%s = %v, want 2", k, m[k])
				}
			}
		}
		if m[`wsplice_handshakes_total{status="101"}`] != 4 || m[`wsplice_handshake_duration_seconds_count{result="spliced"}`] != 4 {
			t.Errorf("handshakes %v, latency count %v; want 4", m[`wsplice_handshakes_total{status="101"}`], m[`wsplice_handshake_duration_seconds_count{result="spliced"}`])
		}
		if m[fmt.Sprintf(`wsplice_connections_accepted_total{listener=%q}`, listenAddr)] != 4 {
			t.Errorf("accepted %v, want 4", m[fmt.Sprintf(`wsplice_connections_accepted_total{listener=%q}`, listenAddr)])
		}
		// A refused handshake is counted by its status.
		if resp := roundTrip(t, d, "GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"); resp.StatusCode != 400 {
			t.Fatalf("handshake without a key: %s", resp.Status)
		}

		for _, c := range conns {
			c.cl.CloseWrite()
			if b, err := io.ReadAll(c.c); err != nil || len(b) != 0 {
				t.Fatalf("after the echo: %d bytes, %v", len(b), err)
			}
		}
		d.idle(t)
		m = d.waitMetric(t, fmt.Sprintf(`wsplice_connections{backend=%q,dataplane=%q,listener=%q,state="spliced"}`, e.addrs["backend1"], dp, listenAddr),
			func(v float64) bool { return v == 0 })
		check("ended", m)
		if m[`wsplice_handshakes_total{status="400"}`] != 1 {
			t.Errorf("handshakes with status 400: %v, want 1", m[`wsplice_handshakes_total{status="400"}`])
		}
	})
}
