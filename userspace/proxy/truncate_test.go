package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wsplice/wsplice/userspace/http1"
)

// A backend that fails halfway through a body must not reach the client as
// a whole answer, whatever framing the client can take: an HTTP/1.1 client
// that asked to close gets chunked framing without its last chunk, an
// HTTP/1.0 client (close-delimited framing) a reset instead of a FIN.
func TestPlainTruncatedResponseNotWhole(t *testing.T) {
	half := strings.Repeat("x", 100000)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		// Chunked, one chunk of the promised two, then a reset.
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		io.WriteString(c, "186a0\r\n"+half+"\r\n")
		time.Sleep(50 * time.Millisecond)
		_ = c.SetLinger(0)
	})
	p := startProxy(t, []string{be}, nil)
	for _, tc := range []struct{ name, req string }{
		{"http/1.1 connection close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := dial(t, p.addr)
			cl.send(tc.req)
			resp := cl.head()
			if resp.Status != 200 {
				t.Fatalf("status %d", resp.Status)
			}
			var err error
			var got []byte
			if resp.Chunked {
				got, err = io.ReadAll(http1.NewChunkedReader(cl.br, 1<<10, 502))
			} else {
				got, err = io.ReadAll(cl.br)
			}
			if err == nil {
				t.Fatalf("the client read %d of 200000 bytes and a clean end (chunked %v): a truncated answer looks whole", len(got), resp.Chunked)
			}
			if tc.name == "http/1.1 connection close" && !resp.Chunked {
				t.Errorf("an HTTP/1.1 client got a close-delimited body, whose truncation it cannot tell")
			}
		})
	}
}

// A backend that answers an upload before reading it (413, a large body,
// then close): the client receives the whole answer, announced with
// Connection: close, although it is still sending its body.
func TestPlainEarlyAnswerToUpload(t *testing.T) {
	answer := bytes.Repeat([]byte("y"), 4<<20)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4194304\r\nConnection: close\r\n\r\n")
		c.Write(answer)
		// A lingering close, as servers do: the upload still arriving
		// must not reset the answer on this side either.
		c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, br)
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 52428800\r\n\r\n")
	// Keep uploading while the answer is read, slowly at first.
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 800; i++ {
			if _, err := cl.c.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	resp := cl.head()
	if resp.Status != 413 {
		t.Fatalf("status %d", resp.Status)
	}
	if !resp.Header.HasToken("Connection", "close") {
		t.Errorf("the answer does not say Connection: close, yet the connection closes after it")
	}
	got := make([]byte, len(answer))
	if n, err := io.ReadFull(cl.br, got); err != nil {
		t.Fatalf("the client got %d of %d bytes of the answer: %v", n, len(answer), err)
	}
}

// A client that resets its connection while its request waits for the
// backend cancels the request: the backend connection closes at once
// instead of at --backend-timeout. A client that only half-closes still
// gets its answer.
func TestPlainClientResetCancels(t *testing.T) {
	gone := make(chan time.Duration, 4)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		start := time.Now()
		if req.Target == "/halfclose" {
			time.Sleep(300 * time.Millisecond)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		// Answer in 5 s, unless wsplice gives the request up first.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = br.ReadByte()
		gone <- time.Since(start)
	})
	p := startProxy(t, []string{be}, nil)

	cl := dial(t, p.addr)
	cl.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	time.Sleep(200 * time.Millisecond) // the request reaches the backend
	_ = cl.c.SetLinger(0)
	_ = cl.c.Close()
	select {
	case d := <-gone:
		if d > 2*time.Second {
			t.Errorf("the backend's connection stayed %v after the client reset, want it closed at once", d)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("the backend connection did not close")
	}

	cl = dial(t, p.addr)
	cl.send("GET /halfclose HTTP/1.1\r\nHost: h\r\n\r\n")
	_ = cl.c.CloseWrite()
	resp := cl.head()
	if resp.Status != 200 || cl.body(resp) != "ok" {
		t.Fatalf("a half-closed client got %d, want its answer", resp.Status)
	}
}

// A client's request trailer fields reach the backend after the body,
// declared or not; framing and routing fields among them do not.
func TestPlainRequestTrailers(t *testing.T) {
	got := make(chan string, 1)
	be := startRawBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http1.RequestHead) {
		cr := http1.NewChunkedReader(br, 1<<10, 400)
		body, err := io.ReadAll(cr)
		if err != nil {
			got <- "body: " + err.Error()
			return
		}
		got <- string(body) + "|" + cr.Trailer().Get("X-Check") + "|" + cr.Trailer().Get("X-Other") + "|" + cr.Trailer().Get("Host")
		io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
	})
	p := startProxy(t, []string{be}, nil)
	cl := dial(t, p.addr)
	cl.send("POST /tr HTTP/1.1\r\nHost: h\r\nTrailer: X-Check\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0\r\nX-Check: 42\r\nX-Other: 7\r\nHost: evil\r\n\r\n")
	if resp := cl.head(); resp.Status != 204 {
		t.Fatalf("status %d", resp.Status)
	}
	if s := <-got; s != "abc|42|7|" {
		t.Errorf("backend got body|X-Check|X-Other|Host = %q, want %q", s, "abc|42|7|")
	}
}
