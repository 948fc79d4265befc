package backend

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wsplice/wsplice/userspace/http1"
)

// Policy picks a backend among candidates: the backends that are up, not
// draining, not full and not yet tried for this request. Implementations
// must be safe for concurrent use. Select is never called with an empty
// slice, and returns one of its elements.
type Policy interface {
	Select(candidates []*Backend, req *Request) *Backend
}

// Balance names, as --balance takes them.
const (
	BalanceRoundRobin = "round-robin"
	BalanceLeastConn  = "least-conn"
	BalanceHashSource = "hash-source"
	BalanceHashHeader = "hash-header:" // + header name
	BalanceHashCookie = "hash-cookie:" // + cookie name
)

// ParsePolicy builds the policy --balance names: round-robin (the
// default, for ""), least-conn, hash-source, hash-header:NAME or
// hash-cookie:NAME.
func ParsePolicy(s string) (Policy, error) {
	switch {
	case s == "" || s == BalanceRoundRobin:
		return &RoundRobin{}, nil
	case s == BalanceLeastConn:
		return &LeastConn{}, nil
	case s == BalanceHashSource:
		return &Hash{Key: SourceKey}, nil
	case strings.HasPrefix(s, BalanceHashHeader):
		name := strings.TrimPrefix(s, BalanceHashHeader)
		if !http1.IsToken(name) {
			return nil, fmt.Errorf("balance %q: invalid header name", s)
		}
		return &Hash{Key: HeaderKey(name)}, nil
	case strings.HasPrefix(s, BalanceHashCookie):
		name := strings.TrimPrefix(s, BalanceHashCookie)
		if !http1.IsToken(name) {
			return nil, fmt.Errorf("balance %q: invalid cookie name", s)
		}
		return &Hash{Key: CookieKey(name)}, nil
	}
	return nil, fmt.Errorf("balance %q: want round-robin, least-conn, hash-source, hash-header:NAME or hash-cookie:NAME", s)
}

// RoundRobin is smooth weighted round-robin (as nginx does it): over any
// window of sum-of-weights picks each backend gets its weight's share, and
// picks of a heavy backend are spread out, not bunched.
type RoundRobin struct {
	mu      sync.Mutex
	current map[*Backend]int64
}

// Select implements Policy.
func (r *RoundRobin) Select(cands []*Backend, _ *Request) *Backend {
	if len(cands) == 1 {
		return cands[0]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current == nil {
		r.current = make(map[*Backend]int64)
	}
	var total int64
	var best *Backend
	for _, b := range cands {
		w := b.weight.Load()
		r.current[b] += w
		total += w
		if best == nil || r.current[b] > r.current[best] {
			best = b
		}
	}
	r.current[best] -= total
	if len(r.current) > 2*len(cands)+16 {
		// Removed backends: forget them (the rest keep their place).
		for b := range r.current {
			b.mu.Lock()
			gone := b.removed
			b.mu.Unlock()
			if gone {
				delete(r.current, b)
			}
		}
	}
	return best
}

// LeastConn picks the backend with the fewest active connections relative
// to its weight; ties are broken in turn, so equal backends fill evenly.
type LeastConn struct {
	n atomic.Uint64
}

// Select implements Policy.
func (l *LeastConn) Select(cands []*Backend, _ *Request) *Backend {
	start := int(l.n.Add(1) % uint64(len(cands)))
	best := cands[start]
	ba, bw := best.active.Load(), best.weight.Load()
	for i := 1; i < len(cands); i++ {
		b := cands[(start+i)%len(cands)]
		a, w := b.active.Load(), b.weight.Load()
		// a/w < ba/bw without division.
		if a*bw < ba*w {
			best, ba, bw = b, a, w
		}
	}
	return best
}

// Hash sends equal keys to the same backend with weighted rendezvous
// hashing (highest random weight): each backend scores the key, the
// highest score wins. Adding or removing a backend moves only the keys
// that backend wins or won; when the winner is down or full the next
// highest takes over, and the keys come back when it does. A request
// without a key is placed round-robin.
type Hash struct {
	// Key extracts the hashed value; ok false means the request has none.
	Key func(*Request) (key string, ok bool)
	rr  RoundRobin
}

// SourceKey hashes the client's IP address.
func SourceKey(r *Request) (string, bool) { return r.SourceIP, r.SourceIP != "" }

// HeaderKey hashes the value of a request header.
func HeaderKey(name string) func(*Request) (string, bool) {
	return func(r *Request) (string, bool) {
		if r.Header == nil {
			return "", false
		}
		v := r.Header(name)
		return v, v != ""
	}
}

// CookieKey hashes the value of a request cookie.
func CookieKey(name string) func(*Request) (string, bool) {
	return func(r *Request) (string, bool) {
		if r.Cookie == nil {
			return "", false
		}
		v := r.Cookie(name)
		return v, v != ""
	}
}

// Select implements Policy.
func (h *Hash) Select(cands []*Backend, req *Request) *Backend {
	key, ok := h.Key(req)
	if !ok {
		return h.rr.Select(cands, req)
	}
	var best *Backend
	bestScore := math.Inf(-1)
	for _, b := range cands {
		if s := score(key, b); s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// score is b's weighted rendezvous score for key: -w/ln(u) with u uniform
// in (0,1) from a hash of key and address (Schindelhauer and Schomaker,
// "Weighted distributed hash tables", 2005). The address, not the
// position, is hashed: scores do not change when other backends come or go.
func score(key string, b *Backend) float64 {
	h := fnv64(key, b.addr)
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(b.weight.Load()) / math.Log(u)
}

// fnv64 is FNV-1a over a, a zero byte and b, then the splitmix64 finaliser
// so that near keys spread over the whole range.
func fnv64(a, b string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(a); i++ {
		h = (h ^ uint64(a[i])) * prime
	}
	h *= prime
	for i := 0; i < len(b); i++ {
		h = (h ^ uint64(b[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
