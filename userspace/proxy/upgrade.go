package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/websocket"
)

// maxInterim bounds the 1xx answers skipped before the backend's real one.
const maxInterim = 8

// errTooManyInterim fails a handshake whose backend sent more than
// maxInterim interim (1xx) answers: the client gets 502, never a 1xx as
// the final answer.
var errTooManyInterim = fmt.Errorf("backend sent more than %d interim (1xx) answers", maxInterim)

// finalAnswer is err, or errTooManyInterim when resp, the last head read,
// is still an interim one.
func finalAnswer(resp *http1.ResponseHead, err error) error {
	if err == nil && resp.Status < 200 && resp.Status != 101 {
		return errTooManyInterim
	}
	return err
}

// upgrade runs a WebSocket handshake with a backend and splices the pair.
// It reports whether the client connection stays in the request loop
// (only when the backend refused the upgrade with an ordinary response).
func (cc *clientConn) upgrade(req *http1.RequestHead) bool {
	cc.p.handshakes.Add(1)
	return cc.upgradeCounted(req, time.Now())
}

// handshakeResult ends a handshake attempt in the counters and metrics and,
// for a status, answers the client with it.
type handshakeResult struct {
	cc     *clientConn
	start  time.Time
	failed bool
}

// reject counts the attempt as failed (once) and answers status (0: none).
// Counted before answering, so that a client that sees the answer sees the
// counter too.
func (h *handshakeResult) reject(status int, msg string, extra http1.Header) {
	p := h.cc.p
	if !h.failed {
		h.failed = true
		p.handshakeErrors.Add(1)
		p.metrics.handshakeDone(status, h.start)
	}
	if status != 0 {
		h.cc.fail(status, msg, extra)
	}
}

// upgradeCounted is upgrade for an attempt already counted, started at
// start; the handshake loop resumes here when it hands a connection to Go
// before a backend connection exists (cc.tried holds the backends whose
// connect it saw fail).
func (cc *clientConn) upgradeCounted(req *http1.RequestHead, start time.Time) bool {
	p := cc.p
	res := &handshakeResult{cc: cc, start: start}
	if err := websocket.CheckRequest(req); err != nil {
		var werr *websocket.Error
		if errors.As(err, &werr) {
			res.reject(werr.Status, werr.Reason, werr.Header)
		}
		return false
	}
	if req.HasBody() {
		res.reject(400, "WebSocket handshake with a body", nil)
		return false
	}
	breq := cc.backendRequest(req)
	lease, bconn, status, err := cc.connectBackend(breq)
	if err != nil {
		switch {
		case localResourceError(err):
			p.refusedLocal(err)
			res.reject(503, errLocalResources, retryLater)
		case status == 503:
			res.reject(503, "no backend available", nil)
		default:
			p.log.Warn().Err(err).Msg("websocket handshake failed: no backend reachable")
			res.reject(502, "backend unreachable", nil)
		}
		return false
	}
	be := lease.Backend()
	cc.backend.Store(bconn)

	// The backend gets ResponseTimeout to read the handshake and answer it.
	_ = bconn.SetDeadline(time.Now().Add(p.conf().ResponseTimeout))
	if _, err := bconn.Write(cc.upgradeRequest(req, breq.SourceIP)); err != nil {
		cc.backend.Store(nil)
		p.dp.Release(bconn)
		lease.Release()
		p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed: write request")
		res.reject(502, "backend failed", nil)
		return false
	}
	bbr := p.readers.Get().(*bufio.Reader)
	bbr.Reset(bconn)
	defer func() {
		bbr.Reset(nil)
		p.readers.Put(bbr)
	}()
	var resp *http1.ResponseHead
	for i := 0; ; i++ {
		resp, err = http1.ReadResponseHead(bbr, p.cfg.MaxHeaderBytes)
		if err != nil || resp.Status == 101 || resp.Status >= 200 || i == maxInterim {
			break
		}
	}
	return cc.answered(res, req, breq, lease, bconn, bbr, resp, finalAnswer(resp, err))
}

