// Package backend holds the pool of backends: their configuration, health,
// live connections, and the policy that picks one for each new connection.
package backend

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Errors a caller acts on.
var (
	// ErrNoBackend means no backend can take a new connection (none
	// configured, all down, draining or full); a proxy answers 503.
	ErrNoBackend = errors.New("no backend available")
	// ErrNotFound means no backend has the address given.
	ErrNotFound = errors.New("backend not found")
	// ErrExists means a backend with the address given is already in the pool.
	ErrExists = errors.New("backend already in the pool")
)

// State is what a backend accepts.
type State int

// States, as GET /backends reports them.
const (
	StateUp       State = iota // takes new connections
	StateDown                  // failed its health checks: no new connections
	StateDraining              // drained by the operator: no new connections
)

func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	case StateDraining:
		return "draining"
	}
	return "unknown"
}

// Backend is one upstream server of a pool. Its address never changes;
// weight and limits may, at runtime.
type Backend struct {
	addr          string
	id            string
	proxyProtocol int
	weight        atomic.Int64
	maxConns      atomic.Int64
	// active counts the connections on this backend; a backend removed
	// and added again while its connections live shares their count.
	active *atomic.Int64

	mu       sync.Mutex
	healthy  bool
	draining bool
	removed  bool
	okRun    int // consecutive successful checks or connects
	failRun  int // consecutive failed checks or connects
	lastErr  string
	lastAt   time.Time
	leases   map[*Lease]struct{}
	drainT   *time.Timer
	stop     chan struct{} // closed to stop the health checker
}

// newBackend makes the backend of s; active is the connection count of an
// earlier backend at the same address whose connections still live, or nil.
func newBackend(s Spec, active *atomic.Int64) *Backend {
	if active == nil {
		active = new(atomic.Int64)
	}
	sum := sha256.Sum256([]byte(s.Addr))
	b := &Backend{
		addr:          s.Addr,
		id:            hex.EncodeToString(sum[:8]),
		proxyProtocol: s.ProxyProtocol,
		active:        active,
		healthy:       true,
		leases:        make(map[*Lease]struct{}),
		stop:          make(chan struct{}),
	}
	b.weight.Store(int64(max(s.Weight, 1)))
	b.maxConns.Store(int64(s.MaxConns))
	return b
}

// Addr is the backend's "host:port".
func (b *Backend) Addr() string { return b.addr }

// ID identifies the backend in a sticky cookie without saying its address:
// the first 8 bytes of the SHA-256 of the address, in hex. It is the same in
// every wsplice process, so cookies survive restarts and work across
// instances behind one name.
func (b *Backend) ID() string { return b.id }

// ProxyProtocol is the PROXY protocol version to write ahead of an L4
// stream to this backend: 0 (none) or 2.
func (b *Backend) ProxyProtocol() int { return b.proxyProtocol }

// Weight is the backend's current weight (at least 1).
func (b *Backend) Weight() int { return int(b.weight.Load()) }

// MaxConns is the backend's connection cap (0: none).
func (b *Backend) MaxConns() int { return int(b.maxConns.Load()) }

// Active counts the backend's leases: connections picked for it and not
// yet ended.
func (b *Backend) Active() int64 { return b.active.Load() }

// Spec is the backend's current configuration.
func (b *Backend) Spec() Spec {
	return Spec{Addr: b.addr, Weight: b.Weight(), MaxConns: b.MaxConns(), ProxyProtocol: b.proxyProtocol}
}

// State is what the backend accepts now.
func (b *Backend) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stateLocked()
}

func (b *Backend) stateLocked() State {
	switch {
	case b.draining:
		return StateDraining
	case !b.healthy:
		return StateDown
	}
	return StateUp
}

// available reports whether the backend takes a new connection now.
func (b *Backend) available() bool {
	b.mu.Lock()
	ok := b.healthy && !b.draining && !b.removed
	b.mu.Unlock()
	return ok && !b.full()
}

func (b *Backend) full() bool {
	m := b.maxConns.Load()
	return m > 0 && b.active.Load() >= m
}

// lease takes one connection slot, unless the backend became unavailable
// or full since it was picked.
func (b *Backend) lease() *Lease {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.healthy || b.draining || b.removed {
		return nil
	}
	if m := b.maxConns.Load(); m > 0 && b.active.Load() >= m {
		return nil
	}
	l := &Lease{b: b}
	b.leases[l] = struct{}{}
	b.active.Add(1)
	return l
}

// closeAll runs the closer of every lease on the backend, outside the lock.
func (b *Backend) closeAll() int {
	b.mu.Lock()
	ls := make([]*Lease, 0, len(b.leases))
	for l := range b.leases {
		ls = append(ls, l)
	}
	b.mu.Unlock()
	for _, l := range ls {
		l.close()
	}
	return len(ls)
}

// Lease is one connection counted on a backend, from the moment it was
// picked until Release. The proxy gives it a closer so that a drain
// deadline can end the connection.
type Lease struct {
	b        *Backend
	released atomic.Bool
	mu       sync.Mutex
	closer   func()
}

// Backend is the backend the lease is on.
func (l *Lease) Backend() *Backend { return l.b }

// SetCloser sets what ends the connection (replacing any earlier one).
func (l *Lease) SetCloser(f func()) {
	l.mu.Lock()
	l.closer = f
	l.mu.Unlock()
}

func (l *Lease) close() {
	l.mu.Lock()
	f := l.closer
	l.mu.Unlock()
	if f != nil {
		f()
	}
}

// Release ends the lease; calls after the first do nothing.
func (l *Lease) Release() {
	if l == nil || l.released.Swap(true) {
		return
	}
	b := l.b
	b.mu.Lock()
	delete(b.leases, l)
	b.mu.Unlock()
	b.active.Add(-1)
}
