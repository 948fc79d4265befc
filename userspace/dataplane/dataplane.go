// Package dataplane defines how an established client/backend pair is moved
// once the handshake is done, and holds the userspace implementation.
//
// The proxy calls Adopt on every TCP connection (accepted or dialed) before it
// reads its first byte, does all handshake I/O through the returned *Conn, and
// then calls Splice. The kernel implementation lives in package loader; it
// needs Adopt-before-read because bytes a socket queued before it entered the
// sockmap are not seen by the verdict program, and bytes partly read from a
// segment would be redirected twice (see ../shared/KERNEL-NOTES.md 1 and 12).
package dataplane

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Adopt and Splice once the data path is shutting down.
var ErrClosed = errors.New("dataplane closed")

// Dataplane moves bytes between spliced connection pairs.
type Dataplane interface {
	// Name is "sockmap" or "userspace"; it appears in logs and stats.
	Name() string
	// Adopt registers a connection before any byte is read from it. All
	// later I/O by the proxy must go through the returned Conn so that its
	// byte counts are exact.
	Adopt(c *net.TCPConn) (*Conn, error)
	// Splice takes ownership of both connections. The caller has already
	// written to the backend every byte it read from the client but did
	// not consume (bytes pipelined behind the request). toClient holds
	// what the client is owed before the backend's stream (the 101 head and
	// any frames the backend sent behind it): Splice writes it, under the
	// client's write deadline, after it has taken over the client's stream,
	// so that nothing the client sends in answer to the 101 is read by the
	// proxy. Splice returns once the pair is handed over; the data plane
	// closes both connections when they are done and propagates FIN and
	// RST. On error both connections are closed.
	Splice(client, backend *Conn, toClient []byte) error
	// Release closes a connection that was adopted but is not spliced
	// (plain HTTP, a failed handshake) and forgets it.
	Release(c *Conn)
	// SetIdleTimeout sets how long a pair spliced from now on may go
	// without a byte in either direction before both sides are closed
	// (0: never). Pairs already spliced keep the timeout they started
	// with, so a reload never touches an established connection.
	SetIdleTimeout(d time.Duration)
	// Stats reports counters for logs, tests and the admin endpoint.
	Stats() Stats
	// ClosePairs closes every pair spliced so far, both sides, as Close
	// does, and goes on serving: a shutdown without a drain ends the
	// established connections at once while requests in flight finish.
	ClosePairs()
	// Close closes every spliced connection and releases kernel state.
	Close() error
}

// Stats are the data plane's counters.
type Stats struct {
	Dataplane string `json:"dataplane"`
	// Spliced is the number of connection pairs spliced right now.
	Spliced int64 `json:"spliced"`
	// SplicedTotal counts pairs ever spliced.
	SplicedTotal uint64 `json:"spliced_total"`
	// MapEntries is the number of sockets in the kernel's maps (sockmap
	// only, counted by walking the maps; -1 for userspace).
	MapEntries int `json:"map_entries"`
	// BytesKernel counts bytes moved by the kernel without userspace
	// (sockmap redirect), both directions, counted by the BPF program.
	BytesKernel uint64 `json:"bytes_kernel"`
	// BytesUserspace counts bytes userspace moved after Splice (the whole
	// userspace data path, or the sockmap path's backpressure slow path).
	BytesUserspace uint64 `json:"bytes_userspace"`
	// OverlapTrimmed counts bytes of retransmitted TCP segments that
	// repeated bytes already seen and that the kernel path cut off before
	// forwarding (sockmap only; see bpf/wsplice.c trim_overlap).
	OverlapTrimmed uint64 `json:"overlap_trimmed"`
	// IdleClosed counts pairs closed by the idle timeout.
	IdleClosed uint64 `json:"idle_closed"`
	// OverflowResets counts pairs reset because one side kept sending
	// while its answers went unread, past what the kernel path can hold
	// back (sockmap only; see bpf/wsplice.c pass_slack).
	OverflowResets uint64 `json:"overflow_resets"`
}

// Conn is an adopted TCP connection with exact counts of the bytes the
// proxy read from it and wrote to it.
//
// A connection from a TLS listener carries a TLS session. While TLS is set,
// Read, Write and CloseWrite go through it (the counts are of plaintext),
// and a data path must move the pair's bytes through Read and Write: the
// socket itself holds ciphertext, so a kernel path that splices sockets
// hands such a pair to userspace. Once the session's keys are in the
// kernel (kernel TLS), the proxy clears TLS and sets KTLS: the socket reads
// and writes plaintext, and a record that is not application data (an
// alert, a KeyUpdate) makes a read fail instead of returning its bytes.
type Conn struct {
	*net.TCPConn
	read    atomic.Int64
	written atomic.Int64
	// Cookie is the kernel's socket cookie (sockmap only; 0 otherwise).
	Cookie uint64
	// TLS, when set, is the TLS session all I/O goes through.
	TLS *tls.Conn
	// KTLS is set when kernel TLS encrypts and decrypts on the socket.
	KTLS bool
	// Owner, set on a client Conn before Splice, is told when the pair
	// starts and ends (see Owner); nil: nobody is told.
	Owner Owner
}

