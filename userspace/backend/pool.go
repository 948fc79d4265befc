package backend

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Options configure a pool. Zero values take the defaults.
type Options struct {
	// Policy picks among available backends; nil means round-robin.
	Policy Policy
	// Health configures active checks and the fall and rise counts that
	// passive marking (connect failures) uses too.
	Health HealthConfig
	// Log receives state changes (up, down, drained, added, removed).
	Log zerolog.Logger
}

// Request is what a policy may look at to pick a backend.
type Request struct {
	// SourceIP is the client's address without port.
	SourceIP string
	// Header returns a request header field (nil: none).
	Header func(name string) string
	// Cookie returns a request cookie's value (nil: none).
	Cookie func(name string) string
	// Sticky, if not empty, is a backend ID (from a sticky cookie) to use
	// if that backend is available.
	Sticky string
}

// Pool is a set of backends that may change at runtime, the policy
// choosing among them, and their health checkers.
type Pool struct {
	log zerolog.Logger

	mu sync.RWMutex
	// policy and health can change at runtime (SetPolicy, SetHealth).
	policy   Policy
	health   HealthConfig
	backends []*Backend // in the order added
	// gone holds removed backends whose drain deadline is still pending,
	// so that Close can stop it.
	gone []*Backend
	// retired holds removed backends whose connections still live, so
	// that one added again at the same address counts them (max-conns,
	// least-conn).
	retired []*Backend
	started bool
	closed  bool
	wg      sync.WaitGroup
}

// NewPool builds a pool of specs (each checked with Spec.Check). An empty
// pool is valid: Acquire then fails with ErrNoBackend. Health checkers run
// from Start until Close.
func NewPool(specs []Spec, opts Options) (*Pool, error) {
	if err := opts.Health.Validate(); err != nil {
		return nil, err
	}
	p := &Pool{policy: opts.Policy, health: opts.Health, log: opts.Log}
	if p.policy == nil {
		p.policy = &RoundRobin{}
	}
	for _, s := range specs {
		if err := s.Check(); err != nil {
			return nil, err
		}
		s.Addr = CanonicalAddr(s.Addr)
		if p.find(s.Addr) != nil {
			return nil, fmt.Errorf("%w: %s given twice", ErrInvalidSpec, s.Addr)
		}
		p.backends = append(p.backends, newBackend(s, nil))
	}
	return p, nil
}

// Start starts the health checkers (one goroutine per backend).
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	for _, b := range p.backends {
		p.startChecker(b)
	}
}

// Close stops the health checkers and drain timers; it leaves connections
// alone.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for _, b := range p.backends {
		b.mu.Lock()
		close(b.stop)
		if b.drainT != nil {
			b.drainT.Stop()
		}
		b.mu.Unlock()
	}
	for _, b := range p.gone {
		b.mu.Lock()
		if b.drainT != nil {
			b.drainT.Stop()
		}
		b.mu.Unlock()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Pool) find(addr string) *Backend {
	addr = CanonicalAddr(addr)
	for _, b := range p.backends {
		if b.addr == addr {
			return b
		}
	}
	return nil
}

// Backend returns the backend with addr, or nil.
func (p *Pool) Backend(addr string) *Backend {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.find(addr)
}

// Backends returns the pool's backends in the order they were added.
func (p *Pool) Backends() []*Backend {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.backends)
}

// Len is the number of backends in the pool.
func (p *Pool) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.backends)
}

// Acquire picks a backend for a new connection and takes a lease on it,
// which the caller releases when the connection ends. Backends in tried
// (those whose connect already failed for this request) are skipped. It
// fails with ErrNoBackend when no backend is available.
func (p *Pool) Acquire(req *Request, tried []*Backend) (*Lease, error) {
	if req == nil {
		req = &Request{}
	}
	p.mu.RLock()
	policy := p.policy
	cands := make([]*Backend, 0, len(p.backends))
	for _, b := range p.backends {
		if !slices.Contains(tried, b) && b.available() {
			cands = append(cands, b)
		}
	}
	p.mu.RUnlock()
	for len(cands) > 0 {
		var b *Backend
		if req.Sticky != "" {
			for _, c := range cands {
				if c.id == req.Sticky {
					b = c
					break
				}
			}
		}
		if b == nil {
			b = policy.Select(cands, req)
		}
		if l := b.lease(); l != nil {
			return l, nil
		}
		// Became full, down or drained since the snapshot: next one.
		cands = slices.DeleteFunc(cands, func(c *Backend) bool { return c == b })
	}
	return nil, ErrNoBackend
}

