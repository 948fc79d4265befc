// Package proxy accepts clients, reads their HTTP/1.1 requests, picks a
// backend and either splices a WebSocket pair through the data plane or
// reverse-proxies plain HTTP.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/certstore"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/ktls"
	"github.com/wsplice/wsplice/userspace/limit"
)

// listenerKind says what a listener does with its connections.
type listenerKind int

const (
	kindHTTP   listenerKind = iota // HTTP and WS (--listen)
	kindHTTPS                      // TLS, then as kindHTTP (--listen-tls)
	kindTCP                        // L4 (--listen-tcp)
	kindTCPTLS                     // TLS, then L4 (--listen-tcp-tls)
)

func (k listenerKind) tls() bool { return k == kindHTTPS || k == kindTCPTLS }

// Proxy is a running set of listeners in front of a backend pool.
type Proxy struct {
	// cfg is the configuration the proxy started with: what a reload
	// cannot change (listeners, certificate files, head size, admin) is
	// read from it; live holds the one in force for the rest.
	cfg   Config
	live  atomic.Pointer[Config]
	dp    dataplane.Dataplane
	log   zerolog.Logger
	pool  *backend.Pool
	lns   []*net.TCPListener
	kinds []listenerKind // of lns, index for index
	admin net.Listener

	certs *certstore.Store
	// tlsHTTP and tlsL4 are the TLS listeners' configurations (ALPN
	// http/1.1 on the HTTPS one only: an L4 stream may be any protocol).
	tlsHTTP, tlsL4 *tls.Config
	// ktlsErr says why sessions stay in Go's crypto/tls (nil: kernel TLS
	// is tried on every TLS 1.3 session).
	ktlsErr error

	dialer    net.Dialer
	transport *http.Transport
	readers   sync.Pool // *bufio.Reader of cfg.MaxHeaderBytes
	writers   sync.Pool // *bufio.Writer

	// force is cancelled when the shutdown grace period is over: requests
	// still running to backends are abandoned.
	force       context.Context
	forceCancel context.CancelFunc

	mu           sync.Mutex
	conns        map[*clientConn]struct{}
	shuttingDown atomic.Bool
	wg           sync.WaitGroup // accept loops and connection goroutines

	// hsl is the handshake loop of the HTTP listeners (nil: goroutines
	// serve them).
	hsl *hsLoop
	// rawLns are the loop's duplicates of the HTTP listeners, by index
	// in lns (nil for the others).
	rawLns []*os.File

	limiter *limit.Limiter
	// rejecting bounds the goroutines answering refused HTTP clients;
	// past it they are closed without an answer.
	rejecting chan struct{}
	// fds is the fd held in reserve for the fd limit (fdlimit.go).
	fds     fdReserve
	metrics *metrics
	// splicedLive counts pairs handed to the data plane and not ended,
	// for the drain at shutdown.
	splicedLive atomic.Int64

	connections     atomic.Int64
	handshakes      atomic.Uint64
	handshakesLoop  atomic.Uint64 // spliced by the handshake loop itself
	handshakeErrors atomic.Uint64

	tlsHandshakes      atomic.Uint64
	tlsHandshakeErrors atomic.Uint64
	tlsPathKTLS        atomic.Uint64
	tlsPathUserspace   atomic.Uint64
}

