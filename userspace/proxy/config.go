package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
)

// Defaults for Config fields left zero.
const (
	DefaultListen          = ":8080"
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultDialTimeout     = 5 * time.Second
	DefaultShutdownTimeout = 5 * time.Second
)

// ErrInvalidConfig wraps every reason Validate rejects a Config.
var ErrInvalidConfig = errors.New("invalid config")

// Config is the proxy's configuration. Zero durations and sizes take the
// defaults above when Validate runs.
type Config struct {
	// Listen holds the addresses to accept clients on.
	Listen []string
	// Backends holds "host:port" of each backend. Empty is allowed:
	// every request is then answered 503.
	Backends []string
	// HeaderTimeout bounds reading each request head, and how long a
	// keep-alive connection may sit idle.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request head; larger heads get 431.
	MaxHeaderBytes int
	// DialTimeout bounds connecting to a backend, and waiting for its
	// answer to a WebSocket handshake.
	DialTimeout time.Duration
	// ShutdownTimeout is how long handshakes and requests in flight may
	// run on after shutdown starts.
	ShutdownTimeout time.Duration
	// Admin is the address of the admin HTTP server ("" = none).
	Admin string
}

// Validate fills in defaults and checks every field.
func (c *Config) Validate() error {
	if len(c.Listen) == 0 {
		c.Listen = []string{DefaultListen}
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
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	var errs []error
	for _, l := range c.Listen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			errs = append(errs, fmt.Errorf("listen address %q: %w", l, err))
		}
	}
	for _, b := range c.Backends {
		if err := backend.CheckAddr(b); err != nil {
			errs = append(errs, err)
		}
	}
	if c.HeaderTimeout < 0 {
		errs = append(errs, fmt.Errorf("header timeout %v: must be positive", c.HeaderTimeout))
	}
	if c.MaxHeaderBytes < 256 || c.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("max header bytes %d: must be between 256 and 1048576", c.MaxHeaderBytes))
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("dial timeout %v: must be positive", c.DialTimeout))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("shutdown timeout %v: must be positive", c.ShutdownTimeout))
	}
	if c.Admin != "" {
		if _, _, err := net.SplitHostPort(c.Admin); err != nil {
			errs = append(errs, fmt.Errorf("admin address %q: %w", c.Admin, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
