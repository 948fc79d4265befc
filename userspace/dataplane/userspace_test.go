package dataplane

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	for _, c := range []net.Conn{a, b} {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// splicedPair builds client ⇄ proxy(client side) … proxy(backend side) ⇄
// backend and splices the middle.
func splicedPair(t *testing.T, dp Dataplane) (client, backend *net.TCPConn) {
	client, pc := tcpPair(t)
	pb, backend := tcpPair(t)
	cc, err := dp.Adopt(pc)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := dp.Adopt(pb)
	if err != nil {
		t.Fatal(err)
	}
	greeting := []byte("HTTP/1.1 101 Switching Protocols\r\n\r\n")
	if err := dp.Splice(cc, bc, greeting); err != nil {
		t.Fatal(err)
	}
	// What Splice owed the client arrives first.
	got := make([]byte, len(greeting))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, greeting) {
		t.Fatalf("client got %q, %v; want %q first", got, err, greeting)
	}
	return client, backend
}

func TestUserspaceCopiesAndHalfCloses(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	client, backend := splicedPair(t, dp)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB, more than one chunk
	go func() {
		_, _ = client.Write(big)
		_ = client.CloseWrite()
	}()
	got, err := io.ReadAll(backend)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("backend got %d bytes, err %v; want %d", len(got), err, len(big))
	}
	// The other direction still flows after the client's FIN.
	if _, err := backend.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	_ = backend.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "reply" {
		t.Fatalf("client got %q, %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dp.Stats().Spliced != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := dp.Stats()
	if st.Spliced != 0 || st.SplicedTotal != 1 || st.BytesUserspace != uint64(len(big)+5) || st.MapEntries != -1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestUserspacePropagatesReset(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	client, backend := splicedPair(t, dp)
	_ = backend.SetLinger(0)
	_ = backend.Close()
	_, err := io.ReadAll(client)
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("client read: %v, want connection reset", err)
	}
}

func TestUserspaceClose(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	client, _ := splicedPair(t, dp)
	done := make(chan error, 1)
	go func() { done <- dp.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
	}
	if _, err := io.ReadAll(client); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Errorf("client not closed: %v", err)
	}
	a, _ := tcpPair(t)
	if _, err := dp.Adopt(a); err != ErrClosed {
		t.Errorf("Adopt after Close: %v, want ErrClosed", err)
	}
}

// TestUserspaceCountsLive: the counters include every byte moved so far
// while the pair is still open, not only when it ends.
func TestUserspaceCountsLive(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	client, backend := splicedPair(t, dp)
	msg := make([]byte, 4096)
	const rounds = 50
	for range rounds {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(backend, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := backend.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, msg); err != nil {
			t.Fatal(err)
		}
	}
	want := uint64(2 * rounds * len(msg))
	deadline := time.Now().Add(2 * time.Second)
	for dp.Stats().BytesUserspace < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := dp.Stats().BytesUserspace; got != want {
		t.Errorf("bytes_userspace = %d while open, want %d", got, want)
	}
}

// TestUserspaceMixedSizes: messages that take the small read/write rounds
// and bursts that switch a direction to splice rounds and back, both ways,
// each checked byte for byte and in order.
func TestUserspaceMixedSizes(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	client, backend := splicedPair(t, dp)
	sizes := []int{1, 64, smallCopy - 1, smallCopy, smallCopy + 1, 3, 4 << 20, 7, 2 * smallCopy, 64, 1}
	var want uint64
	seq := byte(0)
	fill := func(b []byte) {
		for i := range b {
			b[i] = seq
			seq = seq*31 + 7
		}
	}
	for i, n := range sizes {
		for _, d := range []struct {
			name string
			w, r *net.TCPConn
		}{{"to backend", client, backend}, {"to client", backend, client}} {
			msg := make([]byte, n)
			fill(msg)
			errc := make(chan error, 1)
			go func() { _, err := d.w.Write(msg); errc <- err }()
			got := make([]byte, n)
			if _, err := io.ReadFull(d.r, got); err != nil {
				t.Fatalf("message %d (%d B) %s: %v", i, n, d.name, err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("message %d (%d B) %s: bytes differ", i, n, d.name)
			}
			want += uint64(n)
		}
	}
	// Nothing more than was sent arrives.
	_ = client.CloseWrite()
	if rest, err := io.ReadAll(backend); err != nil || len(rest) != 0 {
		t.Fatalf("backend got %d extra bytes, %v", len(rest), err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for dp.Stats().BytesUserspace < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := dp.Stats().BytesUserspace; got != want {
		t.Errorf("bytes_userspace = %d, want %d", got, want)
	}
}