// tlsCipherSuites are the TLS 1.2 suites offered: ECDHE with an AEAD only.
// (TLS 1.3 suites are all AEAD and not configurable in crypto/tls.)
var tlsCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// New validates cfg and binds its listeners (and the admin listener). It
// takes no ownership of dp: the caller closes it after Serve returns. On
// error nothing stays bound.
func New(cfg Config, dp dataplane.Dataplane, log zerolog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pool, err := newPool(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("backend pool: %w", err)
	}
	p := &Proxy{
		cfg:   cfg,
		dp:    dp,
		log:   log,
		pool:  pool,
		conns: make(map[*clientConn]struct{}),
		// Keepalive is set per socket (keepAlive), from the live config.
		dialer:    net.Dialer{KeepAlive: -1},
		limiter:   limit.New(cfg.limits()),
		rejecting: make(chan struct{}, maxRejecting),
	}
	live := cfg
	p.live.Store(&live)
	dp.SetIdleTimeout(cfg.IdleTimeout)
	p.metrics = newMetrics(p)
	p.SetBackendStates(func() []BackendState {
		st := p.pool.Status()
		out := make([]BackendState, len(st))
		for i, b := range st {
			// Health only: a draining backend that passes its checks
			// is up (a planned drain is no outage).
			out[i] = BackendState{Addr: b.Addr, Up: b.Health.Healthy}
		}
		return out
	})
	p.force, p.forceCancel = context.WithCancel(context.Background())
	p.readers.New = func() any { return bufio.NewReaderSize(nil, cfg.MaxHeaderBytes) }
	p.writers.New = func() any { return bufio.NewWriterSize(nil, 4096) }
	p.transport = &http.Transport{
		DialContext:            p.dialPlain,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ExpectContinueTimeout:  0,
	}
	if len(cfg.Certificates) > 0 {
		if p.certs, err = certstore.New(cfg.Certificates); err != nil {
			return nil, err
		}
		p.tlsL4 = &tls.Config{
			MinVersion:     tls.VersionTLS12,
			CipherSuites:   tlsCipherSuites,
			GetCertificate: p.certs.Certificate,
		}
		p.tlsHTTP = p.tlsL4.Clone()
		p.tlsHTTP.NextProtos = []string{"http/1.1"}
		if cfg.KTLS == KTLSOff {
			p.ktlsErr = errors.New("disabled (--ktls off)")
		} else {
			p.ktlsErr = ktls.Available()
		}
	}
	for i, addrs := range [][]string{cfg.Listen, cfg.TLSListen, cfg.TCPListen, cfg.TCPTLSListen} {
		for _, addr := range addrs {
			// No Go default keepalive on accepted sockets: they
			// inherit the configured one from the listener
			// (setListenersKeepAlive).
			ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
			if err != nil {
				p.closeListeners()
				return nil, fmt.Errorf("listen on %s: %w", addr, err)
			}
			p.lns = append(p.lns, ln.(*net.TCPListener))
			p.kinds = append(p.kinds, listenerKind(i))
		}
	}
	if err := p.setListenersKeepAlive(cfg.TCPKeepAliveOff); err != nil {
		p.undoNew()
		return nil, err
	}
	if raw, ok := dp.(dataplane.Raw); ok && !cfg.NoHandshakeLoop && len(cfg.Listen) > 0 {
		if p.hsl, err = newHSLoop(p, raw); err != nil {
			p.undoNew()
			return nil, err
		}
		// Go sets TCP_NODELAY on each connection it accepts; the loop's
		// sockets inherit it from their listener instead.
		p.rawLns = make([]*os.File, len(p.lns))
		for i, ln := range p.lns {
			if p.kinds[i] != kindHTTP {
				continue
			}
			if p.rawLns[i], err = p.rawListener(ln); err != nil {
				p.undoNew()
				return nil, fmt.Errorf("listener %s for the handshake loop: %w", ln.Addr(), err)
			}
			raw, err := ln.SyscallConn()
			if err == nil {
				var serr error
				err = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) })
				err = errors.Join(err, serr)
			}
			if err != nil {
				p.undoNew()
				return nil, fmt.Errorf("TCP_NODELAY on listener %s: %w", ln.Addr(), err)
			}
		}
	}
	if cfg.Admin != "" {
		if p.admin, err = listenAdmin(cfg.Admin); err != nil {
			if !cfg.AdminOptional {
				p.undoNew()
				return nil, fmt.Errorf("admin listen on %s: %w", cfg.Admin, err)
			}
			log.Warn().Err(err).Str("admin", cfg.Admin).Msg("admin server not started (the default address is taken; give --admin to choose another)")
		}
	}
	return p, nil
}

