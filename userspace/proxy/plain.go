package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/http1"
)

// errBodyAbandoned is what the transport reads from a request body the
// proxy took back after the response.
var errBodyAbandoned = errors.New("request body abandoned")

// errBackendTimeout cancels a plain request whose backend did not answer
// within the response timeout.
var errBackendTimeout = errors.New("backend did not answer in time")

// errClientGone cancels a round trip whose client reset its connection
// while it waited for the answer.
var errClientGone = errors.New("client reset the connection")

// abortWatch waits, while a request whose body has all been read waits
// for its answer, for the client to reset its connection, and cancels the
// round trip if it does: the backend, its max-conns and the client's
// connection-limit slots are not held for an answer nobody will read.
// A FIN is not an abort (a client may half-close and wait for the
// answer, as HAProxy also allows by default); bytes of a pipelined next
// request stay in the buffer for it.
type abortWatch struct {
	cc     *clientConn
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	done   chan struct{} // nil until started
	ended  bool
}

// start begins watching; nothing once stop has run.
func (w *abortWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended || w.done != nil {
		return
	}
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		if _, err := w.cc.br.Peek(1); err != nil && isReset(err) {
			w.cancel(errClientGone)
		}
	}()
}

// stop ends the watch and returns once its reader is gone, so that the
// connection's reader is free for the answer and the next request.
func (w *abortWatch) stop() {
	w.mu.Lock()
	w.ended = true
	done := w.done
	w.mu.Unlock()
	if done == nil {
		return
	}
	_ = w.cc.conn.SetReadDeadline(time.Now())
	<-done
	_ = w.cc.conn.SetReadDeadline(time.Time{})
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// answerTimer cancels a plain request when its backend has not answered
// within d of the request being sent (start), unless the answer came
// first (stop).
type answerTimer struct {
	mu      sync.Mutex
	d       time.Duration
	t       *time.Timer
	stopped bool
	cancel  context.CancelCauseFunc
}

func (a *answerTimer) start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.t == nil && !a.stopped {
		a.t = time.AfterFunc(a.d, func() { a.cancel(errBackendTimeout) })
	}
}

func (a *answerTimer) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	if a.t != nil {
		a.t.Stop()
	}
}

// plain reverse-proxies one ordinary HTTP request through the pooled
// transport and reports whether the client connection goes on.
func (cc *clientConn) plain(req *http1.RequestHead) bool {
	p := cc.p
	breq := cc.backendRequest(req)
	body := cc.requestBody(req)
	var tried []*backend.Backend
	var lastErr error // of the last failed connect
	var lease *backend.Lease
	var resp *http.Response
	var cancelRT context.CancelCauseFunc // the successful round trip's
	for {
		var err error
		lease, err = p.pool.Acquire(breq, tried)
		if err != nil {
			body.finish(cc)
			if localResourceError(lastErr) {
				p.refusedLocal(lastErr)
				cc.fail(503, errLocalResources, retryLater)
			} else if len(tried) > 0 {
				cc.fail(502, "backend unreachable", nil)
			} else {
				cc.fail(503, "no backend available", nil)
			}
			return false
		}
		lease.SetCloser(cc.abort)
		be := lease.Backend()
		out, err := cc.outgoingRequest(req, be.Addr(), body)
		if err != nil {
			lease.Release()
			cc.fail(400, "invalid request target", nil)
			return false
		}
		ctx, cancel := context.WithCancelCause(out.Context())
		defer cancel(nil)
		if req.Minor >= 1 {
			ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: cc.interim})
		}
		wait := &answerTimer{d: p.conf().ResponseTimeout, cancel: cancel}
		watch := &abortWatch{cc: cc, cancel: cancel}
		body.whenSent(func() { wait.start(); watch.start() })
		resp, err = p.transport.RoundTrip(out.WithContext(ctx))
		wait.stop()
		watch.stop()
		if err == nil {
			p.reportConnect(be, nil)
			cancelRT = cancel
			break
		}
		lease.Release()
		var cerr *connectError
		if errors.As(err, &cerr) {
			p.reportConnect(be, err)
			// Another backend may take it if no byte of the body
			// went to this one (none can have: the connect failed,
			// but the transport may have read ahead).
			if !body.touched() && p.force.Err() == nil {
				if !localResourceError(err) { // refusedLocal warns for those
					p.log.Warn().Err(err).Str("backend", be.Addr()).Int("attempt", len(tried)+1).Msg("backend connect failed")
				}
				tried = append(tried, be)
				lastErr = err
				continue
			}
		}
		// Before finish, whose wake-up of a blocked body read would
		// count as the client's timeout.
		status, reason, clientFault := body.clientFault()
		body.finish(cc)
		if errors.Is(context.Cause(ctx), errClientGone) {
			p.log.Debug().Str("backend", be.Addr()).Str("method", req.Method).Msg("client reset the connection while its request waited for the backend: request cancelled")
			return false
		}
		if errors.Is(context.Cause(ctx), errBackendTimeout) {
			p.log.Warn().Str("backend", be.Addr()).Str("method", req.Method).Msg("backend request timed out")
			cc.fail(504, "backend timed out", nil)
			return false
		}
		if clientFault {
			p.log.Debug().Err(err).Str("backend", be.Addr()).Str("method", req.Method).Msg("client request body failed")
			cc.fail(status, reason, nil)
			return false
		}
		p.log.Warn().Err(err).Str("backend", be.Addr()).Str("method", req.Method).Msg("backend request failed")
		cc.fail(502, "backend failed", nil)
		return false
	}
	defer lease.Release()
	be := lease.Backend()
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		body.finish(cc)
		cc.fail(502, "backend switched protocols on a plain request", nil)
		return false
	}
	// An answer that starts before the request body has all been read
	// (a backend that refuses an upload early) ends the connection: say
	// so in its head.
	keepAlive := req.Minor >= 1 && !req.WantsClose() && !p.shuttingDown.Load() && body.complete.Load()
	r := cc.fromTransport(req, resp)
	r.header = append(r.header, cc.stickyField(breq, be)...)
	// Cancelling the round trip's context ends a read of its body.
	r.abort, r.watchClient = cancelRT, body.complete.Load()
	keep, err := cc.writeResponse(r, keepAlive, req.Minor == 0)
	cc.logRelayError(err, be.Addr())
	// The next request starts where this body ends: a body not read to its
	// end leaves the stream unusable.
	if !body.finish(cc) {
		keep = false
		if err == nil {
			// The client may still be sending its body: closing with
			// its bytes unread would reset the connection and destroy
			// the answer in flight, which may be megabytes.
			cc.lingerCloseUntil(time.Now().Add(p.conf().HeaderTimeout), lingerUploadBytes)
		}
	}
	return keep && err == nil
}

