package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/wsraw"
)

// The tests in this file use the echo backend's ?raw=1 mode: after the 101
// both ends treat the connection as a plain byte stream, so FIN and RST
// handling can be checked byte for byte.

// TestHalfClose: the client sends tens of MiB and shuts down its write
// side; it must get every byte back, then EOF. A splice that forwards the
// FIN before the bytes queued in front of it loses the tail.
func TestHalfClose(t *testing.T) {
	e := newEnv(t)
	n := size(t, "WSPLICE_BULK_BYTES", 64<<20, 4<<20)
	forEachDataplane(t, func(t *testing.T, dp string) {
		skipUntrimmedKernel(t, dp)
		d := e.startDaemon(t, dp)
		c, br, _ := d.rawUpgrade(t, "/?raw=1", nil)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, io.LimitReader(rand.NewChaCha8(seed(1)), n))
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		got, err := compareStream(br, rand.NewChaCha8(seed(1)), n)
		if err := <-werr; err != nil {
			t.Fatalf("send %s: %v", mib(n), err)
		}
		if err != nil {
			t.Fatalf("sent %s and shut down writing; got back %s: %v", mib(n), mib(got), err)
		}
		c.Close()
		d.idle(t)
	})
}

// TestBackendClose: a backend that sends tens of MiB and closes; the client
// gets every byte, then EOF.
func TestBackendClose(t *testing.T) {
	e := newEnv(t)
	n := size(t, "WSPLICE_BULK_BYTES", 64<<20, 4<<20)
	forEachDataplane(t, func(t *testing.T, dp string) {
		skipUntrimmedKernel(t, dp)
		d := e.startDaemon(t, dp)
		c, br, _ := d.rawUpgrade(t, fmt.Sprintf("/?raw=1&send=%d", n), nil)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		got, err := compareStream(br, &patternReader{}, n)
		if err != nil {
			t.Fatalf("backend sent %s and closed; client got %s: %v", mib(n), mib(got), err)
		}
		c.Close()
		d.idle(t)
	})
}

// TestBackendKilled: when the backend process dies and its kernel resets
// the connection, the client's connection is closed within a second.
func TestBackendKilled(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		victimAddr := "198.18.2.2:9100"
		victim := e.startEcho(t, e.topo.Backend1, victimAddr, "victim-"+dp)
		d := e.startDaemonBackends(t, dp, []string{victimAddr})
		// linger=0: the backend's socket closes with RST.
		c, br, _ := d.rawUpgrade(t, "/?raw=1&linger=0", nil)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		var b [4]byte
		if _, err := io.ReadFull(br, b[:]); err != nil || string(b[:]) != "ping" {
			t.Fatalf("echo %q, %v", b, err)
		}
		d.waitStats(t, 2*time.Second, "spliced 1", func(s stats) bool { return s.Spliced == 1 })

		victim.kill()
		killed := time.Now()
		n, err := br.Read(b[:])
		took := time.Since(killed)
		if n > 0 || err == nil {
			t.Fatalf("after the backend was killed, read %q, %v", b[:n], err)
		}
		if took > time.Second {
			t.Fatalf("client connection closed %v after the backend was killed (%v), want within 1s", took, err)
		}
		t.Logf("client saw %v after %v", err, took.Round(time.Millisecond))
		c.Close()
		d.idle(t)
	})
}

