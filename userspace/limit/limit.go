// Package limit admits or refuses new client connections: a cap on live
// connections and a token-bucket rate, across the daemon and per source IP.
//
// Memory stays bounded whatever the clients do: a source's entry lives while
// it has connections (so at most one per live connection), and entries kept
// only for their rate bucket sit in an LRU of bounded size; when it is full
// the least recently seen source forgets its bucket (it then starts full).
package limit

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// Reason says why a connection was refused; it is a metrics label.
type Reason string

// Reasons a connection is refused.
const (
	OK            Reason = ""
	MaxConns      Reason = "max_conns"
	ConnRate      Reason = "conn_rate"
	MaxConnsPerIP Reason = "max_conns_per_ip"
	ConnRatePerIP Reason = "conn_rate_per_ip"
)

// Message is what a client refused for r is told.
func (r Reason) Message() string {
	switch r {
	case MaxConns:
		return "connection limit reached"
	case ConnRate:
		return "connection rate limit"
	case MaxConnsPerIP:
		return "connection limit for this address reached"
	case ConnRatePerIP:
		return "connection rate limit for this address"
	}
	return ""
}

// Config holds the limits; zero means unlimited.
type Config struct {
	// MaxConns caps live connections across the daemon.
	MaxConns int
	// ConnRate caps new connections per second across the daemon, with a
	// burst of one second's worth.
	ConnRate float64
	// MaxConnsPerIP caps live connections from one source address.
	MaxConnsPerIP int
	// ConnRatePerIP caps new connections per second from one source
	// address, with a burst of one second's worth.
	ConnRatePerIP float64
}

// DefaultMaxIdleEntries bounds the sources remembered only for their rate
// bucket (no live connection).
const DefaultMaxIdleEntries = 65536

// bucket is a token bucket holding up to rate tokens (one second's worth).
type bucket struct {
	tokens float64
	last   time.Time
}

// refill brings b to now; a new bucket (zero last) starts full.
func (b *bucket) refill(rate float64, now time.Time) {
	if b.last.IsZero() {
		b.tokens, b.last = max(rate, 1), now
		return
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.tokens+d.Seconds()*rate, max(rate, 1))
		b.last = now
	}
}

// full reports whether b would be a new bucket again.
func (b *bucket) full(rate float64) bool { return b.last.IsZero() || b.tokens >= max(rate, 1) }

// entry is one source address.
type entry struct {
	ip    netip.Addr
	conns int
	rate  bucket
	idle  *list.Element // in Limiter.idle while conns == 0
}

// Limiter admits connections. It is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	cfg     Config
	now     func() time.Time
	maxIdle int
	total   int
	rate    bucket
	byIP    map[netip.Addr]*entry
	idle    *list.List // *entry with conns == 0, most recent at the front
}

// New returns a limiter with cfg.
func New(cfg Config) *Limiter {
	return &Limiter{cfg: cfg, now: time.Now, maxIdle: DefaultMaxIdleEntries,
		byIP: make(map[netip.Addr]*entry), idle: list.New()}
}

// SetConfig changes the limits for connections admitted from now on.
// Live connections stay, even over a lowered cap.
func (l *Limiter) SetConfig(cfg Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg = cfg
	if cfg.ConnRatePerIP == 0 {
		for l.idle.Len() > 0 {
			l.evict()
		}
	}
}

// Config returns the limits in force.
func (l *Limiter) Config() Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg
}

// Ticket is an admitted connection; Release it once when it ends.
type Ticket struct {
	l  *Limiter
	ip netip.Addr
}

// Admit decides on a new connection from ip. When it is admitted (Reason
// OK) the returned Ticket must be released when the connection ends. A
// refused connection takes no token.
func (l *Limiter) Admit(ip netip.Addr) (*Ticket, Reason) {
	ip = ip.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	cfg := l.cfg
	if cfg.MaxConns > 0 && l.total >= cfg.MaxConns {
		return nil, MaxConns
	}
	if cfg.ConnRate > 0 {
		l.rate.refill(cfg.ConnRate, now)
		if l.rate.tokens < 1 {
			return nil, ConnRate
		}
	}
	perIP := cfg.MaxConnsPerIP > 0 || cfg.ConnRatePerIP > 0
	var e *entry
	if perIP {
		e = l.byIP[ip]
		if e != nil && cfg.MaxConnsPerIP > 0 && e.conns >= cfg.MaxConnsPerIP {
			return nil, MaxConnsPerIP
		}
		if cfg.ConnRatePerIP > 0 {
			var b bucket
			if e != nil {
				b = e.rate
			}
			b.refill(cfg.ConnRatePerIP, now)
			if b.tokens < 1 {
				l.touch(e)
				return nil, ConnRatePerIP
			}
		}
	}
	// Admitted: take the tokens and count the connection.
	l.total++
	if cfg.ConnRate > 0 {
		l.rate.tokens--
	}
	if perIP {
		if e == nil {
			e = &entry{ip: ip}
			l.byIP[ip] = e
		} else if e.idle != nil {
			l.idle.Remove(e.idle)
			e.idle = nil
		}
		e.conns++
		if cfg.ConnRatePerIP > 0 {
			e.rate.refill(cfg.ConnRatePerIP, now)
			e.rate.tokens--
		}
	}
	return &Ticket{l: l, ip: ip}, OK
}

// touch moves an idle entry to the front of the LRU.
func (l *Limiter) touch(e *entry) {
	if e != nil && e.idle != nil {
		l.idle.MoveToFront(e.idle)
	}
}

// evict forgets the least recently seen idle source.
func (l *Limiter) evict() {
	el := l.idle.Back()
	e := el.Value.(*entry)
	l.idle.Remove(el)
	delete(l.byIP, e.ip)
}

// Release ends an admitted connection. Calling it more than once, or on a
// nil Ticket, does nothing.
func (t *Ticket) Release() {
	if t == nil || t.l == nil {
		return
	}
	l := t.l
	t.l = nil
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	e := l.byIP[t.ip]
	if e == nil {
		return
	}
	e.conns--
	if e.conns > 0 {
		return
	}
	// No connection left: keep the entry only while its rate bucket
	// still says something (not refilled yet), in the bounded LRU.
	if l.cfg.ConnRatePerIP > 0 {
		e.rate.refill(l.cfg.ConnRatePerIP, l.now())
	}
	if l.cfg.ConnRatePerIP == 0 || e.rate.full(l.cfg.ConnRatePerIP) {
		delete(l.byIP, t.ip)
		return
	}
	e.idle = l.idle.PushFront(e)
	for l.idle.Len() > l.maxIdle {
		l.evict()
	}
}

// Stats are the limiter's current counts.
type Stats struct {
	Conns int // live admitted connections
	IPs   int // sources remembered (with connections or a rate bucket)
	Idle  int // of which only for their rate bucket
}

// Stats returns the current counts.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Conns: l.total, IPs: len(l.byIP), Idle: l.idle.Len()}
}
