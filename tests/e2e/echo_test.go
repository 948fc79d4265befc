package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
)

// TestEcho: messages of every framing size come back byte for byte,
// connections alternate between the two backends, and the subprotocol and
// the backend's own 101 headers reach the client.
func TestEcho(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)

		t.Run("round_trip", func(t *testing.T) {
			skipUntrimmedKernel(t, dp)
			ws, _ := d.dialWS(t, "/echo")
			rng := rand.NewChaCha8([32]byte{1})
			big := make([]byte, size(t, "WSPLICE_ECHO_BIG", 64<<20, 1<<20))
			rng.Read(big)
			msgs := []struct {
				typ  int
				data []byte
			}{
				{websocket.TextMessage, []byte("hello")},
				{websocket.TextMessage, []byte("héllo wörld ✓")},
				{websocket.TextMessage, nil},
				{websocket.BinaryMessage, []byte{0}},
				{websocket.BinaryMessage, big[:125]},
				{websocket.BinaryMessage, big[:126]},
				{websocket.BinaryMessage, big[:65535]},
				{websocket.BinaryMessage, big[:65536]},
				{websocket.BinaryMessage, big},
			}
			for _, m := range msgs {
				// The echo streams, so a message larger than the
				// socket buffers only comes back if read while it
				// is written.
				werr := make(chan error, 1)
				go func() { werr <- ws.WriteMessage(m.typ, m.data) }()
				typ, got, err := ws.ReadMessage()
				if err := <-werr; err != nil {
					t.Fatalf("write %d bytes: %v", len(m.data), err)
				}
				if err != nil {
					t.Fatalf("read echo of %d bytes: %v", len(m.data), err)
				}
				if typ != m.typ || !bytes.Equal(got, m.data) {
					t.Fatalf("sent type %d, %d bytes; echo is type %d, %d bytes, equal=%v",
						m.typ, len(m.data), typ, len(got), bytes.Equal(got, m.data))
				}
			}
		})

		t.Run("round_robin", func(t *testing.T) {
			var names []string
			for range 6 {
				ws, resp := d.dialWS(t, "/rr")
				name := resp.Header.Get("X-Backend-Name")
				if !isBackendName(name) {
					t.Fatalf("101 has X-Backend-Name %q, want backend1 or backend2", name)
				}
				// The connection really goes to that backend.
				msg := "to " + name
				if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if _, got, err := ws.ReadMessage(); err != nil || string(got) != msg {
					t.Fatalf("echo %q, %v; want %q", got, err, msg)
				}
				ws.Close()
				names = append(names, name)
			}
			for i := 1; i < len(names); i++ {
				if names[i] == names[i-1] {
					t.Fatalf("backends in order of connection: %v; want them to alternate", names)
				}
			}
		})

		t.Run("subprotocol", func(t *testing.T) {
			ws, resp := d.dialWS(t, "/proto", "v2.echo.wsplice.test", "v1.echo.wsplice.test")
			if got := ws.Subprotocol(); got != "v2.echo.wsplice.test" {
				t.Errorf("negotiated subprotocol %q (header %q), want the first offered, v2.echo.wsplice.test",
					got, resp.Header.Get("Sec-WebSocket-Protocol"))
			}
			if err := ws.WriteMessage(websocket.TextMessage, []byte("with subprotocol")); err != nil {
				t.Fatal(err)
			}
			if _, got, err := ws.ReadMessage(); err != nil || string(got) != "with subprotocol" {
				t.Fatalf("echo %q, %v", got, err)
			}
		})
	})
}

// TestPlainHTTP: plain GETs go through the same listener to a backend over
// one kept-alive connection, and the backend sees X-Forwarded-*.
func TestPlainHTTP(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)
		var dials atomic.Int32
		hc := d.httpClient(t, &dials)
		seen := map[string]bool{}
		for i := range 6 {
			resp, err := hc.Get(fmt.Sprintf("http://%s/page/%d", listenAddr, i))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			name := resp.Header.Get("X-Backend-Name")
			if resp.StatusCode != 200 || !isBackendName(name) || string(body) != name+"\n" {
				t.Fatalf("GET: %s, X-Backend-Name %q, body %q; want 200 and a backend's name", resp.Status, name, body)
			}
			seen[name] = true
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("6 sequential GETs opened %d connections, want 1 (keep-alive)", n)
		}
		t.Logf("backends seen over one connection: %v", seen)

		req, _ := http.NewRequest("GET", "http://"+listenAddr+"/headers", nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h http.Header
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatalf("decode /headers: %v", err)
		}
		xff := strings.Split(h.Get("X-Forwarded-For"), ",")
		if got := strings.TrimSpace(xff[len(xff)-1]); got != "198.18.1.2" {
			t.Errorf("X-Forwarded-For %q, want it to end with the client's address 198.18.1.2", h.Get("X-Forwarded-For"))
		}
		if got := h.Get("X-Forwarded-Proto"); got != "http" {
			t.Errorf("X-Forwarded-Proto %q, want http", got)
		}
		if got := h.Get("X-Forwarded-Host"); got != listenAddr {
			t.Errorf("X-Forwarded-Host %q, want the Host the client sent, %s", got, listenAddr)
		}
	})
}
