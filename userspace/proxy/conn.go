package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/limit"
	"github.com/wsplice/wsplice/userspace/websocket"

	"golang.org/x/sys/unix"
)

// Timings of the close after an error answer.
const (
	// lingerTimeout and lingerBytes bound how long and how much a closing
	// connection is drained after an error answer: closing with unread
	// input sends a RST that can destroy the answer before the client
	// reads it (net/http does the same).
	lingerTimeout = 500 * time.Millisecond
	lingerBytes   = 256 << 10
	// lingerUploadBytes bounds what is discarded of an upload the
	// backend answered before reading it all, while the answer drains.
	lingerUploadBytes = 64 << 20
	// lingerPoll is how often a lingering close checks the send queue.
	lingerPoll = 20 * time.Millisecond
)

// clientConn is one accepted client connection, served by one goroutine
// until it is closed or handed to the data plane.
type clientConn struct {
	p    *Proxy
	conn *dataplane.Conn
	kind listenerKind
	// track follows the connection for metrics, limits and the drain
	// (nil for a refused one).
	track *tracked
	// refused, when set, is the limit that refused the connection: it
	// only gets its 503.
	refused limit.Reason
	// idle is set while waiting for a request head; shutdown closes
	// idle connections at once.
	idle atomic.Bool
	// backend is the handshake's backend connection until it is spliced
	// or released, so that a forced shutdown can close it too.
	backend atomic.Pointer[dataplane.Conn]

	br *bufio.Reader
	bw *bufio.Writer
	// wmu orders the "100 Continue" a request body may send against the
	// response head.
	wmu       sync.Mutex
	responded bool

	served  int // requests answered on this connection
	spliced bool

	// tried and triedErr are the backends whose connect failed before
	// the connection came to Go (the handshake loop's), and the last
	// error: connectBackend goes on from there.
	tried    []*backend.Backend
	triedErr error
	// lease, when set, is the backend the handshake loop chose but could
	// not dial (given by name): connectBackend dials it first.
	lease *backend.Lease
	// headDeadline, when set, is the first request head's deadline (the
	// handshake loop's accept time plus HeaderTimeout).
	headDeadline time.Time
}

func (cc *clientConn) serve() { cc.serveFrom(nil, nil) }

// serveFrom serves the connection with prefix as the first bytes of its
// stream (bytes the handshake loop read from the socket) and, when first
// is set, first answers the request the loop has read: first reports
// whether the connection stays in the request loop.
func (cc *clientConn) serveFrom(prefix []byte, first func() bool) {
	p := cc.p
	defer p.wg.Done()
	cc.br = p.readers.Get().(*bufio.Reader)
	if len(prefix) > 0 {
		// Buffered at once (the loop reads at most MaxHeaderBytes, the
		// reader's size): bytes pipelined behind a request must show in
		// Buffered, which upgrade forwards before splicing.
		cc.br.Reset(io.MultiReader(bytes.NewReader(prefix), cc.conn))
		_, _ = cc.br.Peek(len(prefix))
	} else {
		cc.br.Reset(cc.conn)
	}
	cc.bw = p.writers.Get().(*bufio.Writer)
	cc.bw.Reset(cc.conn)
	debug := p.log.Debug().Enabled()
	if debug {
		p.log.Debug().Stringer("remote", cc.conn.RemoteAddr()).Stringer("local", cc.conn.LocalAddr()).Msg("connection accepted")
	}
	defer func() {
		if cc.lease != nil { // chosen by the handshake loop, never dialled
			cc.lease.Release()
			cc.lease = nil
		}
		cc.br.Reset(nil)
		p.readers.Put(cc.br)
		cc.bw.Reset(nil)
		p.writers.Put(cc.bw)
		// A spliced pair keeps cc (its lease's closer): it must not keep
		// the pooled buffers too, once the pool has let them go.
		cc.br, cc.bw = nil, nil
		if !cc.spliced {
			p.forget(cc)
			p.dp.Release(cc.conn)
			cc.track.release()
		}
		if debug {
			p.log.Debug().Stringer("remote", cc.conn.RemoteAddr()).Int("requests", cc.served).Bool("spliced", cc.spliced).
				Int64("bytes_read", cc.conn.BytesRead()).Int64("bytes_written", cc.conn.BytesWritten()).Msg("connection done")
		}
	}()
	if cc.kind.tls() && !cc.startTLS() {
		if cc.refused != limit.OK {
			<-p.rejecting
		}
		return
	}
	if cc.refused != limit.OK {
		cc.answerRefused()
		return
	}
	if cc.kind == kindTCP || cc.kind == kindTCPTLS {
		cc.serveL4()
		return
	}
	if first != nil {
		if !first() {
			return
		}
		cc.served++
	}
	for {
		cc.idle.Store(true)
		if p.shuttingDown.Load() {
			return
		}
		if !cc.serveOne() {
			return
		}
		cc.served++
	}
}

