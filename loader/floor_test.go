package loader

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func rawFD(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestFloorSplice: the benchmark's sockmap floor carries bytes both ways
// in the kernel, intact and in order, once its two middle sockets are
// spliced (client -> a | b -> server, and back).
func TestFloorSplice(t *testing.T) {
	requirePriv(t)
	f, err := NewFloor()
	if err != nil {
		t.Fatalf("NewFloor: %v", err)
	}
	defer f.Close()
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	if err := f.Splice(rawFD(t, a), rawFD(t, b)); err != nil {
		t.Fatalf("Splice: %v", err)
	}
	for _, dir := range []struct {
		name     string
		from, to *net.TCPConn
	}{{"client to server", client, server}, {"server to client", server, client}} {
		msg := pattern(1<<20, uint64(len(dir.name)))
		go dir.from.Write(msg)
		dir.to.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(dir.to, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("%s: bytes differ from offset %d", dir.name, firstDiff(got, msg))
		}
	}
}
