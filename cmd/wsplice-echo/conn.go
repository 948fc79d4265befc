package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
)

// handshakeConn is a hijacked client connection.
//
// It first hands out the bytes the HTTP server had already buffered: a
// client (or a proxy flushing what it read) may send its first frame right
// behind the Upgrade request, and gorilla's Upgrade refuses to start when the
// hijacked reader holds bytes. It can also hold writes back ("cork") so the
// 101 and a first frame leave in a single write.
type handshakeConn struct {
	*net.TCPConn
	r io.Reader // bytes buffered before the hijack, then the socket

	mu     sync.Mutex
	corked bool
	held   []byte
}

func (c *handshakeConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *handshakeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.TCPConn.Write(p)
}

// uncork writes everything held since the hijack in one write(2).
func (c *handshakeConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	held := c.held
	c.held = nil
	_, err := c.TCPConn.Write(held)
	return err
}

// hijackWriter is the ResponseWriter given to websocket.Upgrader.Upgrade.
// Its Hijack returns a handshakeConn with an empty bufio.ReadWriter, so the
// upgrade succeeds with pipelined bytes and the handler can reach the
// handshakeConn afterwards.
type hijackWriter struct {
	http.ResponseWriter
	cork bool
	conn *handshakeConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, nil, errors.New("hijacked connection is not TCP")
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered())
	w.conn = &handshakeConn{
		TCPConn: tc,
		r:       io.MultiReader(bytes.NewReader(bytes.Clone(buffered)), tc),
		corked:  w.cork,
	}
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}
