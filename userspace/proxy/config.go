package proxy

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/certstore"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/limit"
)

// Defaults for Config fields left zero.
const (
	DefaultListen          = ":8080"
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultDialTimeout     = 5 * time.Second
	DefaultResponseTimeout = 60 * time.Second
	DefaultShutdownTimeout = 5 * time.Second
	DefaultIdleTimeout     = 60 * time.Second

	// MinIdleTimeout and MaxIdleTimeout bound Config.IdleTimeout.
	MinIdleTimeout = time.Second
	MaxIdleTimeout = time.Hour

	DefaultTLSHandshakeTimeout = 10 * time.Second

	// TCP keepalive on client and backend sockets (unless
	// Config.TCPKeepAliveOff): first probe after KeepAliveIdle without
	// traffic, then every KeepAliveInterval, the connection dropped after
	// KeepAliveCount unanswered probes (60 s for a peer that vanished).
	KeepAliveIdle     = 30 * time.Second
	KeepAliveInterval = 10 * time.Second
	KeepAliveCount    = 3
)

// Kernel TLS modes (Config.KTLS).
const (
	KTLSAuto = "auto"
	KTLSOff  = "off"
)

// ErrInvalidConfig wraps every reason Validate rejects a Config.
var ErrInvalidConfig = errors.New("invalid config")

// Config is the proxy's configuration. Zero durations and sizes take the
// defaults above when Validate runs.
type Config struct {
	// Listen holds the addresses to accept clients on (HTTP and WS).
	// It defaults to DefaultListen only when no listener of any kind is
	// configured.
	Listen []string
	// TLSListen holds addresses of HTTPS and WSS listeners: TLS, then the
	// same HTTP handling as Listen, with X-Forwarded-Proto: https.
	TLSListen []string
	// TCPListen holds addresses of L4 listeners: each connection is
	// spliced to a backend at once, nothing parsed.
	TCPListen []string
	// TCPTLSListen holds addresses of L4 listeners that terminate TLS and
	// splice the plaintext to a backend, nothing parsed.
	TCPTLSListen []string
	// Certificates serve the TLS listeners, chosen by SNI; the first is
	// the default. Required with TLSListen or TCPTLSListen.
	Certificates []certstore.Pair
	// TLSHandshakeTimeout bounds a TLS handshake.
	TLSHandshakeTimeout time.Duration
	// KTLS is KTLSAuto (kernel TLS where the kernel has it; the default)
	// or KTLSOff (Go's crypto/tls carries every record).
	KTLS string
	// Backends holds each backend as "host:port[,weight=N][,max-conns=N]
	// [,proxy-protocol=v2]" (backend.ParseSpec). Empty is allowed: every
	// request is then answered 503 (backends may be added at runtime).
	Backends []string
	// Balance is the backend selection policy (backend.ParsePolicy):
	// round-robin (the default), least-conn, hash-source,
	// hash-header:NAME or hash-cookie:NAME.
	Balance string
	// StickyCookie, if set, names a cookie that pins a client to a
	// backend: set on plain HTTP responses (and on the 101), honoured on
	// later requests and upgrades while that backend is available.
	StickyCookie string
	// Health configures active health checks and the rise and fall
	// counts of passive marking; zero fields take backend's defaults.
	Health backend.HealthConfig
	// HeaderTimeout bounds reading each request head, how long a
	// keep-alive connection may sit idle, and how long a request body may
	// go without a byte.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request head; larger heads get 431.
	MaxHeaderBytes int
	// IdleTimeout closes a spliced connection (both sides) once no byte
	// has moved in either direction for this long, on every data path.
	// A reload applies it to connections spliced afterwards.
	IdleTimeout time.Duration
	// DialTimeout bounds connecting to a backend (--connect-timeout).
	DialTimeout time.Duration
	// ResponseTimeout bounds the backend's answer to a request
	// (--backend-timeout): the head of its answer to a WebSocket
	// handshake, or to a plain request once the request (body included)
	// is sent; past it the client gets 504. A reload applies it to
	// requests sent afterwards.
	ResponseTimeout time.Duration
	// ShutdownTimeout is how long handshakes and requests in flight may
	// run on after shutdown starts.
	ShutdownTimeout time.Duration
	// DrainTimeout is how long established connections (spliced or
	// not) and requests in flight may run on after shutdown starts,
	// listeners closed; what is left is then closed. 0: spliced pairs are
	// not waited for, and requests in flight get ShutdownTimeout.
	DrainTimeout time.Duration
	// Admin is the address of the admin HTTP server: "host:port", or a
	// unix socket as "unix:PATH" or an absolute path ("" = none).
	Admin string
	// AdminOptional makes a failure to listen on Admin a warning instead
	// of an error (the built-in default address may be taken).
	AdminOptional bool

	// MaxConns caps live client connections (0: no cap). Past it an
	// HTTP listener's client gets 503 with Retry-After, an L4 listener's
	// connection is closed at once.
	MaxConns int
	// MaxConnRate caps new client connections per second across the
	// daemon (token bucket, burst of one second's worth; 0: no cap).
	MaxConnRate int
	// MaxConnsPerIP and MaxConnRatePerIP are the same per source address.
	MaxConnsPerIP    int
	MaxConnRatePerIP int
	// TCPKeepAliveOff turns off TCP keepalive on client and backend
	// sockets (on by default: KeepAliveIdle, KeepAliveInterval,
	// KeepAliveCount).
	TCPKeepAliveOff bool
	// NoHandshakeLoop serves every HTTP listener's connection with a
	// goroutine through Go's net package. By default WebSocket handshakes
	// on the HTTP listeners run in an event loop on bare sockets (see
	// hsloop.go) when the data plane can take bare sockets
	// (dataplane.Raw); everything else goes to the goroutine path.
	NoHandshakeLoop bool
}

