package backend

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// MaxWeight bounds a backend's weight.
const MaxWeight = 10000

// ErrInvalidSpec wraps every reason ParseSpec or Spec.Check rejects a
// backend.
var ErrInvalidSpec = errors.New("invalid backend")

// Spec is one backend as configured: "HOST:PORT[,weight=N][,max-conns=N][,proxy-protocol=v2]".
type Spec struct {
	// Addr is "host:port" with a numeric port.
	Addr string `json:"addr"`
	// Weight is the backend's share relative to the others (1 to
	// MaxWeight; 0 in a Spec given to the pool means 1).
	Weight int `json:"weight"`
	// MaxConns caps the connections (WebSockets, L4 streams and plain
	// requests in flight) on this backend at once; 0 is no cap.
	MaxConns int `json:"max_conns"`
	// ProxyProtocol is the PROXY protocol version written to this backend
	// ahead of an L4 stream: 0 (none) or 2.
	ProxyProtocol int `json:"proxy_protocol"`
}

// ParseSpec parses "HOST:PORT" optionally followed by ",weight=N",
// ",max-conns=N" and ",proxy-protocol=v2" in any order.
func ParseSpec(s string) (Spec, error) {
	parts := strings.Split(strings.TrimSpace(s), ",")
	sp := Spec{Addr: strings.TrimSpace(parts[0]), Weight: 1}
	seen := map[string]bool{}
	for _, opt := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(opt), "=")
		if !ok {
			return Spec{}, fmt.Errorf("%w %q: option %q: want NAME=VALUE", ErrInvalidSpec, s, opt)
		}
		if seen[k] {
			return Spec{}, fmt.Errorf("%w %q: %s given twice", ErrInvalidSpec, s, k)
		}
		seen[k] = true
		switch k {
		case "weight":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Spec{}, fmt.Errorf("%w %q: weight %q: %w", ErrInvalidSpec, s, v, err)
			}
			if n < 1 {
				return Spec{}, fmt.Errorf("%w %q: weight %d: must be between 1 and %d", ErrInvalidSpec, s, n, MaxWeight)
			}
			sp.Weight = n
		case "max-conns":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Spec{}, fmt.Errorf("%w %q: max-conns %q: %w", ErrInvalidSpec, s, v, err)
			}
			sp.MaxConns = n
		case "proxy-protocol":
			switch v {
			case "v2", "2":
				sp.ProxyProtocol = 2
			case "off", "none", "0":
				sp.ProxyProtocol = 0
			default:
				return Spec{}, fmt.Errorf("%w %q: proxy-protocol %q: want v2", ErrInvalidSpec, s, v)
			}
		default:
			return Spec{}, fmt.Errorf("%w %q: unknown option %q (want weight, max-conns or proxy-protocol)", ErrInvalidSpec, s, k)
		}
	}
	if err := sp.Check(); err != nil {
		return Spec{}, err
	}
	sp.Addr = CanonicalAddr(sp.Addr)
	return sp, nil
}

// Check reports whether the spec is usable; a zero Weight counts as 1.
func (s Spec) Check() error {
	if err := CheckAddr(s.Addr); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if s.Weight < 0 || s.Weight > MaxWeight {
		return fmt.Errorf("%w %q: weight %d: must be between 1 and %d", ErrInvalidSpec, s.Addr, s.Weight, MaxWeight)
	}
	if s.MaxConns < 0 {
		return fmt.Errorf("%w %q: max-conns %d: must not be negative", ErrInvalidSpec, s.Addr, s.MaxConns)
	}
	if s.ProxyProtocol != 0 && s.ProxyProtocol != 2 {
		return fmt.Errorf("%w %q: proxy-protocol %d: want 0 or 2", ErrInvalidSpec, s.Addr, s.ProxyProtocol)
	}
	return nil
}

// String is the spec in the syntax ParseSpec reads.
func (s Spec) String() string {
	var b strings.Builder
	b.WriteString(s.Addr)
	if s.Weight > 1 {
		fmt.Fprintf(&b, ",weight=%d", s.Weight)
	}
	if s.MaxConns > 0 {
		fmt.Fprintf(&b, ",max-conns=%d", s.MaxConns)
	}
	if s.ProxyProtocol == 2 {
		b.WriteString(",proxy-protocol=v2")
	}
	return b.String()
}

// CanonicalAddr is addr spelled one way, so that one backend cannot be
// added twice under two spellings: the port without leading zeros, an IP
// address in its shortest form (an IPv4-mapped IPv6 address as IPv4), a
// host name in lower case. An addr CheckAddr refuses is returned as it is.
func CanonicalAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return addr
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	} else {
		host = strings.ToLower(host)
	}
	return net.JoinHostPort(host, strconv.Itoa(n))
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