// answered finishes a handshake once the backend has answered it (resp) or
// failed to (err): it splices the pair on a valid 101, relays any other
// answer, or answers the client with an error. It owns lease and bconn.
// The handshake loop resumes here for every answer but a valid 101.
func (cc *clientConn) answered(res *handshakeResult, req *http1.RequestHead, breq *backend.Request, lease *backend.Lease,
	bconn *dataplane.Conn, bbr *bufio.Reader, resp *http1.ResponseHead, err error) bool {
	p := cc.p
	be := lease.Backend()
	keepBackend := false
	cc.backend.Store(bconn)
	defer func() {
		cc.backend.Store(nil)
		if !keepBackend {
			p.dp.Release(bconn)
			lease.Release()
		}
	}()
	if err != nil {
		p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed: read response")
		if isTimeout(err) {
			res.reject(504, "backend timed out", nil)
		} else {
			res.reject(502, "backend failed", nil)
		}
		return false
	}
	if resp.Status != 101 {
		// The backend refused the upgrade: relay its answer as is.
		_ = bconn.SetDeadline(time.Time{})
		res.failed = true
		p.handshakeErrors.Add(1)
		p.metrics.handshakeDone(resp.Status, res.start)
		return cc.relay(req, resp, be.Addr(), bconn, bbr)
	}
	if err := websocket.CheckResponse(resp, req.Header.Get("Sec-WebSocket-Key")); err != nil {
		p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed")
		res.reject(502, "backend sent an invalid handshake answer", nil)
		return false
	}

	// Whatever the client pipelined behind its request goes to the
	// backend first; the 101 and any frames the backend sent behind it go
	// to the client inside Splice, so that the data plane can take the
	// client's stream over before the client can react to the 101.
	// Nothing read may stay in a buffer.
	if n := cc.br.Buffered(); n > 0 {
		b, _ := cc.br.Peek(n)
		if _, err := bconn.Write(b); err != nil {
			// The backend answered, then went away: as for any
			// backend that fails during its handshake.
			p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed: write pipelined bytes")
			res.reject(502, "backend failed", nil)
			return false
		}
	}
	toClient := switchingHead(resp, cc.stickyField(breq, be))
	if n := bbr.Buffered(); n > 0 {
		b, _ := bbr.Peek(n)
		toClient = append(toClient, b...)
	}
	_ = cc.conn.SetDeadline(time.Time{})
	_ = bconn.SetDeadline(time.Time{})
	_ = cc.conn.SetWriteDeadline(time.Now().Add(p.conf().HeaderTimeout))

	p.forget(cc)
	cc.spliced, keepBackend = true, true
	if err := cc.spliceWithLease(lease, bconn, toClient); err != nil {
		// The data plane owns and has closed both; the client sees a close.
		res.reject(0, "", nil)
		p.spliceFailed(err, be.Addr())
		return false
	}
	p.metrics.handshakeDone(101, res.start)
	if p.log.Debug().Enabled() {
		p.log.Debug().Stringer("remote", cc.conn.RemoteAddr()).Str("backend", be.Addr()).Str("target", req.Target).
			Str("dataplane", p.dp.Name()).Msg("websocket spliced")
	}
	return false
}

// upgradeRequest is the handshake as the backend gets it: origin-form
// target, end-to-end fields in the client's order, Connection and Upgrade
// set again, X-Forwarded-* appended for the client at ip.
func (cc *clientConn) upgradeRequest(req *http1.RequestHead, ip string) []byte {
	return backendUpgradeRequest(req, ip, cc.proto())
}