// listenAdmin listens on a TCP address, or on a unix socket for
// "unix:PATH" or an absolute path. A stale socket file is replaced; the
// socket is made accessible to its owner only.
func listenAdmin(addr string) (net.Listener, error) {
	path, ok := AdminSocketPath(addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("unix socket %s: in use", path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// AdminSocketPath reports whether an --admin value names a unix socket,
// and its path.
func AdminSocketPath(addr string) (string, bool) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return p, true
	}
	if strings.HasPrefix(addr, "/") {
		return addr, true
	}
	return "", false
}

// undoNew releases what New opened (listeners, the handshake loop's
// epoll fd), for New's error paths and a Serve that refuses to start:
// a failed start leaves no fd behind.
func (p *Proxy) undoNew() {
	p.closeListeners()
	if p.hsl != nil {
		p.hsl.close()
	}
}

func (p *Proxy) closeListeners() {
	for _, ln := range p.lns {
		_ = ln.Close()
	}
	for _, f := range p.rawLns {
		if f != nil {
			_ = f.Close()
		}
	}
	if p.admin != nil {
		_ = p.admin.Close()
	}
}

// Addrs returns the bound client listener addresses, in Config.Listen order.
func (p *Proxy) Addrs() []net.Addr { return p.addrsOf(kindHTTP) }

// TLSAddrs returns the bound addresses of Config.TLSListen, in order.
func (p *Proxy) TLSAddrs() []net.Addr { return p.addrsOf(kindHTTPS) }

// TCPAddrs returns the bound addresses of Config.TCPListen, in order.
func (p *Proxy) TCPAddrs() []net.Addr { return p.addrsOf(kindTCP) }

// TCPTLSAddrs returns the bound addresses of Config.TCPTLSListen, in order.
func (p *Proxy) TCPTLSAddrs() []net.Addr { return p.addrsOf(kindTCPTLS) }

func (p *Proxy) addrsOf(k listenerKind) []net.Addr {
	var addrs []net.Addr
	for i, ln := range p.lns {
		if p.kinds[i] == k {
			addrs = append(addrs, ln.Addr())
		}
	}
	return addrs
}

// logWriter turns the lines of a standard library logger into warnings.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(b []byte) (int, error) {
	w.log.Warn().Msg(strings.TrimSpace(string(b)))
	return len(b), nil
}

// HasCertificates tells whether the proxy serves TLS (has certificates to
// reload on SIGHUP).
func (p *Proxy) HasCertificates() bool { return p.certs != nil }

// ReloadCertificates reads the certificate files again (on SIGHUP). On
// error the certificates in use stay. Connections are not touched.
func (p *Proxy) ReloadCertificates() error {
	if p.certs == nil {
		return nil
	}
	return p.certs.Reload()
}

// TLSPath says what carries TLS records after the handshake: "ktls"
// (kernel TLS, then spliced by the data plane's relay) for TLS 1.3
// sessions with a cipher the kernel has, else "userspace" (crypto/tls);
// the second value is why not kTLS ("" when it is tried).
func (p *Proxy) TLSPath() (string, string) {
	if p.ktlsErr != nil {
		return "userspace", p.ktlsErr.Error()
	}
	return "ktls", ""
}

// AdminAddr returns the admin listener's address, or nil.
func (p *Proxy) AdminAddr() net.Addr {
	if p.admin == nil {
		return nil
	}
	return p.admin.Addr()
}

// Run builds a proxy with New and serves until ctx is done.
func Run(ctx context.Context, cfg Config, dp dataplane.Dataplane, log zerolog.Logger) error {
	p, err := New(cfg, dp, log)
	if err != nil {
		return err
	}
	return p.Serve(ctx)
}

