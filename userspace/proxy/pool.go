package proxy

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"net"
	"net/http"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
)

// newPool builds the backend pool of a validated cfg.
func newPool(cfg Config, log zerolog.Logger) (*backend.Pool, error) {
	specs := make([]backend.Spec, 0, len(cfg.Backends))
	for _, b := range cfg.Backends {
		sp, err := backend.ParseSpec(b)
		if err != nil {
			return nil, err
		}
		specs = append(specs, sp)
	}
	policy, err := backend.ParsePolicy(cfg.Balance)
	if err != nil {
		return nil, err
	}
	return backend.NewPool(specs, backend.Options{
		Policy: policy,
		Health: cfg.Health,
		Log:    log.With().Str("component", "backends").Logger(),
	})
}

func balanceName(s string) string {
	if s == "" {
		return backend.BalanceRoundRobin
	}
	return s
}

// Pool is the proxy's backend pool, for runtime changes.
func (p *Proxy) Pool() *backend.Pool { return p.pool }

// connectError marks a failure to connect to a backend (as opposed to one
// after connecting): the request may go to another backend, and it counts
// toward the backend's fall count.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dialPlain is the plain-HTTP transport's dialer: its failures are
// connectErrors.
// It goes through dial, so keepalive and the dial timeout apply.
func (p *Proxy) dialPlain(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := p.dial(ctx, addr)
	if err != nil {
		return nil, &connectError{err}
	}
	return c, nil
}

// reportConnect feeds a connect result to passive health marking, unless
// the failure is ours (shutdown cancelled the dial).
func (p *Proxy) reportConnect(b *backend.Backend, err error) {
	if err != nil && (p.force.Err() != nil || localResourceError(err)) {
		return
	}
	p.pool.ReportConnect(b, err)
}

// localResourceError tells whether a connect failed for want of a
// resource of this host (file descriptors, memory, local ports): not the
// backend's fault, so it counts against no backend's health, and the
// client gets 503 (try again) rather than 502.
func localResourceError(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// errLocalResources is the 503 body for a connect that failed for want
// of a local resource.
const errLocalResources = "proxy out of local resources (file descriptors, memory or ports)"

// connectBackend picks a backend for cc and connects to it; when a connect
// fails it tries another backend, each at most once. It returns the lease
// on the backend it connected to, the adopted connection and, on failure,
// the status to answer: 503 when no backend was available at all, 502
// when every connect failed.
func (cc *clientConn) connectBackend(req *backend.Request) (*backend.Lease, *dataplane.Conn, int, error) {
	p := cc.p
	// The handshake loop may have seen connects fail already.
	tried, lastErr := cc.tried, cc.triedErr
	for {
		l, err := cc.lease, error(nil)
		cc.lease = nil
		if l == nil {
			l, err = p.pool.Acquire(req, tried)
		}
		if err != nil {
			if lastErr != nil {
				if localResourceError(lastErr) {
					return nil, nil, 503, lastErr
				}
				return nil, nil, 502, lastErr
			}
			return nil, nil, 503, err
		}
		b := l.Backend()
		// Until spliced, the client connection (and the handshake's
		// backend connection) is what a drain deadline closes; then
		// the pair (tracked.close).
		l.SetCloser(cc.track.close)
		c, err := p.dialBackend(cc, b.Addr())
		if err == nil {
			p.reportConnect(b, nil)
			return l, c, 0, nil
		}
		l.Release()
		var cerr *connectError
		if !errors.As(err, &cerr) {
			return nil, nil, 502, err // not the backend's fault: no retry
		}
		p.reportConnect(b, err)
		if !localResourceError(err) { // refusedLocal warns for those
			p.log.Warn().Err(err).Str("backend", b.Addr()).Int("attempt", len(tried)+1).Msg("backend connect failed")
		}
		if p.force.Err() != nil {
			return nil, nil, 502, err
		}
		tried = append(tried, b)
		lastErr = err
	}
}

// abort closes the client and handshake backend connections of cc (not
// spliced).
func (cc *clientConn) abort() {
	_ = cc.conn.Close()
	if b := cc.backend.Load(); b != nil {
		_ = b.Close()
	}
}

// spliceWithLease hands the pair to the data plane with the lease kept
// until the data plane reports the pair closed (or Splice fails).
func (cc *clientConn) spliceWithLease(l *backend.Lease, bconn *dataplane.Conn, toClient []byte) error {
	cc.track.splicing(l)
	cc.conn.Owner = cc.track
	if err := cc.p.dp.Splice(cc.conn, bconn, toClient); err != nil {
		cc.track.PairEnded(dataplane.PairCounts{}) // releases l
		return err
	}
	return nil
}

// spliceFailed logs a splice that could not be set up. A peer that reset
// or closed its connection meanwhile (the 101 or the first write found it
// gone) is a client's or backend's doing that anyone can repeat at will,
// so it is logged at debug, as a reset after the splice is; anything
// else is wsplice's own failure and logged as an error.
func (p *Proxy) spliceFailed(err error, backend string) {
	ev := p.log.Error()
	if peerAborted(err) {
		ev = p.log.Debug()
	}
	ev.Err(err).Str("backend", backend).Msg("splice")
}

// peerAborted tells whether err is a socket's peer going away: a reset,
// a write after the peer closed, or a socket no longer connected.
func peerAborted(err error) bool {
	return isReset(err) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ENOTCONN)
}

// backendRequest is what the policy and the sticky cookie look at.
func (cc *clientConn) backendRequest(req *http1.RequestHead) *backend.Request {
	return cc.p.backendRequest(remoteIP(cc.conn.RemoteAddr()), req)
}

// backendRequest is clientConn.backendRequest for a client at ip.
func (p *Proxy) backendRequest(ip string, req *http1.RequestHead) *backend.Request {
	r := &backend.Request{SourceIP: ip}
	if req == nil {
		return r
	}
	r.Header = req.Header.Get
	var cookies []*http.Cookie
	parsed := false
	r.Cookie = func(name string) string {
		if !parsed {
			cookies, parsed = readCookies(req.Header), true
		}
		for _, c := range cookies {
			if c.Name == name {
				return c.Value
			}
		}
		return ""
	}
	if name := p.conf().StickyCookie; name != "" {
		r.Sticky = r.Cookie(name)
	}
	return r
}

// readCookies parses every Cookie field of h, leniently (as net/http does
// for a server).
func readCookies(h http1.Header) []*http.Cookie {
	vals := h.Values("Cookie")
	if len(vals) == 0 {
		return nil
	}
	return (&http.Request{Header: http.Header{"Cookie": vals}}).Cookies()
}

// stickyField is the Set-Cookie field pinning the client to b, or nil when
// stickiness is off or the client's cookie already names b.
func (cc *clientConn) stickyField(req *backend.Request, b *backend.Backend) http1.Header {
	return cc.p.stickyField(req, b)
}

// stickyField is clientConn.stickyField.
func (p *Proxy) stickyField(req *backend.Request, b *backend.Backend) http1.Header {
	name := p.conf().StickyCookie
	if name == "" || req.Sticky == b.ID() {
		return nil
	}
	c := &http.Cookie{Name: name, Value: b.ID(), Path: "/", HttpOnly: true}
	return http1.Header{{Name: "Set-Cookie", Value: c.String()}}
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