// backendUpgradeRequest is clientConn.upgradeRequest for a client that used proto.
func backendUpgradeRequest(req *http1.RequestHead, ip, proto string) []byte {
	target, authority := originForm(req.Target)
	host := req.Host
	if authority != "" {
		host = authority
	}
	out := http1.RequestHead{Method: req.Method, Target: target, Major: 1, Minor: 1}
	out.Header = make(http1.Header, 0, len(req.Header)+6)
	d := newDropper(req.Header)
	var fwd forwarded
	var nb [32]byte
	for _, f := range req.Header {
		lname := string(appendLower(nb[:0], f.Name))
		if d.drop(lname) || fwd.take(lname, f.Value) {
			continue
		}
		if lname == "host" {
			f.Value = host
		}
		out.Header = append(out.Header, f)
	}
	out.Header = append(out.Header,
		http1.Field{Name: "Connection", Value: "Upgrade"},
		http1.Field{Name: "Upgrade", Value: "websocket"})
	out.Header = fwd.appendFields(out.Header, ip, host, proto)
	return out.Append(make([]byte, 0, headLen(out.Method, out.Target, out.Header)))
}

// headLen is the wire length of a head with that first line's two words
// and header (the status line's digits count as a word), for sizing.
func headLen(a, b string, h http1.Header) int {
	n := len(a) + 1 + len(b) + 1 + len("HTTP/1.1") + 2 + 2
	for _, f := range h {
		n += len(f.Name) + 2 + len(f.Value) + 2
	}
	return n
}

// switchingHead is the backend's 101 as the client gets it: hop-by-hop
// fields dropped, Connection and Upgrade set again, the rest (subprotocol,
// extensions, the backend's own fields) in the backend's order, then extra
// (the sticky cookie).
func switchingHead(resp *http1.ResponseHead, extra http1.Header) []byte {
	reason := resp.Reason
	if reason == "" {
		reason = "Switching Protocols"
	}
	out := http1.ResponseHead{Major: 1, Minor: 1, Status: 101, Reason: reason}
	out.Header = make(http1.Header, 0, 2+len(resp.Header)+len(extra))
	out.Header = append(out.Header, http1.Field{Name: "Upgrade", Value: "websocket"}, http1.Field{Name: "Connection", Value: "Upgrade"})
	d := newDropper(resp.Header)
	var nb [32]byte
	for _, f := range resp.Header {
		lname := string(appendLower(nb[:0], f.Name))
		if d.drop(lname) || lname == "content-length" {
			continue
		}
		out.Header = append(out.Header, f)
	}
	out.Header = append(out.Header, extra...)
	return out.Append(make([]byte, 0, headLen("101", reason, out.Header)))
}

// relay passes a backend's non-101 answer to a handshake to the client as
// an ordinary response and reports whether the client connection goes on.
func (cc *clientConn) relay(req *http1.RequestHead, resp *http1.ResponseHead, backend string, bconn *dataplane.Conn, bbr *bufio.Reader) bool {
	p := cc.p
	r := &response{status: resp.Status, reason: resp.Reason, length: -1, watchClient: true,
		abort: func(error) { _ = bconn.SetReadDeadline(time.Now()) }}
	d := newDropper(resp.Header)
	var nb [32]byte
	for _, f := range resp.Header {
		lname := string(appendLower(nb[:0], f.Name))
		if d.drop(lname) || lname == "content-length" {
			continue
		}
		r.header = append(r.header, f)
	}
	switch {
	case resp.Bodyless(req.Method):
		r.bodyless = true
		if resp.ContentLength >= 0 && resp.Status != 204 {
			r.length = resp.ContentLength
		}
	case resp.Chunked:
		cr := http1.NewChunkedReader(bbr, p.cfg.MaxHeaderBytes, 502)
		r.body, r.trailer = cr, cr.Trailer
	case resp.ContentLength >= 0:
		r.body, r.length = io.LimitReader(bbr, resp.ContentLength), resp.ContentLength
	default:
		r.body = bbr
	}
	keepAlive := !req.WantsClose() && !p.shuttingDown.Load()
	keep, err := cc.writeResponse(r, keepAlive, req.Minor == 0)
	if err != nil {
		cc.logRelayError(err, backend)
		return false
	}
	return keep
}