// ReportConnect records the result of connecting to b for a client:
// passive health marking. A failure counts toward the fall count like a
// failed check; a success clears the failures.
func (p *Pool) ReportConnect(b *Backend, err error) {
	p.observe(b, err, "connect")
}

// observe applies one check or connect result to b's rise/fall counters.
func (p *Pool) observe(b *Backend, err error, source string) {
	p.mu.RLock()
	rise, fall := p.health.Rise, p.health.Fall
	p.mu.RUnlock()
	b.mu.Lock()
	b.lastAt = time.Now()
	was := b.healthy
	if err != nil {
		b.lastErr = err.Error()
		b.okRun = 0
		b.failRun++
		if b.healthy && b.failRun >= fall {
			b.healthy = false
		}
	} else {
		b.lastErr = ""
		b.failRun = 0
		b.okRun++
		if !b.healthy && b.okRun >= rise {
			b.healthy = true
		}
	}
	now, removed := b.healthy, b.removed
	fails, oks := b.failRun, b.okRun
	b.mu.Unlock()
	if was == now || removed {
		return
	}
	if now {
		p.log.Info().Str("backend", b.addr).Str("state", "up").Str("source", source).Int("consecutive_ok", oks).Msg("backend up")
	} else {
		p.log.Warn().Str("backend", b.addr).Str("state", "down").Str("source", source).Int("consecutive_failures", fails).
			Err(err).Msg("backend down")
	}
}

// Add puts a new backend into the pool; it takes connections at once and
// its health checker starts if the pool is running.
func (p *Pool) Add(s Spec) (*Backend, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	s.Addr = CanonicalAddr(s.Addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.find(s.Addr) != nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, s.Addr)
	}
	var active *atomic.Int64
	p.retired = slices.DeleteFunc(p.retired, func(r *Backend) bool { return r.Active() == 0 })
	if i := slices.IndexFunc(p.retired, func(r *Backend) bool { return r.addr == s.Addr }); i >= 0 {
		active = p.retired[i].active
	}
	b := newBackend(s, active)
	p.backends = append(p.backends, b)
	if p.started && !p.closed {
		p.startChecker(b)
	}
	p.log.Info().Str("backend", b.addr).Int("weight", b.Weight()).Int("max_conns", b.MaxConns()).Msg("backend added")
	return b, nil
}

// SetPolicy makes policy choose the backends of new connections from now
// on; established connections stay where they are.
func (p *Pool) SetPolicy(policy Policy) {
	if policy == nil {
		policy = &RoundRobin{}
	}
	p.mu.Lock()
	p.policy = policy
	p.mu.Unlock()
}

// SetHealth changes the health checks: every checker restarts with h (its
// first check at once), and rise and fall apply to the next results. Each
// backend keeps its health and its counts so far.
func (p *Pool) SetHealth(h HealthConfig) error {
	if err := h.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.health == h {
		return nil
	}
	p.health = h
	if !p.started || p.closed {
		return nil
	}
	for _, b := range p.backends {
		b.mu.Lock()
		close(b.stop)
		b.stop = make(chan struct{})
		b.mu.Unlock()
		p.startChecker(b)
	}
	return nil
}

// Remove takes a backend out of the pool: no new connections; its
// connections are left alone (a drain deadline set before still applies).
func (p *Pool) Remove(addr string) error {
	addr = CanonicalAddr(addr)
	p.mu.Lock()
	i := slices.IndexFunc(p.backends, func(b *Backend) bool { return b.addr == addr })
	if i < 0 {
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, addr)
	}
	b := p.backends[i]
	p.backends = slices.Delete(p.backends, i, i+1)
	p.retired = slices.DeleteFunc(p.retired, func(r *Backend) bool { return r.Active() == 0 || r.addr == addr })
	if b.Active() > 0 {
		p.retired = append(p.retired, b)
	}
	b.mu.Lock()
	b.removed = true
	if !p.closed {
		close(b.stop)
	}
	if b.drainT != nil {
		p.gone = slices.DeleteFunc(p.gone, func(g *Backend) bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.drainT == nil || g.Active() == 0
		})
		p.gone = append(p.gone, b)
	}
	b.mu.Unlock()
	p.mu.Unlock()
	p.log.Info().Str("backend", addr).Int64("active_conns", b.Active()).Msg("backend removed")
	return nil
}

