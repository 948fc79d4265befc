package backend

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/websocket"
)

// Health check defaults (--health-*).
const (
	DefaultHealthInterval = 5 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
)

// HealthConfig configures active health checks and the rise and fall
// counts. Zero fields take the defaults.
type HealthConfig struct {
	// Check is "" (passive only), "tcp", "http:PATH" or "ws:PATH". With
	// "", a backend marked down by connect failures is probed with a TCP
	// connect every Interval until it rises again.
	Check string
	// Interval is the time between two checks of a backend.
	Interval time.Duration
	// Timeout bounds one check.
	Timeout time.Duration
	// Rise is how many checks in a row must pass to mark a down backend up.
	Rise int
	// Fall is how many checks or connects in a row must fail to mark an
	// up backend down.
	Fall int
}

// Validate fills in defaults and checks every field.
func (h *HealthConfig) Validate() error {
	if h.Interval == 0 {
		h.Interval = DefaultHealthInterval
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultHealthTimeout
	}
	if h.Rise == 0 {
		h.Rise = DefaultHealthRise
	}
	if h.Fall == 0 {
		h.Fall = DefaultHealthFall
	}
	var errs []error
	if _, _, err := parseCheck(h.Check); err != nil {
		errs = append(errs, err)
	}
	if h.Interval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("health interval %v: must be at least 10ms", h.Interval))
	}
	if h.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("health timeout %v: must be positive", h.Timeout))
	}
	if h.Rise < 1 || h.Rise > 1000 {
		errs = append(errs, fmt.Errorf("health rise %d: must be between 1 and 1000", h.Rise))
	}
	if h.Fall < 1 || h.Fall > 1000 {
		errs = append(errs, fmt.Errorf("health fall %d: must be between 1 and 1000", h.Fall))
	}
	return errors.Join(errs...)
}

// parseCheck splits "tcp", "http:PATH" or "ws:PATH".
func parseCheck(s string) (kind, path string, err error) {
	if s == "" || s == "tcp" {
		return s, "", nil
	}
	kind, path, _ = strings.Cut(s, ":")
	if (kind != "http" && kind != "ws") || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t") {
		return "", "", fmt.Errorf("health check %q: want tcp, http:/PATH or ws:/PATH", s)
	}
	return kind, path, nil
}

// startChecker runs b's health checks, with the pool's health
// configuration of now, until b.stop (as it is now) is closed. The pool's
// mutex is held.
func (p *Pool) startChecker(b *Backend) {
	p.wg.Add(1)
	go p.checker(b, b.stop, p.health)
}

// checker is one backend's health check loop; the first check runs at
// once. Without an active check it only probes while the backend is down.
func (p *Pool) checker(b *Backend, stop <-chan struct{}, hc HealthConfig) {
	defer p.wg.Done()
	kind, path, _ := parseCheck(hc.Check)
	t := time.NewTicker(hc.Interval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	for first := true; ; first = false {
		if !first {
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
		if kind == "" {
			// Passive only: probe a backend that connect failures
			// took down, so that it can come back.
			b.mu.Lock()
			down := !b.healthy
			b.mu.Unlock()
			if !down {
				continue
			}
		}
		err := Check(ctx, kind, path, b.addr, hc.Timeout)
		if ctx.Err() != nil {
			return
		}
		p.observe(b, err, "health_check")
	}
}

// Check runs one health check of addr: "tcp" (or "") connects; "http"
// sends GET path and wants a 2xx or 3xx answer; "ws" runs a WebSocket
// opening handshake on path and wants a valid 101 (Sec-WebSocket-Accept
// checked), then closes with a close frame.
func Check(ctx context.Context, kind, path, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	defer c.Close()
	if kind == "" || kind == "tcp" {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req := &http1.RequestHead{Method: "GET", Target: path, Major: 1, Minor: 1, Header: http1.Header{
		{Name: "Host", Value: addr},
		{Name: "User-Agent", Value: "wsplice-health-check"},
	}}
	var key string
	if kind == "ws" {
		var nonce [16]byte
		_, _ = rand.Read(nonce[:])
		key = base64.StdEncoding.EncodeToString(nonce[:])
		req.Header = append(req.Header,
			http1.Field{Name: "Connection", Value: "Upgrade"},
			http1.Field{Name: "Upgrade", Value: "websocket"},
			http1.Field{Name: "Sec-WebSocket-Version", Value: "13"},
			http1.Field{Name: "Sec-WebSocket-Key", Value: key})
	} else {
		req.Header = append(req.Header, http1.Field{Name: "Connection", Value: "close"})
	}
	if _, err := c.Write(req.Append(nil)); err != nil {
		return fmt.Errorf("health check: write request: %w", err)
	}
	resp, err := http1.ReadResponseHead(bufio.NewReader(c), 64<<10)
	if err != nil {
		return fmt.Errorf("health check: read response: %w", err)
	}
	if kind == "http" {
		if resp.Status < 200 || resp.Status >= 400 {
			return fmt.Errorf("health check: GET %s: status %d", path, resp.Status)
		}
		return nil
	}
	if resp.Status != 101 {
		return fmt.Errorf("health check: WebSocket handshake on %s: status %d", path, resp.Status)
	}
	if err := websocket.CheckResponse(resp, key); err != nil {
		return fmt.Errorf("health check: WebSocket handshake on %s: %w", path, err)
	}
	// A masked close frame, status 1000, so the backend sees a clean end.
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame := []byte{0x88, 0x82, mask[0], mask[1], mask[2], mask[3], 0x03 ^ mask[0], 0xe8 ^ mask[1]}
	_, _ = c.Write(frame)
	return nil
}
