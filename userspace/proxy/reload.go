package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
)

// BackendSetter is what a reload needs of the backend pool: replace the
// backends new connections are picked from, leaving established ones
// alone, or fail and change nothing.
type BackendSetter interface {
	SetBackends(addrs []string) error
}

// Reload puts cfg in force for what can change while running: backends
// (and their PROXY protocol setting), the balancing policy, the sticky
// cookie, health checks, limits, timeouts and TCP keepalive.
// It is atomic: cfg is validated whole first, and on any error nothing
// changes. Fields that need a restart (listeners, certificate files, TLS
// and kernel TLS settings, head size, admin address) keep their running
// values; the names of those that differ are returned, for a log line.
// Established connections are not touched. Reloads are counted in the
// metrics.
func (p *Proxy) Reload(cfg Config) (ignored []string, err error) {
	defer func() {
		if err != nil {
			p.metrics.reloads.WithLabelValues("failure").Inc()
			return
		}
		p.metrics.reloads.WithLabelValues("success").Inc()
		p.metrics.lastReload.Set(float64(time.Now().UnixNano()) / 1e9)
	}()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	old := p.conf()
	restart := []struct {
		name string
		same bool
	}{
		{"listen", sameListeners(old.Listen, cfg.Listen)},
		{"listen-tls", sameListeners(old.TLSListen, cfg.TLSListen)},
		{"listen-tcp", sameListeners(old.TCPListen, cfg.TCPListen)},
		{"listen-tcp-tls", sameListeners(old.TCPTLSListen, cfg.TCPTLSListen)},
		{"tls-cert/tls-key", slices.Equal(old.Certificates, cfg.Certificates)},
		{"ktls", old.KTLS == cfg.KTLS},
		{"max-header-bytes", old.MaxHeaderBytes == cfg.MaxHeaderBytes},
		{"admin", old.Admin == cfg.Admin},
		{"handshake-loop", old.NoHandshakeLoop == cfg.NoHandshakeLoop},
	}
	for _, r := range restart {
		if !r.same {
			ignored = append(ignored, r.name)
		}
	}
	cfg.Listen, cfg.TLSListen, cfg.TCPListen, cfg.TCPTLSListen = old.Listen, old.TLSListen, old.TCPListen, old.TCPTLSListen
	cfg.Certificates, cfg.KTLS, cfg.MaxHeaderBytes, cfg.Admin = old.Certificates, old.KTLS, old.MaxHeaderBytes, old.Admin
	cfg.NoHandshakeLoop = old.NoHandshakeLoop
	cfg.Backends = slices.Clone(cfg.Backends)

	policy, err := backend.ParsePolicy(cfg.Balance) // validated: cannot fail
	if err != nil {
		return nil, fmt.Errorf("balance: %w", err)
	}
	var pool BackendSetter = p.pool
	if err := pool.SetBackends(cfg.Backends); err != nil {
		return nil, fmt.Errorf("backends: %w", err)
	}
	if cfg.Balance != old.Balance {
		p.pool.SetPolicy(policy)
	}
	_ = p.pool.SetHealth(cfg.Health) // validated with cfg
	p.live.Store(&cfg)
	if cfg.TCPKeepAliveOff != old.TCPKeepAliveOff && !p.shuttingDown.Load() {
		if err := p.setListenersKeepAlive(cfg.TCPKeepAliveOff); err != nil {
			// Not seen in practice (a valid option on a listening
			// socket); the connections it accepts keep the old
			// setting, which is all this could cost.
			p.log.Error().Err(err).Msg("reload: TCP keepalive of accepted connections unchanged")
		}
	}
	p.dp.SetIdleTimeout(cfg.IdleTimeout)
	p.limiter.SetConfig(cfg.limits())
	ev := p.log.Info().Strs("backends", cfg.Backends).Str("balance", balanceName(cfg.Balance)).Str("sticky_cookie", cfg.StickyCookie).
		Str("health_check", cfg.Health.Check).Int("max_conns", cfg.MaxConns).Int("max_conn_rate", cfg.MaxConnRate).
		Int("max_conns_per_ip", cfg.MaxConnsPerIP).Int("max_conn_rate_per_ip", cfg.MaxConnRatePerIP).
		Dur("header_timeout", cfg.HeaderTimeout).Dur("connect_timeout", cfg.DialTimeout).Dur("backend_timeout", cfg.ResponseTimeout).Dur("drain_timeout", cfg.DrainTimeout).Dur("idle_timeout", cfg.IdleTimeout).
		Bool("tcp_keepalive", !cfg.TCPKeepAliveOff)
	// The flags ignored until a restart are the caller's to log, with
	// its own (cmd/wsplice: one warning naming them all).
	ev.Msg("configuration reloaded")
	return ignored, nil
}

// Config returns a copy of the configuration in force.
func (p *Proxy) Config() Config {
	c := *p.conf()
	c.Backends = slices.Clone(c.Backends)
	return c
}

// ReloadFailed counts a reload that failed before Reload (a file that
// could not be read or parsed).
func (p *Proxy) ReloadFailed(err error) {
	p.metrics.reloads.WithLabelValues("failure").Inc()
}

// sameListeners tells whether two lists of listen addresses name the same
// listeners: in any order, a port with leading zeros or an IP address in
// another spelling being the same listener. A reload that only reorders
// or respells them changes nothing, so it must not ask for a restart.
func sameListeners(a, b []string) bool {
	canon := func(l []string) []string {
		out := make([]string, len(l))
		for i, addr := range l {
			out[i] = addr
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				continue
			}
			if ip, err := netip.ParseAddr(host); err == nil {
				host = ip.String()
			}
			if n, err := strconv.Atoi(port); err == nil {
				port = strconv.Itoa(n)
			}
			out[i] = net.JoinHostPort(host, port)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(canon(a), canon(b))
}
