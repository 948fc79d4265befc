// Command gofloor is the benchmark's reference for what Go's net package
// costs a WebSocket balancer, whatever its design: the least a Go proxy
// can do per connection. It accepts a client, reads its request head,
// dials the one backend, forwards the head, reads the backend's answer
// head, forwards it, then copies both ways with io.Copy (splice(2) between
// TCP sockets) and passes each half-close on. It parses nothing, rewrites
// nothing, enforces no limit and keeps no state: not a product, a floor.
// scripts/bench.sh runs it as the "gofloor" target for the handshake and
// closed-loop scenarios, so a run shows how far wsplice's handshake layer
// is from it, and how far it is from nginx.
//
// Usage: gofloor LISTEN_ADDR BACKEND_ADDR
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gofloor LISTEN_ADDR BACKEND_ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "gofloor:", err)
		os.Exit(1)
	}
	backend := os.Args[2]
	for {
		c, err := ln.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		go serve(c.(*net.TCPConn), backend)
	}
}

// maxHead bounds a request or response head.
const maxHead = 16 << 10

// readHead returns the head (up to and including the empty line) read
// through br.
func readHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for len(head) < maxHead {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		head = append(head, line...)
		if len(line) <= 2 { // "\r\n" or "\n"
			return head, nil
		}
	}
	return nil, fmt.Errorf("head over %d bytes", maxHead)
}

func serve(c *net.TCPConn, backend string) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	req, err := readHead(br)
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	bc, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		return
	}
	b := bc.(*net.TCPConn)
	defer b.Close()
	if _, err := b.Write(req); err != nil {
		return
	}
	bbr := bufio.NewReaderSize(b, 4096)
	resp, err := readHead(bbr)
	if err != nil {
		return
	}
	if _, err := c.Write(resp); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(b, br) // buffered bytes first, then splice
		_ = b.CloseWrite()
	}()
	_, _ = io.Copy(c, bbr)
	_ = c.CloseWrite()
	<-done
}