// limits returns the limiter's configuration.
func (c *Config) limits() limit.Config {
	return limit.Config{MaxConns: c.MaxConns, ConnRate: float64(c.MaxConnRate),
		MaxConnsPerIP: c.MaxConnsPerIP, ConnRatePerIP: float64(c.MaxConnRatePerIP)}
}

// Validate fills in defaults and checks every field.
func (c *Config) Validate() error {
	if len(c.Listen)+len(c.TLSListen)+len(c.TCPListen)+len(c.TCPTLSListen) == 0 {
		c.Listen = []string{DefaultListen}
	}
	if c.TLSHandshakeTimeout == 0 {
		c.TLSHandshakeTimeout = DefaultTLSHandshakeTimeout
	}
	if c.KTLS == "" {
		c.KTLS = KTLSAuto
	}
	if c.HeaderTimeout == 0 {
		c.HeaderTimeout = DefaultHeaderTimeout
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.ResponseTimeout == 0 {
		c.ResponseTimeout = DefaultResponseTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	var errs []error
	for _, ls := range [][]string{c.Listen, c.TLSListen, c.TCPListen, c.TCPTLSListen} {
		for _, l := range ls {
			if _, _, err := net.SplitHostPort(l); err != nil {
				errs = append(errs, fmt.Errorf("listen address %q: %w", l, err))
			}
		}
	}
	tlsListeners := len(c.TLSListen)+len(c.TCPTLSListen) > 0
	switch {
	case tlsListeners && len(c.Certificates) == 0:
		errs = append(errs, errors.New("TLS listeners need at least one certificate and key"))
	case !tlsListeners && len(c.Certificates) > 0:
		errs = append(errs, errors.New("certificates given without a TLS listener"))
	}
	for _, cp := range c.Certificates {
		if cp.Cert == "" || cp.Key == "" {
			errs = append(errs, fmt.Errorf("certificate %q with key %q: both files are needed", cp.Cert, cp.Key))
		}
	}
	if c.TLSHandshakeTimeout < 0 {
		errs = append(errs, fmt.Errorf("TLS handshake timeout %v: must be positive", c.TLSHandshakeTimeout))
	}
	if c.KTLS != KTLSAuto && c.KTLS != KTLSOff {
		errs = append(errs, fmt.Errorf("kernel TLS mode %q: want %s or %s", c.KTLS, KTLSAuto, KTLSOff))
	}
	seen := map[string]bool{}
	for _, b := range c.Backends {
		sp, err := backend.ParseSpec(b)
		switch {
		case err != nil:
			errs = append(errs, err)
		case seen[sp.Addr]:
			errs = append(errs, fmt.Errorf("backend %s given twice", sp.Addr))
		}
		seen[sp.Addr] = true
	}
	if _, err := backend.ParsePolicy(c.Balance); err != nil {
		errs = append(errs, err)
	}
	if c.StickyCookie != "" && !http1.IsToken(c.StickyCookie) /* RFC 6265: a cookie-name is a token */ {
		errs = append(errs, fmt.Errorf("sticky cookie name %q: not a valid cookie name", c.StickyCookie))
	}
	if err := c.Health.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.HeaderTimeout < 0 {
		errs = append(errs, fmt.Errorf("header timeout %v: must be positive", c.HeaderTimeout))
	}
	if c.MaxHeaderBytes < 256 || c.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("max header bytes %d: must be between 256 and 1048576", c.MaxHeaderBytes))
	}
	if c.IdleTimeout < MinIdleTimeout || c.IdleTimeout > MaxIdleTimeout {
		errs = append(errs, fmt.Errorf("idle timeout %v: must be between %v and %v", c.IdleTimeout, MinIdleTimeout, MaxIdleTimeout))
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("dial timeout %v: must be positive", c.DialTimeout))
	}
	if c.ResponseTimeout < 0 {
		errs = append(errs, fmt.Errorf("response timeout %v: must be positive", c.ResponseTimeout))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("shutdown timeout %v: must be positive", c.ShutdownTimeout))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("drain timeout %v: must not be negative", c.DrainTimeout))
	}
	for name, v := range map[string]int{"max conns": c.MaxConns, "max conn rate": c.MaxConnRate,
		"max conns per IP": c.MaxConnsPerIP, "max conn rate per IP": c.MaxConnRatePerIP} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative", name, v))
		}
	}
	if path, unix := AdminSocketPath(c.Admin); unix {
		switch {
		case path == "":
			errs = append(errs, fmt.Errorf("admin address %q: the unix socket's path is empty", c.Admin))
		case strings.HasPrefix(path, "@"):
			errs = append(errs, fmt.Errorf("admin address %q: abstract unix sockets are not supported; give a file path", c.Admin))
		}
	} else if c.Admin != "" {
		if _, _, err := net.SplitHostPort(c.Admin); err != nil {
			errs = append(errs, fmt.Errorf("admin address %q: %w", c.Admin, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