// interim passes an interim (1xx) answer of the backend on to the client,
// as a proxy must (RFC 9110 §15.2): 103 Early Hints, 102 Processing. Not
// a 100 Continue: the proxy answers Expect itself (requestBody), and a
// backend's 100 answers a request that no longer carries it. Only before
// the final answer's head, and only to HTTP/1.1 clients (plain sets the
// trace for those).
func (cc *clientConn) interim(code int, header textproto.MIMEHeader) error {
	if code == http.StatusContinue {
		return nil
	}
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\n", code, interimReason(code))
	for _, f := range endToEnd(http.Header(header)) {
		b = fmt.Appendf(b, "%s: %s\r\n", f.Name, f.Value)
	}
	b = append(b, "\r\n"...)
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if !cc.responded {
		_ = cc.conn.SetWriteDeadline(time.Now().Add(cc.p.conf().HeaderTimeout))
		_, _ = cc.conn.Write(b)
		_ = cc.conn.SetWriteDeadline(time.Time{}) // the answer has none
	}
	return nil
}

// endToEnd is a backend answer's fields to pass on, in name order: not
// the hop-by-hop ones (those its Connection field names included), nor
// Content-Length, which the proxy sets for its own framing.
func endToEnd(h http.Header) http1.Header {
	conn := http1.Header{}
	for _, v := range h.Values("Connection") {
		conn = append(conn, http1.Field{Name: "Connection", Value: v})
	}
	d := newDropper(conn)
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out http1.Header
	for _, k := range keys {
		lname := strings.ToLower(k)
		if d.drop(lname) || lname == "content-length" {
			continue
		}
		for _, v := range h[k] {
			out = append(out, http1.Field{Name: k, Value: v})
		}
	}
	return out
}

// interimReason is the reason phrase of an interim answer.
func interimReason(code int) string {
	if r := http.StatusText(code); r != "" {
		return r
	}
	return "Informational"
}

