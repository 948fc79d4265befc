package loader

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The slow path peeks at passed bytes before it consumes them; peeking a
// socket in sock_hash must return the bytes a read then returns.
func TestPeekMatchesRead(t *testing.T) {
	s := newSplicer(t)
	c, a := tcpPair(t)
	dc, err := s.Adopt(a)
	if err != nil || dc.Cookie == 0 {
		t.Fatalf("adopt: %v", err)
	}
	defer s.Release(dc)
	msg := pattern(4<<20, 5)
	go func() {
		for off := 0; off < len(msg); off += 100000 {
			c.Write(msg[off:min(off+100000, len(msg))])
		}
	}()
	fd, _ := dupFD(dc.TCPConn)
	defer unix.Close(fd)
	got := 0
	peekBuf := make([]byte, 1<<20)
	readBuf := make([]byte, 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for got < len(msg) && time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, peekBuf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if n <= 0 {
			if err != nil && err != unix.EAGAIN {
				t.Fatalf("peek: %v", err)
			}
			time.Sleep(time.Millisecond)
			continue
		}
		m, err := unix.Read(fd, readBuf[:n])
		if err != nil || m != n {
			t.Fatalf("read after peek of %d: %d, %v", n, m, err)
		}
		if !bytes.Equal(peekBuf[:n], readBuf[:n]) {
			t.Fatalf("at %d: peeked %d bytes differ from the bytes read", got, n)
		}
		if !bytes.Equal(readBuf[:n], msg[got:got+n]) {
			t.Fatalf("at %d: bytes read differ from the stream", got)
		}
		got += n
	}
	if got != len(msg) {
		t.Fatalf("got %d of %d", got, len(msg))
	}
}
