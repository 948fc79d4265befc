package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/wsraw"
)

// TestFrameBehind101: a frame the backend sends in the same write as its
// 101 reaches the client exactly once, intact, before the echo of the
// client's first message, and the 101 is not repeated inside the stream.
// It repeats because the failure it guards against is a race.
func TestFrameBehind101(t *testing.T) {
	e := newEnv(t)
	runs := int(size(t, "WSPLICE_HANDSHAKE_RUNS", 50, 5))
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)
		for i := range runs {
			c, br, resp := d.rawUpgrade(t, "/?hello=1", nil)
			name := resp.Header.Get("X-Backend-Name")
			c.SetDeadline(time.Now().Add(5 * time.Second))
			ping := fmt.Sprintf("ping %d", i)
			if _, err := c.Write(wsraw.AppendFrame(nil, wsraw.OpText, []byte(ping))); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"hello from " + name, ping} {
				f, err := wsraw.ReadFrame(br, 1<<10)
				if err != nil {
					t.Fatalf("run %d: reading %q: %v", i, want, err)
				}
				if f.Opcode != wsraw.OpText || !f.Fin || string(f.Payload) != want {
					t.Fatalf("run %d: frame opcode %d fin %v %q, want text %q", i, f.Opcode, f.Fin, f.Payload, want)
				}
			}
			expectSilence(t, c, br.Buffered())
			c.Close()
		}
		d.idle(t)
	})
}

// TestPipelinedFrame: a client that sends its first frame in the same
// write as the Upgrade request gets it echoed.
func TestPipelinedFrame(t *testing.T) {
	e := newEnv(t)
	runs := int(size(t, "WSPLICE_HANDSHAKE_RUNS", 50, 5))
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)
		for i := range runs {
			first := fmt.Sprintf("pipelined %d", i)
			second := make([]byte, 3000) // spans more than one segment with the request
			for j := range second {
				second[j] = byte(i + j)
			}
			extra := wsraw.AppendFrame(nil, wsraw.OpText, []byte(first))
			extra = wsraw.AppendFrame(extra, wsraw.OpBinary, second)
			c, br, _ := d.rawUpgrade(t, "/pipelined", extra)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			for _, want := range []struct {
				op   byte
				data string
			}{{wsraw.OpText, first}, {wsraw.OpBinary, string(second)}} {
				f, err := wsraw.ReadFrame(br, 1<<20)
				if err != nil {
					t.Fatalf("run %d: reading echo: %v", i, err)
				}
				if f.Opcode != want.op || string(f.Payload) != want.data {
					t.Fatalf("run %d: echo opcode %d, %d bytes; want opcode %d, %d bytes",
						i, f.Opcode, len(f.Payload), want.op, len(want.data))
				}
			}
			expectSilence(t, c, br.Buffered())
			c.Close()
		}
		d.idle(t)
	})
}

// expectSilence fails t if the server sends anything more within 100 ms.
func expectSilence(t *testing.T, c net.Conn, buffered int) {
	t.Helper()
	if buffered > 0 {
		t.Fatalf("%d unexpected bytes after the expected frames", buffered)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [64]byte
	n, err := c.Read(b[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the expected frames: read %q, %v; want nothing", b[:n], err)
	}
}