// PairCounts are the bytes a spliced pair moved after Splice, each way
// (the 101 and anything the proxy wrote during the handshake excluded).
type PairCounts struct {
	ToBackend uint64
	ToClient  uint64
}

// Pair is a data plane's handle on one spliced pair, given to its Owner.
type Pair interface {
	// Counts returns the bytes the pair moved so far (exact once it has
	// ended).
	Counts() PairCounts
	// Close closes both sockets (FIN after what is queued), from any
	// goroutine; a no-op once the pair has ended.
	Close()
}

// Owner is the proxy's record of a spliced pair: what the data plane keeps
// of the proxy's side of a connection once it is spliced, so it should be
// small (at 10,000 idle connections, every byte here is 10 kB of RSS).
type Owner interface {
	// PairStarted is called once by Splice, before it returns nil and
	// before PairEnded, with the data path carrying the pair ("sockmap"
	// or "userspace") and its handle.
	PairStarted(path string, p Pair)
	// PairEnded is called once when the pair has ended (both sockets
	// closed), with its final counts; never more than once. If Splice
	// fails it may or may not be called.
	PairEnded(c PairCounts)
}

// NewConn wraps c with zero counts.
func NewConn(c *net.TCPConn) *Conn { return &Conn{TCPConn: c} }

// NewConnCounted wraps c with the counts of the bytes already read from
// and written to its socket by other means (a raw handshake, see Raw).
func NewConnCounted(c *net.TCPConn, read, written int64) *Conn {
	dc := &Conn{TCPConn: c}
	dc.read.Store(read)
	dc.written.Store(written)
	return dc
}

// RawSock is a socket the proxy's event loop owns as a bare non-blocking
// fd, with exact counts of what the loop read from it and wrote to it.
type RawSock struct {
	FD      int
	Cookie  uint64 // from AdoptFD (0: not adopted by a kernel path)
	Read    int64
	Written int64
	// Prepare, if set, is applied to the Go conn ConnFD makes of the
	// socket: net.FileConn resets TCP keepalive to Go's defaults, and the
	// proxy sets its own again here.
	Prepare func(*net.TCPConn)
}

// Raw is implemented by a data plane that can take sockets the proxy
// handles as bare fds, outside Go's net package (the HTTP listeners'
// handshake loop). The rules are Dataplane's: AdoptFD before the first
// byte is read, every byte written to the backend before SpliceFD.
type Raw interface {
	// AdoptFD registers fd (a connected TCP socket) and returns its
	// cookie (0 when the data plane keeps none).
	AdoptFD(fd int) (uint64, error)
	// ConnFD hands an adopted fd to Go's net package, for the parts of a
	// connection's life the loop does not serve: it returns the Conn all
	// later I/O goes through (counts carried over) and closes sk.FD.
	ConnFD(sk RawSock) (*Conn, error)
	// ReleaseFD closes an adopted fd that is not spliced and forgets it.
	ReleaseFD(sk RawSock)
	// SpliceFD is Splice for two adopted fds, which it takes over: it
	// writes toClient to the client (non-blocking, waiting while the
	// socket is full) after taking over its stream, and tells owner as
	// Splice tells a client Conn's Owner. On error both are closed.
	SpliceFD(client, backend RawSock, toClient []byte, owner Owner) error
}

// Read reads from the connection and counts the bytes.
func (c *Conn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.TLS != nil {
		n, err = c.TLS.Read(p)
	} else {
		n, err = c.TCPConn.Read(p)
	}
	c.read.Add(int64(n))
	return n, err
}

// Write writes to the connection and counts the bytes.
func (c *Conn) Write(p []byte) (int, error) {
	var n int
	var err error
	if c.TLS != nil {
		n, err = c.TLS.Write(p)
	} else {
		n, err = c.TCPConn.Write(p)
	}
	c.written.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the connection; over TLS it sends close_notify
// first, so the peer can tell the end of the stream from a truncation.
func (c *Conn) CloseWrite() error {
	if c.TLS != nil {
		return c.TLS.CloseWrite()
	}
	return c.TCPConn.CloseWrite()
}

// BytesRead is the number of bytes read through this Conn.
func (c *Conn) BytesRead() int64 { return c.read.Load() }

// BytesWritten is the number of bytes written through this Conn.
func (c *Conn) BytesWritten() int64 { return c.written.Load() }

// ReadFrom keeps net.TCPConn's splice(2) fast path and counts the bytes.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if c.TLS != nil {
		return io.Copy(writerOnly{c}, r)
	}
	n, err := c.TCPConn.ReadFrom(r)
	c.written.Add(n)
	return n, err
}

// WriteTo keeps net.TCPConn's splice(2) fast path and counts the bytes.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	if c.TLS != nil {
		return io.Copy(w, readerOnly{c})
	}
	n, err := c.TCPConn.WriteTo(w)
	c.read.Add(n)
	return n, err
}

// writerOnly and readerOnly hide a Conn's ReadFrom and WriteTo from
// io.Copy, which would otherwise call them again.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