// serveOne reads one request head and answers it. It reports whether the
// connection stays open for another request.
func (cc *clientConn) serveOne() bool {
	p := cc.p
	deadline := time.Now().Add(p.conf().HeaderTimeout)
	if !cc.headDeadline.IsZero() {
		deadline, cc.headDeadline = cc.headDeadline, time.Time{}
	}
	_ = cc.conn.SetReadDeadline(deadline)
	if _, err := cc.br.Peek(1); err != nil {
		// Nothing sent: an idle keep-alive connection just closes; a new
		// connection that stays silent gets its 408.
		if isTimeout(err) && cc.served == 0 {
			p.handshakes.Add(1)
			p.handshakeErrors.Add(1)
			cc.fail(http.StatusRequestTimeout, "timed out waiting for the request head", nil)
		}
		return false
	}
	cc.idle.Store(false)
	req, err := http1.ReadRequestHead(cc.br, p.cfg.MaxHeaderBytes)
	if err != nil {
		p.handshakes.Add(1)
		p.handshakeErrors.Add(1)
		var herr *http1.Error
		switch {
		case errors.As(err, &herr):
			cc.fail(herr.Status, herr.Reason, nil)
		case isTimeout(err):
			cc.fail(http.StatusRequestTimeout, "timed out reading the request head", nil)
		case errors.Is(err, io.ErrUnexpectedEOF):
			// The client gave up half-way; nobody to answer.
		}
		if p.log.Debug().Enabled() {
			p.log.Debug().Err(err).Stringer("remote", cc.conn.RemoteAddr()).Msg("bad request head")
		}
		return false
	}
	_ = cc.conn.SetReadDeadline(time.Time{})
	// A new request: its interim answers and 100 Continue may go out
	// until its own answer starts.
	cc.wmu.Lock()
	cc.responded = false
	cc.wmu.Unlock()
	if req.Method == "CONNECT" {
		cc.fail(http.StatusMethodNotAllowed, "CONNECT is not supported", nil)
		return false
	}
	if websocket.IsUpgrade(req.Header) {
		return cc.upgrade(req)
	}
	return cc.plain(req)
}

// fail answers with a short text error and closes the connection.
func (cc *clientConn) fail(status int, msg string, extra http1.Header) {
	b := errorAnswer(status, msg, extra)
	cc.wmu.Lock()
	cc.responded = true
	cc.wmu.Unlock()
	_ = cc.conn.SetWriteDeadline(time.Now().Add(cc.p.conf().HeaderTimeout))
	if _, err := cc.conn.Write(b); err != nil {
		return
	}
	cc.lingerClose()
}

// errorAnswer is wsplice's own error response: status, msg as a text
// body, Connection: close, and the extra fields.
func errorAnswer(status int, msg string, extra http1.Header) []byte {
	body := msg + "\n"
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n",
		status, http.StatusText(status), len(body))
	for _, f := range extra {
		b = fmt.Appendf(b, "%s: %s\r\n", f.Name, f.Value)
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// resetOnClose makes the connection's close a RST: the answer being sent
// cannot be completed (its backend failed mid-body), and an orderly FIN
// would end a close-delimited body as if it were whole.
func (cc *clientConn) resetOnClose() {
	_ = cc.conn.SetLinger(0)
}

// lingerClose sends FIN and drains what the client still sends, briefly,
// so the answer is not destroyed by a RST. The caller releases the conn.
func (cc *clientConn) lingerClose() {
	cc.lingerCloseUntil(time.Now().Add(lingerTimeout), lingerBytes)
}

// lingerCloseUntil sends FIN, then reads and discards what the client
// still sends until the client has acknowledged every byte written to it
// (the socket's send queue is empty), the deadline passes or max bytes
// have been discarded: a close with unread input sends a RST, which
// destroys whatever of the answer is still in flight.
func (cc *clientConn) lingerCloseUntil(deadline time.Time, max int64) {
	_ = cc.conn.CloseWrite()
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	var discarded int64
	eof := false
	for discarded < max && time.Now().Before(deadline) {
		if cc.unsent() == 0 {
			return
		}
		if eof {
			// The client is done sending; its ACKs may still come.
			time.Sleep(lingerPoll)
			continue
		}
		wait := time.Now().Add(lingerPoll)
		if deadline.Before(wait) {
			wait = deadline
		}
		_ = cc.conn.SetReadDeadline(wait)
		n, err := cc.conn.Read(*bufp)
		discarded += int64(n)
		if err != nil && !isTimeout(err) {
			eof = errors.Is(err, io.EOF)
			if !eof {
				return // reset: nothing more will be delivered
			}
		}
	}
}

// unsent is what the client's socket holds that the client has not
// acknowledged (SIOCOUTQ); -1 when it cannot be read.
func (cc *clientConn) unsent() int {
	rc, err := cc.conn.TCPConn.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}

// dialBackend connects to addr for client cc and adopts the connection
// before any I/O. The backend of a TLS client is not adopted: such a pair
// is always relayed in userspace (see acceptLoop), and a socket left in
// the sockmap would have the bytes the verdict passes queued where
// splice(2) does not look (the psock's ingress queue, not the socket's).
func (p *Proxy) dialBackend(cc *clientConn, addr string) (*dataplane.Conn, error) {
	tc, err := p.dial(p.force, addr)
	if err != nil {
		return nil, &connectError{err}
	}
	if cc.kind.tls() {
		return dataplane.NewConn(tc), nil
	}
	conn, err := p.dp.Adopt(tc)
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("adopt backend connection %s: %w", addr, err)
	}
	return conn, nil
}

