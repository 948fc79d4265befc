package e2e

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/wsraw"
)

// TestBadInput: each kind of bad request gets its documented status from
// the binary, and a client that stalls in its request head is cut off
// after --header-timeout.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	const headerTimeout = time.Second
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--header-timeout", headerTimeout.String(), "--max-header-bytes", "16384")
		upgrade := func(extra ...string) string {
			h := "GET /bad HTTP/1.1\r\nHost: " + listenAddr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			for _, l := range extra {
				h += l + "\r\n"
			}
			return h + "\r\n"
		}
		cases := []struct {
			name    string
			request string
			status  int
			header  [2]string // a header the response must have
		}{
			{"malformed request line", "HELLO THERE\r\n\r\n", 400, [2]string{}},
			{"bare LF and no version", "GET /\n\n", 400, [2]string{}},
			{"upgrade without key", upgrade("Sec-WebSocket-Version: 13"), 400, [2]string{}},
			{"key not 16 bytes", upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: c2hvcnQ="), 400, [2]string{}},
			{"key not base64", upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!"), 400, [2]string{}},
			{"Content-Length and Transfer-Encoding", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, [2]string{}},
			{"websocket version 8", upgrade("Sec-WebSocket-Version: 8", "Sec-WebSocket-Key: "+wsraw.NewKey()), 426, [2]string{"Sec-WebSocket-Version", "13"}},
			{"head over max-header-bytes", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431, [2]string{}},
			{"backend answers a bad 101", string(wsraw.UpgradeRequest(listenAddr, "/?badaccept=1", wsraw.NewKey())), 502, [2]string{}},
		}
		for _, c := range cases {
			t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
				resp := roundTrip(t, d, c.request)
				if resp.StatusCode != c.status {
					t.Errorf("status %s, want %d", resp.Status, c.status)
				}
				if k := c.header[0]; k != "" && resp.Header.Get(k) != c.header[1] {
					t.Errorf("%s: %q, want %q", k, resp.Header.Get(k), c.header[1])
				}
			})
		}

		t.Run("stalled_head", func(t *testing.T) {
			c := d.dialTCP(t)
			start := time.Now()
			c.Write([]byte("GET / HTTP/1.1\r\nHost: a\r\n"))
			c.SetReadDeadline(start.Add(headerTimeout + 3*time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			took := time.Since(start)
			switch {
			case err == nil && resp.StatusCode != http.StatusRequestTimeout:
				t.Fatalf("stalled head answered %s, want 408 or a close", resp.Status)
			case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset"):
				t.Fatalf("stalled head: %v after %v, want 408 or a close within %v", err, took, headerTimeout)
			}
			if took > headerTimeout+time.Second || took < headerTimeout/2 {
				t.Fatalf("stalled head cut off after %v, want about %v", took, headerTimeout)
			}
			t.Logf("cut off after %v (%v)", took.Round(time.Millisecond), err)
		})

		t.Run("unreachable_backend", func(t *testing.T) {
			d.stop(5 * time.Second) // free the listen address
			// Nothing listens on this port: the backend's kernel resets.
			d := e.startDaemonBackends(t, dp, []string{"198.18.2.2:9999"})
			for _, req := range []string{
				string(wsraw.UpgradeRequest(listenAddr, "/", wsraw.NewKey())),
				"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
			} {
				if resp := roundTrip(t, d, req); resp.StatusCode != http.StatusBadGateway {
					t.Errorf("%q: status %s, want 502", strings.SplitN(req, "\r\n", 2)[0], resp.Status)
				}
			}
			d.stop(5 * time.Second)
		})

		t.Run("no_backend", func(t *testing.T) {
			d.stop(5 * time.Second) // free the listen address
			d := e.startDaemonBackends(t, dp, nil)
			for _, req := range []string{
				string(wsraw.UpgradeRequest(listenAddr, "/", wsraw.NewKey())),
				"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
			} {
				if resp := roundTrip(t, d, req); resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("%q: status %s, want 503", strings.SplitN(req, "\r\n", 2)[0], resp.Status)
				}
			}
			d.stop(5 * time.Second)
		})
	})
}

// roundTrip sends raw request bytes on a new connection and reads the
// response head.
func roundTrip(t *testing.T, d *daemon, request string) *http.Response {
	t.Helper()
	c := d.dialTCP(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(request)); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp
}