// outgoingRequest builds the backend request: origin-form target kept
// byte for byte, hop-by-hop fields dropped, X-Forwarded-* set.
func (cc *clientConn) outgoingRequest(req *http1.RequestHead, addr string, body *requestBody) (*http.Request, error) {
	target, authority := originForm(req.Target)
	host := req.Host
	if authority != "" {
		host = authority
	}
	u := &url.URL{Scheme: "http", Host: addr}
	path, query, hasQuery := strings.Cut(target, "?")
	switch {
	case target == "*":
		u.Opaque = "*"
	case strings.HasPrefix(path, "//"):
		// Opaque would be taken for an authority here; go the long way.
		pu, err := url.ParseRequestURI(path)
		if err != nil {
			return nil, err
		}
		u.Path, u.RawPath = pu.Path, pu.RawPath
	default:
		// Opaque is written as is: the backend sees the client's bytes.
		u.Opaque = path
	}
	u.RawQuery, u.ForceQuery = query, hasQuery && query == ""

	h := make(http.Header, len(req.Header)+3)
	d := newDropper(req.Header)
	var fwd forwarded
	var nb [32]byte
	for _, f := range req.Header {
		lname := string(appendLower(nb[:0], f.Name))
		if d.drop(lname) || fwd.take(lname, f.Value) {
			continue
		}
		switch lname {
		case "host", "content-length":
			continue // from Request.Host and Request.ContentLength
		case "expect":
			if body.cont != nil {
				continue // answered here, see requestBody
			}
		}
		h.Add(f.Name, f.Value)
	}
	for _, f := range fwd.fields(remoteIP(cc.conn.RemoteAddr()), host, cc.proto()) {
		h.Set(f.Name, f.Value)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = nil // no Go-http-client default
	}
	out := &http.Request{
		Method:     req.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       host,
	}
	out = out.WithContext(cc.p.force)
	switch {
	case req.Chunked:
		out.Body, out.ContentLength = body, -1
		// The client's trailer fields follow its body; the transport
		// announces the keys declared in its Trailer field and writes
		// every field filled in by the body's end.
		out.Trailer = make(http.Header)
		for _, k := range req.Header.Values("Trailer") {
			for _, name := range strings.Split(k, ",") {
				if name = strings.TrimSpace(name); name != "" && forwardableTrailer(strings.ToLower(name)) {
					out.Trailer[http.CanonicalHeaderKey(name)] = nil
				}
			}
		}
		body.mu.Lock()
		body.trailer = out.Trailer
		body.mu.Unlock()
	case req.ContentLength > 0:
		out.Body, out.ContentLength = body, req.ContentLength
	default:
		out.Body, out.ContentLength = http.NoBody, 0
	}
	return out, nil
}

// forwardableTrailer tells whether a request trailer field (lower case)
// may be passed on: not one that frames, routes or authenticates the
// request, nor a hop-by-hop one (RFC 9110 §6.5.1).
func forwardableTrailer(lname string) bool {
	switch lname {
	case "content-length", "host", "authorization", "proxy-authorization", "expect", "cookie", "content-type", "content-encoding", "content-range":
		return false
	}
	return !hopByHop[lname] && !strings.HasPrefix(lname, "proxy-")
}

// addTrailer copies the client's trailer fields into the backend
// request's trailer.
func addTrailer(dst http.Header, tr http1.Header) {
	var nb [32]byte
	for _, f := range tr {
		if forwardableTrailer(string(appendLower(nb[:0], f.Name))) {
			dst.Add(f.Name, f.Value)
		}
	}
}

// fromTransport turns the transport's response into one for the client.
func (cc *clientConn) fromTransport(req *http1.RequestHead, resp *http.Response) *response {
	r := &response{
		status: resp.StatusCode,
		reason: strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)+" "),
		length: resp.ContentLength,
		body:   resp.Body,
	}
	if r.reason == resp.Status || r.reason == "" {
		r.reason = http.StatusText(resp.StatusCode)
	}
	r.header = endToEnd(resp.Header)
	if req.Method == "HEAD" || resp.StatusCode/100 == 1 || resp.StatusCode == 204 || resp.StatusCode == 304 {
		r.bodyless, r.body, r.length = true, nil, -1
		if cl := resp.Header.Get("Content-Length"); cl != "" && resp.StatusCode != 204 {
			r.length, _ = strconv.ParseInt(cl, 10, 64)
		}
	}
	r.trailer = func() http1.Header {
		var tr http1.Header
		for k, vs := range resp.Trailer {
			for _, v := range vs {
				tr = append(tr, http1.Field{Name: k, Value: v})
			}
		}
		return tr
	}
	return r
}

