// Package proxy accepts clients, reads their HTTP/1.1 requests, picks a
// backend and either splices a WebSocket pair through the data plane or
// reverse-proxies plain HTTP.
package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
)

// Proxy is a running set of listeners in front of a backend pool.
type Proxy struct {
	cfg   Config
	dp    dataplane.Dataplane
	log   zerolog.Logger
	pool  *backend.Pool
	lns   []*net.TCPListener
	admin net.Listener

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

	connections     atomic.Int64
	handshakes      atomic.Uint64
	handshakeErrors atomic.Uint64
}

// New validates cfg and binds its listeners (and the admin listener). It
// takes no ownership of dp: the caller closes it after Serve returns. On
// error nothing stays bound.
func New(cfg Config, dp dataplane.Dataplane, log zerolog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pool, err := backend.NewPool(cfg.Backends, nil)
	if err != nil {
		return nil, fmt.Errorf("backend pool: %w", err)
	}
	p := &Proxy{
		cfg:    cfg,
		dp:     dp,
		log:    log,
		pool:   pool,
		conns:  make(map[*clientConn]struct{}),
		dialer: net.Dialer{Timeout: cfg.DialTimeout},
	}
	p.force, p.forceCancel = context.WithCancel(context.Background())
	p.readers.New = func() any { return bufio.NewReaderSize(nil, cfg.MaxHeaderBytes) }
	p.writers.New = func() any { return bufio.NewWriterSize(nil, 4096) }
	p.transport = &http.Transport{
		DialContext:            p.dialer.DialContext,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ExpectContinueTimeout:  0,
	}
	for _, addr := range cfg.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			p.closeListeners()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		p.lns = append(p.lns, ln.(*net.TCPListener))
	}
	if cfg.Admin != "" {
		if p.admin, err = net.Listen("tcp", cfg.Admin); err != nil {
			p.closeListeners()
			return nil, fmt.Errorf("admin listen on %s: %w", cfg.Admin, err)
		}
	}
	return p, nil
}

func (p *Proxy) closeListeners() {
	for _, ln := range p.lns {
		_ = ln.Close()
	}
	if p.admin != nil {
		_ = p.admin.Close()
	}
}

// Addrs returns the bound client listener addresses, in Config.Listen order.
func (p *Proxy) Addrs() []net.Addr {
	addrs := make([]net.Addr, len(p.lns))
	for i, ln := range p.lns {
		addrs[i] = ln.Addr()
	}
	return addrs
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
// run for Config.ShutdownTimeout, closes what is left and returns once
// every goroutine it started has ended. Spliced pairs belong to the data
// plane and are untouched. Serve must be called once.
func (p *Proxy) Serve(ctx context.Context) error {
	listeners := make([]string, len(p.lns))
	for i, ln := range p.lns {
		listeners[i] = ln.Addr().String()
	}
	var adminSrv *http.Server
	if p.admin != nil {
		adminSrv = &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: p.cfg.HeaderTimeout}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := adminSrv.Serve(p.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.log.Error().Err(err).Msg("admin server failed")
			}
		}()
	}
	for _, ln := range p.lns {
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
	ev := p.log.Info().Strs("listeners", listeners).Strs("backends", p.cfg.Backends).Str("dataplane", p.dp.Name())
	if p.admin != nil {
		ev = ev.Str("admin", p.admin.Addr().String())
	}
	ev.Msg("wsplice started")

	<-ctx.Done()
	p.shutdown(adminSrv)
	return nil
}

// shutdown runs the steps Serve describes.
func (p *Proxy) shutdown(adminSrv *http.Server) {
	p.shuttingDown.Store(true)
	for _, ln := range p.lns {
		_ = ln.Close()
	}
	// The admin server closes its own listener: closing it here first
	// would make Serve report the accept error.
	if adminSrv != nil {
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = adminSrv.Shutdown(actx)
		cancel()
	}
	p.closeConns(true)
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(p.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		p.log.Warn().Int64("connections", p.connections.Load()).Msg("shutdown grace period over, closing connections in flight")
		p.forceCancel()
		p.closeConns(false)
		select {
		case <-done:
		case <-time.After(p.cfg.ShutdownTimeout):
			// Every blocking call has a deadline or a closed socket
			// under it; reaching this is a bug worth a loud line.
			p.log.Error().Msg("connection goroutines still running after forced shutdown")
		}
	}
	p.forceCancel()
	p.transport.CloseIdleConnections()
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

func (p *Proxy) acceptLoop(ln *net.TCPListener) {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if p.shuttingDown.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: wait and retry, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Error().Err(err).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		// Adopt before the first read: the kernel path needs it.
		conn, err := p.dp.Adopt(c)
		if err != nil {
			_ = c.Close()
			p.log.Error().Err(err).Msg("adopt client connection")
			continue
		}
		cc := &clientConn{p: p, conn: conn}
		cc.idle.Store(true)
		p.mu.Lock()
		if p.shuttingDown.Load() {
			p.mu.Unlock()
			p.dp.Release(conn)
			return
		}
		p.conns[cc] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		p.connections.Add(1)
		go cc.serve()
	}
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
	}
}

func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(p.Stats())
	})
	return mux
}
