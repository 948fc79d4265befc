package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/tests/wsraw"
)

func newTestServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newEchoServer("b1", zerolog.Nop()))
	t.Cleanup(srv.Close)
	return srv
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-help"}, &out, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -help: %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(out.String(), "-listen") {
		t.Errorf("help does not list -listen:\n%s", out.String())
	}
}

func TestPlainHTTP(t *testing.T) {
	srv := newTestServer(t)
	for path, want := range map[string]string{"/healthz": "ok", "/": "b1\n", "/any/path": "b1\n"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != want || resp.Header.Get("X-Backend-Name") != "b1" {
			t.Errorf("GET %s: %s %q X-Backend-Name=%q, want 200 %q b1", path, resp.Status, body, resp.Header.Get("X-Backend-Name"), want)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/headers", nil)
	req.Header.Set("X-Forwarded-For", "198.18.1.2")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h http.Header
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if h.Get("X-Forwarded-For") != "198.18.1.2" || h.Get("Host") == "" {
		t.Errorf("/headers = %v, want X-Forwarded-For and Host", h)
	}
}

func dial(t *testing.T, srv *httptest.Server, path string, protos ...string) (*websocket.Conn, *http.Response) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: protos}
	ws, resp, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, resp
}

func TestEcho(t *testing.T) {
	srv := newTestServer(t)
	ws, resp := dial(t, srv, "/chat", "v2.chat", "v1.chat")
	if got := resp.Header.Get("X-Backend-Name"); got != "b1" {
		t.Errorf("X-Backend-Name %q, want b1", got)
	}
	if got := ws.Subprotocol(); got != "v2.chat" {
		t.Errorf("subprotocol %q, want the first offered, v2.chat", got)
	}
	big := make([]byte, maxMessage)
	fillPattern(big, 7)
	for _, m := range []struct {
		typ  int
		data []byte
	}{{websocket.TextMessage, []byte("héllo")}, {websocket.BinaryMessage, []byte{0, 1, 2}}, {websocket.BinaryMessage, big}} {
		// The echo streams: a message bigger than the socket buffers
		// only comes back whole if it is read while it is written.
		werr := make(chan error, 1)
		go func() { werr <- ws.WriteMessage(m.typ, m.data) }()
		typ, got, err := ws.ReadMessage()
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("echo of %d-byte type %d message: got %d bytes type %d", len(m.data), m.typ, len(got), typ)
		}
	}
}

// rawDial sends the Upgrade request and then extra in one write.
func rawDial(t *testing.T, srv *httptest.Server, target string, extra []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	key := wsraw.NewKey()
	if _, err := c.Write(append(wsraw.UpgradeRequest("echo", target, key), extra...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if _, err := wsraw.ReadUpgradeResponse(br, key); err != nil {
		t.Fatal(err)
	}
	return c, br
}

func TestHelloAndPipelined(t *testing.T) {
	srv := newTestServer(t)
	c, br := rawDial(t, srv, "/?hello=1", wsraw.AppendFrame(nil, wsraw.OpText, []byte("ping")))
	for _, want := range []string{"hello from b1", "ping"} {
		f, err := wsraw.ReadFrame(br, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		if f.Opcode != wsraw.OpText || string(f.Payload) != want {
			t.Fatalf("frame opcode %d %q, want text %q", f.Opcode, f.Payload, want)
		}
	}
	c.Close()
}

func TestRaw(t *testing.T) {
	srv := newTestServer(t)
	c, br := rawDial(t, srv, "/?raw=1", []byte("abc"))
	c.Write([]byte("def"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "abcdef" {
		t.Fatalf("raw echo %q, %v; want abcdef then EOF", got, err)
	}

	_, br = rawDial(t, srv, "/?raw=1&send=1000000", nil)
	got, err = io.ReadAll(br)
	if err != nil || len(got) != 1000000 || wsraw.CheckPattern(got, 0) != -1 {
		t.Fatalf("raw send: %d bytes, %v; want 1000000 pattern bytes then EOF", len(got), err)
	}
}

func TestPush(t *testing.T) {
	srv := newTestServer(t)
	ws, _ := dial(t, srv, "/?push=200000&id=p1")
	var off int64
	for off < 200000 {
		_, m, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if i := wsraw.CheckPattern(m, off); i >= 0 {
			t.Fatalf("byte %d differs from the pattern", off+int64(i))
		}
		off += int64(len(m))
	}
	// The server counts a write once it returns, which can be after the
	// client has read its bytes: poll briefly for the final count.
	var p struct {
		Total, Sent int64
		Done        bool
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		resp, err := http.Get(srv.URL + "/push-progress?id=p1")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if (p.Sent == 200000 && p.Done) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p.Total != 200000 || p.Sent != 200000 || !p.Done {
		t.Errorf("progress %+v, want all 200000 sent and done", p)
	}
}

func TestBadAccept(t *testing.T) {
	srv := newTestServer(t)
	_, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/?badaccept=1", nil)
	if err == nil {
		t.Fatal("dial succeeded despite a wrong Sec-WebSocket-Accept")
	}
}