// Drain stops new connections to a backend. With a deadline > 0, the
// connections still on it when the deadline passes are closed.
func (p *Pool) Drain(addr string, deadline time.Duration) error {
	p.mu.RLock()
	b := p.find(addr)
	closed := p.closed
	p.mu.RUnlock()
	if b == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, addr)
	}
	b.mu.Lock()
	b.draining = true
	if b.drainT != nil {
		b.drainT.Stop()
		b.drainT = nil
	}
	if deadline > 0 && !closed {
		b.drainT = time.AfterFunc(deadline, func() {
			n := b.closeAll()
			p.log.Info().Str("backend", addr).Int("closed_conns", n).Msg("drain deadline passed, connections closed")
		})
	}
	b.mu.Unlock()
	ev := p.log.Info().Str("backend", addr).Str("state", "draining").Int64("active_conns", b.Active())
	if deadline > 0 {
		ev = ev.Dur("deadline", deadline)
	}
	ev.Msg("backend draining")
	return nil
}

// SetWeight changes a backend's weight for new connections.
func (p *Pool) SetWeight(addr string, w int) error {
	if w < 1 || w > MaxWeight {
		return fmt.Errorf("%w %q: weight %d: must be between 1 and %d", ErrInvalidSpec, addr, w, MaxWeight)
	}
	b := p.Backend(addr)
	if b == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, addr)
	}
	old := b.weight.Swap(int64(w))
	p.log.Info().Str("backend", addr).Int64("old_weight", old).Int("weight", w).Msg("backend weight changed")
	return nil
}

// Status is a backend as GET /backends shows it.
type Status struct {
	Addr          string `json:"addr"`
	ID            string `json:"id"`
	Weight        int    `json:"weight"`
	State         string `json:"state"`
	Health        Health `json:"health"`
	ActiveConns   int64  `json:"active_conns"`
	MaxConns      int    `json:"max_conns"`
	ProxyProtocol int    `json:"proxy_protocol"`
}

// Health is a backend's health as the checks and connects saw it.
type Health struct {
	Healthy             bool       `json:"healthy"`
	Check               string     `json:"check"`
	ConsecutiveOK       int        `json:"consecutive_ok"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	LastError           string     `json:"last_error,omitempty"`
	LastCheck           *time.Time `json:"last_check,omitempty"`
}

// Status reports every backend, in the order added.
func (p *Pool) Status() []Status {
	p.mu.RLock()
	check := p.health.Check
	p.mu.RUnlock()
	if check == "" {
		check = "passive"
	}
	var out []Status
	for _, b := range p.Backends() {
		b.mu.Lock()
		st := Status{
			Addr: b.addr, ID: b.id, Weight: b.Weight(), State: b.stateLocked().String(),
			ActiveConns: b.Active(), MaxConns: b.MaxConns(), ProxyProtocol: b.proxyProtocol,
			Health: Health{Healthy: b.healthy, Check: check, ConsecutiveOK: b.okRun, ConsecutiveFailures: b.failRun, LastError: b.lastErr},
		}
		if !b.lastAt.IsZero() {
			t := b.lastAt
			st.Health.LastCheck = &t
		}
		b.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// SetBackends makes the pool's set of backends match specs (each a
// --backend value), for a configuration reload: backends not in specs are
// removed (their connections are left alone), new ones are added, and the
// weight and max-conns of the others follow their spec; a backend whose
// PROXY protocol setting changed is replaced. Every spec is checked first:
// on error the pool is unchanged.
func (p *Pool) SetBackends(specs []string) error {
	want := make([]Spec, 0, len(specs))
	seen := make(map[string]bool, len(specs))
	for _, v := range specs {
		s, err := ParseSpec(v)
		if err != nil {
			return err
		}
		if seen[s.Addr] {
			return fmt.Errorf("%w: %s given twice", ErrInvalidSpec, s.Addr)
		}
		seen[s.Addr] = true
		want = append(want, s)
	}
	for _, b := range p.Backends() {
		if !seen[b.addr] {
			_ = p.Remove(b.addr)
		}
	}
	for _, s := range want {
		b := p.Backend(s.Addr)
		if b != nil && b.proxyProtocol != s.ProxyProtocol {
			_ = p.Remove(s.Addr)
			b = nil
		}
		if b == nil {
			if _, err := p.Add(s); err != nil && !errors.Is(err, ErrExists) {
				return err
			}
			continue
		}
		if w := max(s.Weight, 1); b.Weight() != w {
			_ = p.SetWeight(s.Addr, w)
		}
		b.maxConns.Store(int64(s.MaxConns))
	}
	return nil
}
