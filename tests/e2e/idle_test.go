package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestIdleTimeout: with --idle-timeout 2s, on each data path, a WebSocket
// and an L4 connection that go quiet are closed (both sides) within a
// second of the timeout, while a WebSocket that chats every second, and
// one whose backend alone talks every second, live through three times
// the timeout.
func TestIdleTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--idle-timeout", timeout.String(), "--listen-tcp", tcpAddr)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		run := func(name string, fn func() error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(); err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
				}
			}()
		}

		idle, _ := d.dialWS(t, "/idle")
		chatty, _ := d.dialWS(t, "/chatty")
		ticking, _ := d.dialWS(t, "/ticking?tick=1s")
		l4, err := d.e.topo.Client.DialContext(context.Background(), "tcp", tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer l4.Close()

		run("idle WebSocket", func() error {
			echoOnce(t, idle, "last words")
			quiet := time.Now()
			idle.SetReadDeadline(quiet.Add(timeout + 4*time.Second))
			_, _, err := idle.ReadMessage()
			waited := time.Since(quiet)
			if err == nil {
				return fmt.Errorf("got a message on an idle connection")
			}
			if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
				return fmt.Errorf("still open %v after going quiet (timeout %v)", waited, timeout)
			}
			if waited < timeout-100*time.Millisecond || waited > timeout+time.Second {
				return fmt.Errorf("closed %v after going quiet (%v), want within a second of %v", waited, err, timeout)
			}
			return nil
		})
		run("idle L4 connection", func() error {
			// The backend echoes this request's answer, then the
			// connection goes quiet; it must end with EOF, not hang.
			l4.SetDeadline(time.Now().Add(timeout + 5*time.Second))
			if _, err := io.WriteString(l4, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				return err
			}
			buf := make([]byte, 4096)
			n, err := l4.Read(buf)
			if err != nil || n == 0 {
				return fmt.Errorf("first answer: %d bytes, %v", n, err)
			}
			quiet := time.Now()
			for err == nil {
				_, err = l4.Read(buf)
			}
			waited := time.Since(quiet)
			if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
				return fmt.Errorf("still open %v after going quiet", waited)
			}
			if waited > timeout+time.Second {
				return fmt.Errorf("closed %v after going quiet (%v), want within a second of %v", waited, err, timeout)
			}
			return nil
		})
		run("chatty WebSocket", func() error {
			for i := 0; i < 6; i++ {
				time.Sleep(time.Second)
				msg := fmt.Sprintf("still here %d", i)
				chatty.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := chatty.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					return fmt.Errorf("write after %ds: %w", i+1, err)
				}
				if _, got, err := chatty.ReadMessage(); err != nil || string(got) != msg {
					return fmt.Errorf("echo after %ds: %q, %v", i+1, got, err)
				}
			}
			return nil
		})
		run("backend-only traffic", func() error {
			// The client never writes: the backend's ticks alone keep
			// the connection alive.
			deadline := time.Now().Add(3 * timeout)
			for n := 0; time.Now().Before(deadline); n++ {
				ticking.SetReadDeadline(time.Now().Add(3 * time.Second))
				_, got, err := ticking.ReadMessage()
				if err != nil {
					return fmt.Errorf("after %d ticks: %w", n, err)
				}
				if want := fmt.Sprintf("tick %d", n); string(got) != want {
					return fmt.Errorf("got %q, want %q", got, want)
				}
			}
			return nil
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if st := d.stats(t); st.IdleClosed < 2 {
			t.Errorf("idle_closed = %d, want >= 2 (the idle WebSocket and the L4 connection)", st.IdleClosed)
		}
	})
}

// TestIdleTimeoutInFlight: a client that stops reading while its backend
// pushes goes idle with bytes still inside the balancer; the idle timeout
// must then reset the connection, not end it with a FIN that would pass a
// cut stream off as a clean end.
func TestIdleTimeoutInFlight(t *testing.T) {
	const push = 32 << 20
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--idle-timeout", "1s")
		ws, _ := d.dialWS(t, fmt.Sprintf("/push?push=%d&id=inflight-%s", push, dp))
		time.Sleep(3 * time.Second) // read nothing: the pair goes idle, full
		d.waitStats(t, 5*time.Second, "the idle pair closed", func(s stats) bool { return s.IdleClosed == 1 && s.Spliced == 0 })
		ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		var got int64
		var err error
		for {
			var r io.Reader
			if _, r, err = ws.NextReader(); err != nil {
				break
			}
			var n int64
			n, err = io.Copy(io.Discard, r)
			got += n
			if err != nil {
				break
			}
		}
		if got >= push {
			t.Skipf("all %d bytes reached the client before the timeout: nothing was in flight", got)
		}
		if !strings.Contains(err.Error(), "reset") {
			t.Fatalf("after %d of %d bytes the stream ended with %v, want a reset (bytes were lost)", got, push, err)
		}
		t.Logf("reset after %d of %d bytes: %v", got, push, err)
	})
}

// TestIdleTimeoutSlowReader: a client that keeps reading, slowly, what its
// backend pushed at once is not idle, though no byte reaches the balancer
// for longer than the timeout (the bytes wait in the balancer's sockets
// and, on the kernel path, its queues): it gets every byte.
func TestIdleTimeoutSlowReader(t *testing.T) {
	const push = 4 << 20
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp, "--idle-timeout", "1s")
		dl := d.dialer()
		dl.ReadBufferSize = 4 << 10
		dl.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.e.topo.Client.DialContext(ctx, network, addr)
			if err == nil {
				// A small window, so that the bytes wait in the balancer.
				err = c.(*net.TCPConn).SetReadBuffer(16 << 10)
			}
			return c, err
		}
		ws, _, err := dl.Dial("ws://"+listenAddr+fmt.Sprintf("/push?push=%d&id=slow-%s", push, dp), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		ws.SetReadDeadline(time.Now().Add(60 * time.Second))
		start := time.Now()
		buf := make([]byte, 8<<10)
		var got int64
		for got < push {
			_, r, err := ws.NextReader()
			if err != nil {
				t.Fatalf("after %d of %d bytes in %v: %v (the idle timeout cut a slow reader)", got, push, time.Since(start), err)
			}
			for {
				n, err := r.Read(buf)
				got += int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d of %d bytes in %v: %v (the idle timeout cut a slow reader)", got, push, time.Since(start), err)
				}
				// At most 8 KiB per 5 ms: 4 MiB take 2.5 s at least,
				// over two idle timeouts.
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
}