// Serve accepts clients until ctx is done, then shuts down: it closes the
// listeners and idle connections, lets handshakes and requests in flight
// and, with a Config.DrainTimeout, spliced pairs run until they end or the
// drain timeout (else Config.ShutdownTimeout) passes, closes the client
// connections left and returns once every goroutine it started has ended.
// Spliced pairs still open belong to the data plane, which the caller
// closes. The admin server answers until the drain is over. Serve must be
// called once.
func (p *Proxy) Serve(ctx context.Context) error {
	p.fds.fill()
	if !p.fds.held() {
		// Not one fd free once the listeners are open: every client
		// would wait unanswered in the listen queue.
		var lim unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		p.undoNew()
		p.fds.close()
		return fmt.Errorf("the fd limit (%d) leaves no fd free once the listeners are open: raise it (ulimit -n)", lim.Cur)
	}
	var listeners, tlsListeners, tcpListeners, tcpTLSListeners []string
	for i, ln := range p.lns {
		a := ln.Addr().String()
		switch p.kinds[i] {
		case kindHTTP:
			listeners = append(listeners, a)
		case kindHTTPS:
			tlsListeners = append(tlsListeners, a)
		case kindTCP:
			tcpListeners = append(tcpListeners, a)
		case kindTCPTLS:
			tcpTLSListeners = append(tcpTLSListeners, a)
		}
	}
	var adminSrv *http.Server
	adminDone := make(chan struct{})
	if p.admin != nil {
		// Not in p.wg: the admin server answers (metrics) during the drain.
		adminSrv = &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: p.cfg.HeaderTimeout,
			// net/http's own complaints (accept errors at the fd limit,
			// bad TLS clients) go to the structured log, not to stderr
			// as plain text among the JSON lines.
			ErrorLog: stdlog.New(logWriter{p.log.With().Str("component", "admin").Logger()}, "", 0)}
		go func() {
			defer close(adminDone)
			if err := adminSrv.Serve(p.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.log.Error().Err(err).Msg("admin server failed")
			}
		}()
	} else {
		close(adminDone)
	}
	p.pool.Start()
	go p.trimAfterBursts(ctx)
	go p.keepReserve(ctx)
	if p.hsl != nil {
		go p.hsl.run()
	}
	for i, ln := range p.lns {
		p.wg.Add(1)
		if p.hsl != nil && p.rawLns[i] != nil {
			go p.rawAcceptLoop(p.rawLns[i], ln.Addr().String(), p.hsl)
			continue
		}
		go p.acceptLoop(ln, p.kinds[i])
	}
	ev := p.log.Info().Strs("listeners", listeners).Strs("backends", p.conf().Backends).Str("balance", balanceName(p.cfg.Balance)).Str("dataplane", p.dp.Name())
	if len(tlsListeners) > 0 {
		ev = ev.Strs("tls_listeners", tlsListeners)
	}
	if len(tcpListeners) > 0 {
		ev = ev.Strs("tcp_listeners", tcpListeners)
	}
	if len(tcpTLSListeners) > 0 {
		ev = ev.Strs("tcp_tls_listeners", tcpTLSListeners)
	}
	if p.certs != nil {
		path, why := p.TLSPath()
		ev = ev.Str("tls_path", path)
		if why != "" {
			ev = ev.Str("ktls_unavailable", why)
		} else if ciphers, err := ktls.Probe(); err == nil {
			var ok []string
			for name, yes := range ciphers {
				if yes {
					ok = append(ok, name)
				}
			}
			sort.Strings(ok)
			ev = ev.Strs("ktls_ciphers", ok)
		}
	}
	if p.admin != nil {
		ev = ev.Str("admin", p.admin.Addr().String())
	}
	ev.Msg("wsplice started")

	<-ctx.Done()
	p.shutdown()
	// The admin server closes its own listener: closing it here first
	// would make Serve report the accept error.
	if adminSrv != nil {
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = adminSrv.Shutdown(actx)
		cancel()
	}
	<-adminDone
	return nil
}

