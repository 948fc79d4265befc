package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"time"

	"github.com/wsplice/wsplice/userspace/ktls"
)

// proto is the scheme the client used, for X-Forwarded-Proto.
func (cc *clientConn) proto() string {
	if cc.kind.tls() {
		return "https"
	}
	return "http"
}

// startTLS runs the TLS handshake of a TLS listener's connection within
// TLSHandshakeTimeout, then moves the session into the kernel when it can
// (kernel TLS: the socket then reads and writes plaintext) or leaves it in
// crypto/tls (cc.conn.TLS). It reports whether the connection goes on.
func (cc *clientConn) startTLS() bool {
	p := cc.p
	p.tlsHandshakes.Add(1)
	deadline := time.Now().Add(p.conf().TLSHandshakeTimeout)
	_ = cc.conn.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(p.force, deadline)
	defer cancel()
	cfg := p.tlsHTTP
	if cc.kind == kindTCPTLS {
		cfg = p.tlsL4
	}
	var sess *ktls.Session
	var tc *tls.Conn
	var err error
	if p.ktlsErr == nil {
		sess = ktls.Server(cc.conn.TCPConn, cfg)
		tc = sess.TLS
		err = sess.Handshake(ctx)
	} else {
		tc = tls.Server(cc.conn.TCPConn, cfg)
		err = tc.HandshakeContext(ctx)
	}
	if err != nil {
		p.tlsHandshakeErrors.Add(1)
		cc.tlsFailed(err)
		return false
	}
	_ = cc.conn.SetDeadline(time.Time{})
	path, why := "userspace", ""
	if sess != nil {
		suite, err := sess.Enable()
		switch {
		case err == nil:
			path, why = "ktls", suite
			cc.conn.KTLS = true
		case errors.Is(err, ktls.ErrUnsupported):
			sess.Passthrough()
			why = err.Error()
		default:
			p.tlsHandshakeErrors.Add(1)
			p.log.Error().Err(err).Stringer("remote", cc.conn.RemoteAddr()).Msg("kernel TLS set-up failed, closing the connection")
			return false
		}
	} else {
		why = p.ktlsErr.Error()
	}
	if path == "ktls" {
		p.tlsPathKTLS.Add(1)
	} else {
		p.tlsPathUserspace.Add(1)
		cc.conn.TLS = tc
	}
	if p.log.Debug().Enabled() {
		st := tc.ConnectionState()
		p.log.Debug().Stringer("remote", cc.conn.RemoteAddr()).Str("tls_version", tls.VersionName(st.Version)).
			Str("cipher", tls.CipherSuiteName(st.CipherSuite)).Str("sni", st.ServerName).Str("alpn", st.NegotiatedProtocol).
			Str("tls_path", path).Str("why", why).Msg("TLS handshake done")
	}
	return true
}

// httpMethodPrefixes start a plaintext HTTP request sent to a TLS port.
var httpMethodPrefixes = [][]byte{[]byte("GET /"), []byte("HEAD "), []byte("POST "), []byte("PUT /"), []byte("OPTIO"), []byte("DELET"), []byte("PATCH"), []byte("CONNE")}

// tlsFailed ends a connection whose handshake failed. A plaintext HTTP
// request gets a plaintext 400 that says what happened (as net/http does);
// anything else (a truncated ClientHello, a stall, garbage) is closed,
// after whatever alert crypto/tls sent.
func (cc *clientConn) tlsFailed(err error) {
	p := cc.p
	if p.log.Debug().Enabled() {
		p.log.Debug().Err(err).Stringer("remote", cc.conn.RemoteAddr()).Msg("TLS handshake failed")
	}
	var rhe tls.RecordHeaderError
	if !errors.As(err, &rhe) || rhe.Conn == nil {
		return
	}
	for _, m := range httpMethodPrefixes {
		if bytes.Equal(rhe.RecordHeader[:], m) {
			_ = cc.conn.SetWriteDeadline(time.Now().Add(lingerTimeout))
			if _, err := cc.conn.TCPConn.Write([]byte("HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")); err == nil {
				cc.lingerClose()
			}
			return
		}
	}
}

// serveL4 splices the connection to the next backend at once, parsing
// nothing: the data plane writes nothing to the client first.
func (cc *clientConn) serveL4() {
	p := cc.p
	cc.idle.Store(false)
	lease, bconn, status, err := cc.connectBackend(cc.backendRequest(nil))
	if err != nil {
		if status == 503 {
			if p.log.Debug().Enabled() {
				p.log.Debug().Err(err).Stringer("remote", cc.conn.RemoteAddr()).Msg("L4 connection closed: no backend")
			}
		} else {
			p.log.Warn().Err(err).Msg("L4 connection failed: no backend reachable")
		}
		return
	}
	be := lease.Backend()
	// The PROXY protocol hook: the header goes to the backend before
	// Splice, so before any byte of the client's.
	if be.ProxyProtocol() == 2 {
		if err := p.writeProxyHeader(cc, bconn); err != nil {
			p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("L4 connection failed")
			p.dp.Release(bconn)
			lease.Release()
			return
		}
	}
	p.forget(cc)
	cc.spliced = true
	if err := cc.spliceWithLease(lease, bconn, nil); err != nil {
		p.spliceFailed(err, be.Addr())
		return
	}
	if p.log.Debug().Enabled() {
		p.log.Debug().Stringer("remote", cc.conn.RemoteAddr()).Str("backend", be.Addr()).Str("dataplane", p.dp.Name()).
			Bool("tls", cc.kind.tls()).Bool("ktls", cc.conn.KTLS).Msg("L4 spliced")
	}
}