// response is an answer to write to the client, from a backend or not.
type response struct {
	status int
	reason string
	// header holds end-to-end fields only; framing fields are added.
	header http1.Header
	// bodyless is set for answers that never have a body (HEAD, 1xx, 204,
	// 304); length is then only announced if >= 0.
	bodyless bool
	body     io.Reader
	// length is the body length, -1 when unknown (chunked or until EOF).
	length  int64
	trailer func() http1.Header
	// abort, when set, makes a pending read of body fail: writeResponse
	// calls it when the body goes without a byte for the backend timeout
	// (errBodyStalled) or the client resets its connection
	// (errClientGone), so that neither holds the connection, its
	// backend and its limit slots for good.
	abort func(cause error)
	// watchClient: nothing else reads the client's connection while the
	// body is relayed (the request's body has all been read), so abort
	// may also be called on a client reset.
	watchClient bool
}

// readerFunc is a function as an io.Reader.
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// errBodyStalled ends the relay of an answer whose body went without a
// byte for the backend timeout.
var errBodyStalled = errors.New("backend sent no byte of the answer's body within the backend timeout")

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeResponse writes r to the client, framing the body for this client,
// and reports whether the connection may serve another request.
func (cc *clientConn) writeResponse(r *response, keepAlive bool, http10 bool) (bool, error) {
	cc.wmu.Lock()
	cc.responded = true
	cc.wmu.Unlock()
	chunked := false
	switch {
	case r.bodyless:
	case r.length >= 0:
	case !http10:
		// Chunked even when the connection closes after this answer:
		// its last chunk is how an HTTP/1.1 client tells a whole body
		// from a backend that failed halfway.
		chunked = true
	default:
		// Unknown length for a client that cannot take chunked: the end
		// of the body is the end of the connection.
		keepAlive = false
	}
	w := cc.bw
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\n", r.status, r.reason)
	for _, f := range r.header {
		fmt.Fprintf(w, "%s: %s\r\n", f.Name, f.Value)
	}
	switch {
	case chunked:
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
	case r.length >= 0:
		_, _ = w.WriteString("Content-Length: " + strconv.FormatInt(r.length, 10) + "\r\n")
	}
	if !keepAlive {
		_, _ = w.WriteString("Connection: close\r\n")
	}
	_, _ = w.WriteString("\r\n")
	if r.bodyless || r.body == nil {
		return keepAlive, w.Flush()
	}
	var dst io.Writer = w
	if chunked {
		dst = http1.ChunkedWriter{W: w}
	}
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	body := r.body
	var aborted atomic.Pointer[error] // why abort was called, if it was
	if r.abort != nil {
		abort := func(cause error) {
			if aborted.CompareAndSwap(nil, &cause) {
				r.abort(cause)
			}
		}
		// The backend timeout bounds each wait for the body's next bytes,
		// as it bounds the wait for the head.
		d := cc.p.conf().ResponseTimeout
		stall := time.AfterFunc(d, func() { abort(errBodyStalled) })
		stall.Stop()
		defer stall.Stop()
		body = readerFunc(func(b []byte) (int, error) {
			stall.Reset(d)
			n, err := r.body.Read(b)
			stall.Stop()
			return n, err
		})
		if r.watchClient {
			// A client reset ends the relay at once (a FIN does not:
			// see abortWatch).
			watch := &abortWatch{cc: cc, cancel: abort}
			watch.start()
			defer watch.stop()
		}
	}
	var copied int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			copied += int64(n)
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, fmt.Errorf("write response body: %w", err)
			}
			// Flush per read: responses stream (server-sent events,
			// long polls), they are not buffered whole.
			if err := w.Flush(); err != nil {
				return false, fmt.Errorf("write response body: %w", err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			cc.resetOnClose()
			if why := aborted.Load(); why != nil {
				rerr = *why
			}
			return false, fmt.Errorf("read response body: %w", rerr)
		}
	}
	if r.length >= 0 && copied != r.length {
		cc.resetOnClose()
		return false, fmt.Errorf("response body: %w", io.ErrUnexpectedEOF)
	}
	if chunked {
		var tr http1.Header
		if r.trailer != nil {
			tr = r.trailer()
		}
		if err := (http1.ChunkedWriter{W: w}).Close(tr); err != nil {
			return false, err
		}
	}
	return keepAlive, w.Flush()
}

// logRelayError logs a relayed answer that could not be passed on whole:
// a backend whose body stalled as a warning (the client's connection is
// reset mid-answer), anything else (mostly a client gone) at debug.
func (cc *clientConn) logRelayError(err error, backend string) {
	switch {
	case err == nil:
	case errors.Is(err, errBodyStalled):
		cc.p.log.Warn().Err(err).Str("backend", backend).Msg("relay response: backend stalled, connection closed")
	case cc.p.log.Debug().Enabled():
		cc.p.log.Debug().Err(err).Str("backend", backend).Msg("relay response")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