// shutdown runs the steps Serve describes: listeners closed, idle
// keep-alive connections closed, then the drain: connections in flight
// and (with a DrainTimeout) spliced pairs run on until they end or the
// drain timeout passes. Spliced pairs still open then are the data
// plane's to close (the caller closes it after Serve).
func (p *Proxy) shutdown() {
	p.shuttingDown.Store(true)
	for _, ln := range p.lns {
		_ = ln.Close()
	}
	p.fds.close()
	for _, f := range p.rawLns {
		if f != nil {
			_ = f.Close()
		}
	}
	p.closeConns(true)
	if p.hsl != nil {
		p.hsl.abortIdle()
	}
	cfg := p.conf()
	grace, drainSpliced := cfg.ShutdownTimeout, cfg.DrainTimeout > 0
	if drainSpliced {
		grace = cfg.DrainTimeout
	}
	p.log.Info().Int64("connections", p.connections.Load()).Int64("spliced", p.splicedLive.Load()).
		Dur("drain_timeout", grace).Bool("drain_spliced", drainSpliced).Msg("shutting down: listeners closed, draining")
	if !drainSpliced {
		// No drain: established connections end now, not when the
		// requests in flight have had their time.
		p.dp.ClosePairs()
	}
	done, stop := make(chan struct{}), make(chan struct{})
	defer close(stop)
	go func() {
		p.wg.Wait()
		for drainSpliced && p.splicedLive.Load() > 0 {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		close(done)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		p.log.Warn().Int64("connections", p.connections.Load()).Int64("spliced", p.splicedLive.Load()).
			Msg("drain timeout over, closing the connections left")
		p.forceCancel()
		p.closeConns(false)
		if p.hsl != nil {
			p.hsl.abortAll()
		}
		wgDone := make(chan struct{})
		go func() {
			p.wg.Wait()
			close(wgDone)
		}()
		select {
		case <-wgDone:
		case <-time.After(max(cfg.ShutdownTimeout, time.Second)):
			// Every blocking call has a deadline or a closed socket
			// under it; reaching this is a bug worth a loud line.
			p.log.Error().Msg("connection goroutines still running after forced shutdown")
		}
	}
	p.forceCancel()
	if p.hsl != nil {
		p.hsl.close()
	}
	p.transport.CloseIdleConnections()
	p.pool.Close()
}

// closeConns closes the client connections waiting for a request (idle) or
// all of them. Their goroutines see the error and release them.
func (p *Proxy) closeConns(idleOnly bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cc := range p.conns {
		if !idleOnly || cc.idle.Load() {
			_ = cc.conn.Close()
		}
		if b := cc.backend.Load(); b != nil && !idleOnly {
			_ = b.Close()
		}
	}
}

func (p *Proxy) acceptLoop(ln *net.TCPListener, kind listenerKind) {
	defer p.wg.Done()
	listener := ln.Addr().String()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if p.shuttingDown.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if !fdExhausted(err) {
				backoff = p.acceptBackoff(backoff, err)
				continue
			}
			var ok bool
			if c, ok = p.fdLimitAccept(ln, kind, listener); !ok || c == nil {
				continue // turned away (or closed: AcceptTCP says so next)
			}
		}
		backoff = 0
		ticket, reason := p.limiter.Admit(addrIP(c.RemoteAddr()))
		if reason != limit.OK {
			p.refuse(c, kind, listener, reason)
			continue
		}
		// The rest of the set-up (adoption by the data plane and
		// tracking: several syscalls on the kernel path) runs in the
		// connection's own goroutine. Done here, one connection after
		// another, it kept the next ones waiting in the accept queue: at
		// a few thousand handshakes a second nine accepts in ten found a
		// connection already queued. The accept loop holds a p.wg count,
		// so this Add cannot race shutdown's Wait.
		p.wg.Add(1)
		go p.serveConn(c, kind, listener, ticket)
	}
}

// acceptBackoff waits after a failed accept (EMFILE and friends), as
// net/http does, and returns the next wait.
func (p *Proxy) acceptBackoff(backoff time.Duration, err error) time.Duration {
	backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
	p.log.Error().Err(err).Dur("retry_in", backoff).Msg("accept failed")
	time.Sleep(backoff)
	return backoff
}