// requestBody is a client's request body as the transport reads it, from
// the client connection's buffered reader. The transport may still read it
// from its own goroutine after the response is done; finish takes the
// reader back before the connection reads its next request.
type requestBody struct {
	mu sync.Mutex
	r  io.Reader
	// chunked is r for a chunked body, whose trailer fields go into
	// trailer (the backend request's Trailer, which the transport writes
	// after the body) when it ends.
	chunked *http1.ChunkedReader
	trailer http.Header
	// conn is the client's connection: each read of the body has its
	// header timeout to bring bytes (a stalled upload gets 408, and
	// holds no backend connection for longer).
	conn    net.Conn
	timeout time.Duration
	// finishing is set by finish before it wakes a blocked read: a read
	// that sets its deadline after finish's gives up.
	finishing atomic.Bool
	eof       bool
	done      bool
	// read is set once the transport has read from the body: the
	// request can no longer go to another backend.
	read bool
	// cont sends "100 Continue" before the first read when the client
	// asked for it: the transport is told nothing of Expect.
	cont func()
	// sent is called once the body has been read to its end (at once
	// for a request without one): the backend's time to answer starts.
	sent func()
	// err is the first error reading the client's body (a malformed
	// chunk, a client that closed or stalled mid-body): the client's
	// fault, not the backend's, when the round trip then fails.
	err error
	// complete is set once the body has been read to its end (at once
	// for a request without one); read without mu, which a blocked Read
	// holds.
	complete atomic.Bool
}

func (cc *clientConn) requestBody(req *http1.RequestHead) *requestBody {
	b := &requestBody{conn: cc.conn, timeout: cc.p.conf().HeaderTimeout}
	switch {
	case req.Chunked:
		b.chunked = http1.NewChunkedReader(cc.br, cc.p.cfg.MaxHeaderBytes, 400)
		b.r = b.chunked
	case req.ContentLength > 0:
		b.r = io.LimitReader(cc.br, req.ContentLength)
	default:
		b.eof = true
		b.complete.Store(true)
		return b
	}
	if req.Minor >= 1 && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		b.cont = func() {
			cc.wmu.Lock()
			defer cc.wmu.Unlock()
			if !cc.responded {
				_ = cc.conn.SetWriteDeadline(time.Now().Add(cc.p.conf().HeaderTimeout))
				_, _ = cc.conn.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n"))
				_ = cc.conn.SetWriteDeadline(time.Time{}) // the answer has none
			}
		}
	}
	return b
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof {
		return 0, io.EOF
	}
	if b.done {
		return 0, errBodyAbandoned
	}
	if b.cont != nil {
		b.cont()
		b.cont = nil
	}
	b.read = true
	_ = b.conn.SetReadDeadline(time.Now().Add(b.timeout))
	if b.finishing.Load() {
		return 0, errBodyAbandoned
	}
	n, err := b.r.Read(p)
	if err == io.EOF && b.chunked != nil && b.trailer != nil {
		// Before the transport sees the end: it writes the trailer
		// then.
		addTrailer(b.trailer, b.chunked.Trailer())
	}
	if err == io.EOF {
		b.eof = true
		if lr, ok := b.r.(*io.LimitedReader); ok && lr.N > 0 {
			err = io.ErrUnexpectedEOF
			b.eof = false
		}
	}
	if b.eof {
		b.complete.Store(true)
		// Nothing more to read until the next request head, which sets
		// a deadline of its own.
		_ = b.conn.SetReadDeadline(time.Time{})
	}
	if b.eof && b.sent != nil {
		b.sent()
		b.sent = nil
	}
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// clientFault returns the status and reason to answer when the round trip
// failed because of the client's body (ok false: it did not).
func (b *requestBody) clientFault() (status int, reason string, ok bool) {
	b.mu.Lock()
	err := b.err
	b.mu.Unlock()
	var herr *http1.Error
	switch {
	case err == nil:
		return 0, "", false
	case errors.As(err, &herr):
		return herr.Status, herr.Reason, true
	case isTimeout(err):
		return 408, "request body timeout", true
	default: // the client closed or reset mid-body
		return 400, "incomplete request body", true
	}
}

// whenSent has f called once the body has been read to its end: now if it
// has been (or there is none).
func (b *requestBody) whenSent(f func()) {
	b.mu.Lock()
	if !b.eof {
		b.sent = f
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	f()
}

// touched reports whether the transport has read from the body.
func (b *requestBody) touched() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read
}

// Close is a no-op: the client connection, not the transport, owns it.
func (b *requestBody) Close() error { return nil }

// finish stops the transport reading and reports whether the body was
// read to its end, leaving the client's stream at the next request.
func (b *requestBody) finish(cc *clientConn) bool {
	b.finishing.Store(true)
	if !b.mu.TryLock() {
		// The transport is blocked reading the client: wake it.
		_ = cc.conn.SetReadDeadline(time.Now())
		b.mu.Lock()
	}
	b.done = true
	eof := b.eof
	b.mu.Unlock()
	return eof
}