// TestStatsCountBytes: during a transfer /debug/stats shows the pair
// spliced and the bytes counted on the data path that moved them. On
// sockmap: sockets in the kernel maps, and bytes_kernel grown by about the
// bytes sent both ways (at least half of a bulk stream, where userspace
// may take over while a peer is full, and nearly all of a ping-pong, where
// no peer ever is). On userspace: bytes_userspace, and map_entries -1.
func TestStatsCountBytes(t *testing.T) {
	e := newEnv(t)
	n := size(t, "WSPLICE_BULK_BYTES", 64<<20, 4<<20)
	rounds := int(size(t, "WSPLICE_PINGPONG_ROUNDS", 1000, 100))
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)

		t.Run("bulk", func(t *testing.T) {
			skipUntrimmedKernel(t, dp)
			c, br, _ := d.rawUpgrade(t, "/?raw=1", nil)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			before := d.stats(t)
			werr := make(chan error, 1)
			go func() {
				_, err := io.Copy(c, io.LimitReader(rand.NewChaCha8(seed(2)), n))
				werr <- err
			}()
			got, err := compareStream(io.LimitReader(br, n), rand.NewChaCha8(seed(2)), n)
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if err != nil {
				t.Fatalf("echo: got %s of %s: %v", mib(got), mib(n), err)
			}
			// Both directions are done; the pair is still spliced. A
			// saturating bulk echo outruns the consumer, so the verdict's
			// backpressure hands a varying part of it to the slow path
			// (9-75% per run on the 2-vCPU test machine); what this checks
			// is that the kernel carried a real share while the map held
			// both sockets (ping_pong below holds the kernel to 90%).
			checkByteCounts(t, d, before, uint64(2*n), 0.02)
			c.CloseWrite()
			if _, err := br.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("after half-close, read %v, want EOF", err)
			}
			c.Close()
			d.idle(t)
		})

		t.Run("ping_pong", func(t *testing.T) {
			c, br, _ := d.rawUpgrade(t, "/?raw=1", nil)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			before := d.stats(t)
			msg, echo := make([]byte, 4<<10), make([]byte, 4<<10)
			rng := rand.NewChaCha8(seed(4))
			for i := range rounds {
				rng.Read(msg)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(br, echo); err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				if !bytes.Equal(msg, echo) {
					t.Fatalf("round %d: echo differs", i)
				}
			}
			checkByteCounts(t, d, before, uint64(2*rounds*len(msg)), 0.9)
			c.Close()
			d.idle(t)
		})
	})
}

// checkByteCounts checks /debug/stats once moved bytes were relayed since
// before, with at least kernelShare of them by the kernel on sockmap.
func checkByteCounts(t *testing.T, d *daemon, before stats, moved uint64, kernelShare float64) {
	t.Helper()
	during := d.waitStats(t, 2*time.Second, fmt.Sprintf("%d bytes counted", moved), func(s stats) bool {
		return s.BytesKernel+s.BytesUserspace-before.BytesKernel-before.BytesUserspace >= moved
	})
	kernel := during.BytesKernel - before.BytesKernel
	user := during.BytesUserspace - before.BytesUserspace
	t.Logf("moved %d bytes: bytes_kernel +%d (%.1f%%), bytes_userspace +%d, map_entries %d",
		moved, kernel, 100*float64(kernel)/float64(moved), user, during.MapEntries)
	if during.Dataplane != d.dp || during.Spliced != 1 {
		t.Errorf("stats dataplane %q spliced %d, want %s and 1", during.Dataplane, during.Spliced, d.dp)
	}
	// Slack for bytes flushed by userspace around the splice.
	const slack = 64 << 10
	if kernel+user > moved+slack {
		t.Errorf("counted %d bytes, more than the %d moved", kernel+user, moved)
	}
	switch d.dp {
	case "sockmap":
		if during.MapEntries <= 0 {
			t.Errorf("map_entries %d while a pair is spliced, want > 0", during.MapEntries)
		}
		if float64(kernel) < kernelShare*float64(moved) {
			t.Errorf("bytes_kernel grew by %d of %d bytes moved, want at least %.0f%%: the kernel path was hardly used",
				kernel, moved, 100*kernelShare)
		}
	case "userspace":
		if during.MapEntries != -1 || kernel != 0 {
			t.Errorf("userspace: map_entries %d, bytes_kernel +%d; want -1 and 0", during.MapEntries, kernel)
		}
	}
}

func seed(n byte) [32]byte { return [32]byte{n} }

// patternReader reads the stream wsplice-echo sends for ?send= and ?push=.
type patternReader struct{ off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = wsraw.PatternByte(p.off + int64(i))
	}
	p.off += int64(len(b))
	return len(b), nil
}

// compareStream reads r to EOF and compares it with the first n bytes of
// want. It returns how many bytes matched, and an error if r differs, is
// shorter or longer.
func compareStream(r io.Reader, want io.Reader, n int64) (int64, error) {
	got := make([]byte, 256<<10)
	exp := make([]byte, len(got))
	var off int64
	for {
		k, err := r.Read(got)
		if k > 0 {
			if off+int64(k) > n {
				return off, fmt.Errorf("more than the %d bytes expected", n)
			}
			io.ReadFull(want, exp[:k])
			if !bytes.Equal(got[:k], exp[:k]) {
				i := 0
				for got[i] == exp[i] {
					i++
				}
				return off, fmt.Errorf("byte %d differs: got %#x, want %#x", off+int64(i), got[i], exp[i])
			}
			off += int64(k)
		}
		switch {
		case errors.Is(err, io.EOF) && off == n:
			return off, nil
		case errors.Is(err, io.EOF):
			return off, fmt.Errorf("EOF after %d of %d bytes", off, n)
		case err != nil:
			return off, err
		}
	}
}