// serveConn sets up an accepted, admitted connection and serves it.
func (p *Proxy) serveConn(c *net.TCPConn, kind listenerKind, listener string, ticket *limit.Ticket) {
	var conn *dataplane.Conn
	if kind.tls() {
		// Not adopted: the socket will carry TLS records, which
		// only a TLS layer may read (crypto/tls, or kernel TLS
		// with its keys). Kernel TLS cannot be set on a socket a
		// verdict program reads: see ../ktls and the README.
		conn = dataplane.NewConn(c)
	} else {
		var err error
		if conn, err = p.dp.Adopt(c); err != nil {
			// Adopt before the first read: the kernel path needs it.
			_ = c.Close()
			ticket.Release()
			p.wg.Done()
			p.log.Error().Err(err).Msg("adopt client connection")
			return
		}
	}
	cc := &clientConn{p: p, conn: conn, kind: kind, track: p.track(listener, ticket)}
	cc.track.cc = cc
	cc.idle.Store(true)
	p.mu.Lock()
	if p.shuttingDown.Load() {
		p.mu.Unlock()
		p.dp.Release(conn)
		cc.track.release()
		p.wg.Done()
		return
	}
	p.conns[cc] = struct{}{}
	p.mu.Unlock()
	p.connections.Add(1)
	cc.serve()
}

// forget removes a client connection from the set shutdown walks.
func (p *Proxy) forget(cc *clientConn) {
	p.mu.Lock()
	delete(p.conns, cc)
	p.mu.Unlock()
	p.connections.Add(-1)
}

// Stats is what the admin endpoint reports: the data plane's counters and
// the proxy's own.
type Stats struct {
	dataplane.Stats
	Goroutines int `json:"goroutines"`
	// OpenFDs counts /proc/self/fd entries (-1 if unreadable).
	OpenFDs int `json:"open_fds"`
	// Connections counts client connections open in the proxy and not
	// yet spliced.
	Connections int64 `json:"connections"`
	// HandshakesTotal counts request heads read for a WebSocket
	// handshake, plus request heads that failed to parse: every attempt,
	// successful or not.
	HandshakesTotal uint64 `json:"handshakes_total"`
	// HandshakeErrorsTotal counts those attempts that did not end spliced.
	HandshakeErrorsTotal uint64 `json:"handshake_errors_total"`
	// HandshakesLoopTotal counts the handshakes the handshake loop took
	// from accept to splice itself (the rest of HandshakesTotal went
	// through goroutines: see Config.NoHandshakeLoop).
	HandshakesLoopTotal uint64 `json:"handshakes_loop_total"`
	// TLSHandshakesTotal counts TLS handshakes started on TLS listeners;
	// TLSHandshakeErrorsTotal those that failed (timeout, bad input).
	TLSHandshakesTotal      uint64 `json:"tls_handshakes_total"`
	TLSHandshakeErrorsTotal uint64 `json:"tls_handshake_errors_total"`
	// TLSPath counts completed TLS handshakes by what carried their
	// records afterwards: "ktls" (kernel TLS) or "userspace" (crypto/tls).
	TLSPath map[string]uint64 `json:"tls_path"`
}

// Stats returns the current counters.
func (p *Proxy) Stats() Stats {
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	return Stats{
		Stats:                p.dp.Stats(),
		Goroutines:           runtime.NumGoroutine(),
		OpenFDs:              fds,
		Connections:          p.connections.Load(),
		HandshakesTotal:      p.handshakes.Load(),
		HandshakeErrorsTotal: p.handshakeErrors.Load(),
		HandshakesLoopTotal:  p.handshakesLoop.Load(),

		TLSHandshakesTotal:      p.tlsHandshakes.Load(),
		TLSHandshakeErrorsTotal: p.tlsHandshakeErrors.Load(),
		TLSPath:                 map[string]uint64{"ktls": p.tlsPathKTLS.Load(), "userspace": p.tlsPathUserspace.Load()},
	}
}

func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", p.metrics.handler())
	p.backendRoutes(mux)
	// Go's profiles (heap, goroutines, CPU), for finding where memory or
	// time goes in a running daemon; the admin server is loopback or a
	// unix socket by default.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(p.Stats())
	})
	if in, ok := p.dp.(interface{ DebugPairs() any }); ok {
		// Per-pair state of the data plane, for diagnosing a stalled
		// connection; it walks every pair, so it is not for scraping.
		mux.HandleFunc("GET /debug/pairs", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(in.DebugPairs())
		})
	}
	return mux
}
