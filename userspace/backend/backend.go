// Package backend holds the pool of backends and the policy that picks one
// for each new connection.
package backend

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
)

// ErrNoBackend means there is no backend to pick; a proxy answers 503.
var ErrNoBackend = errors.New("no backend available")

// Backend is one upstream server.
type Backend struct {
	// Addr is "host:port" as given in the configuration.
	Addr string
}

// Policy picks a backend among candidates. Implementations must be safe
// for concurrent use. Select is never called with an empty slice.
type Policy interface {
	Select(candidates []Backend) Backend
}

// Pool is a set of backends and the policy choosing among them. The set
// can be replaced while connections are picked (SetBackends).
type Pool struct {
	backends atomic.Pointer[[]Backend]
	policy   Policy
}

// NewPool checks addrs ("host:port", numeric port) and builds a pool. A nil
// policy means round-robin. An empty pool is valid: Next then fails with
// ErrNoBackend.
func NewPool(addrs []string, policy Policy) (*Pool, error) {
	if policy == nil {
		policy = &RoundRobin{}
	}
	p := &Pool{policy: policy}
	if err := p.SetBackends(addrs); err != nil {
		return nil, err
	}
	return p, nil
}

// SetBackends checks addrs and replaces the pool's backends with them for
// the connections picked from now on; on error the pool is unchanged.
func (p *Pool) SetBackends(addrs []string) error {
	bs := make([]Backend, 0, len(addrs))
	for _, a := range addrs {
		if err := CheckAddr(a); err != nil {
			return err
		}
		bs = append(bs, Backend{Addr: a})
	}
	p.backends.Store(&bs)
	return nil
}

// CheckAddr reports whether addr is a usable "host:port".
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("backend %q: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("backend %q: missing host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("backend %q: invalid port", addr)
	}
	return nil
}

// Next picks the backend for a new connection.
func (p *Pool) Next() (Backend, error) {
	bs := *p.backends.Load()
	if len(bs) == 0 {
		return Backend{}, ErrNoBackend
	}
	return p.policy.Select(bs), nil
}

// Backends returns a copy of the pool's backends.
func (p *Pool) Backends() []Backend { return append([]Backend(nil), *p.backends.Load()...) }

// RoundRobin picks each candidate in turn.
type RoundRobin struct {
	n atomic.Uint64
}

// Select implements Policy.
func (r *RoundRobin) Select(candidates []Backend) Backend {
	i := r.n.Add(1) - 1
	return candidates[i%uint64(len(candidates))]
}
