package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// At the process's fd limit accept fails with EMFILE and the client waits
// in the listen queue, with no answer, until it gives up. The reserve is
// one fd held open for that moment: released, it lets a listener accept
// the waiting client, answer 503 (HTTP) or close (TLS and L4), and close
// it again, so every client hears at once that the proxy is full.

// reasonFDs is the wsplice_limit_rejections_total reason for a client
// turned away at the fd limit.
const reasonFDs = "fd_limit"

// fdLimitAnswer is what an HTTP client gets at the fd limit.
var fdLimitAnswer = errorAnswer(503, "proxy out of file descriptors", retryLater)

type fdReserve struct {
	mu     sync.Mutex
	f      *os.File
	closed bool
	logged atomic.Int64 // unix seconds of the last warning
}

// fill opens the reserve fd if it is not held (best effort).
func (r *fdReserve) fill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil && !r.closed {
		r.f, _ = os.Open(os.DevNull)
	}
}

// held tells whether the reserve fd is open.
func (r *fdReserve) held() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f != nil
}

// close releases the reserve for good (shutdown).
func (r *fdReserve) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

// reserveTick is how often keepReserve takes the reserve back when a
// shed or lend could not (another thread took the fd it freed).
const reserveTick = 250 * time.Millisecond

// keepReserve takes the reserve back as soon as an fd is free again:
// without it, clients at the limit would wait unanswered again.
func (p *Proxy) keepReserve(ctx context.Context) {
	t := time.NewTicker(reserveTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.fds.fill()
		}
	}
}

// shed runs accept with the reserve fd released, then takes it back. It
// reports false, without running accept, when there was none to release
// (it could not be taken back after the last shed: the fd that client's
// close freed went elsewhere); the caller then waits and retries.
func (r *fdReserve) shed(accept func()) bool { return r.release(true, accept) }

// lend runs f with the reserve fd released, for a step that needs one fd
// more for a moment (net.FileConn's duplicate), then takes it back.
func (r *fdReserve) lend(f func()) { r.release(false, f) }

// release runs f with the reserve fd closed, then opens it again; with
// need, only if there was one to close (or one could be opened: an fd
// was free after all), and it reports whether f ran.
func (r *fdReserve) release(need bool, f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil && need {
		if r.f, _ = os.Open(os.DevNull); r.f == nil {
			return false
		}
	}
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
	f()
	if !r.closed {
		r.f, _ = os.Open(os.DevNull)
	}
	return true
}

// fdExhausted tells whether an accept failed for want of fds.
func fdExhausted(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

// turnAwayFD answers a client accepted at the fd limit (a bare fd) and
// closes it: a 503 for HTTP listeners, a bare close for TLS and L4 ones.
// The request's first bytes are read first, when they are there, so that
// the close sends FIN rather than RST (which could discard the 503).
func (p *Proxy) turnAwayFD(fd int, kind listenerKind, listener string) {
	if kind == kindHTTP {
		var buf [4096]byte
		_, _ = unix.Read(fd, buf[:])
		_, _ = unix.Write(fd, fdLimitAnswer)
	}
	_ = unix.Close(fd)
	p.turnedAway(listener)
}

// turnedAway counts a client turned away at the fd limit, and warns at
// most once a second.
func (p *Proxy) turnedAway(listener string) {
	p.metrics.accepted.WithLabelValues(listener).Inc()
	p.metrics.rejections.WithLabelValues(reasonFDs).Inc()
	if now := time.Now().Unix(); p.fds.logged.Swap(now) != now {
		p.log.Warn().Str("listener", listener).Msg("at the fd limit: new clients are turned away (503 or close) until connections close")
	}
}

// reasonLocal is the wsplice_limit_rejections_total reason for a client
// refused because a backend connect failed for want of memory or a local
// port (the fd limit counts as reasonFDs).
const reasonLocal = "local_resources"

// refusedLocal counts a client answered 503 because its backend connect
// failed for want of a local resource (localResourceError), and warns at
// most once a second (with the fd limit's warnings).
func (p *Proxy) refusedLocal(err error) {
	reason := reasonLocal
	if fdExhausted(err) {
		reason = reasonFDs
	}
	p.metrics.rejections.WithLabelValues(reason).Inc()
	if now := time.Now().Unix(); p.fds.logged.Swap(now) != now {
		p.log.Warn().Err(err).Msg("backend connect failed for want of a local resource: clients get 503 until some is free")
	}
}

// listenerReadable tells whether a client is waiting in lfd's accept
// queue, waiting at most wait for one (accept4 fails with EMFILE at the
// limit even when none is, so it cannot tell).
func listenerReadable(lfd int, wait time.Duration) bool {
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	n, _ := unix.Poll(pfd, int(wait/time.Millisecond))
	return n > 0
}

// shedRaw turns away the client waiting on a raw listener (read: its
// RawConn's Read) at the fd limit; the caller has seen accept fail with
// EMFILE while a client was waiting. One attempt, never blocking: with
// the reserve released nothing may wait for the next client. It reports
// false when there was no reserve to release.
func (p *Proxy) shedRaw(read func(func(uintptr) bool) error, kind listenerKind, listener string) bool {
	return p.fds.shed(func() {
		fd := -1
		_ = read(func(lfd uintptr) bool {
			fd, _, _ = accept4(int(lfd))
			return true
		})
		if fd >= 0 {
			p.turnAwayFD(fd, kind, listener)
		}
	})
}

// fdLimitAccept is the accept loop's answer to EMFILE on a Go listener:
// it waits (at most fdLimitWait, the reserve held) until a client is
// waiting, then accepts it if fds were freed meanwhile (returned to be
// served) or turns it away (nil). ok is false when the listener failed
// (closed). A listener's RawConn cannot wait in Go's poller (its Read is
// EINVAL, see rawListener): poll(2) waits instead, at the limit only.
func (p *Proxy) fdLimitAccept(ln *net.TCPListener, kind listenerKind, listener string) (c *net.TCPConn, ok bool) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, false
	}
	fd := -1
	var aerr error
	if err := rc.Control(func(lfd uintptr) {
		if listenerReadable(int(lfd), fdLimitWait) {
			fd, _, aerr = accept4(int(lfd))
		}
	}); err != nil {
		return nil, false
	}
	switch {
	case fd >= 0:
		// Fds were freed: serve it.
		if tc, err := dataplane.FileConn(fd); err == nil {
			return tc, true
		}
		// The duplicate FileConn makes did not fit: FileConn closed fd.
		return nil, true
	case fdExhausted(aerr):
		once := func(f func(uintptr) bool) error { return rc.Control(func(lfd uintptr) { f(lfd) }) }
		if !p.shedRaw(once, kind, listener) {
			time.Sleep(5 * time.Millisecond) // no reserve: wait for fds, as before
		}
	}
	return nil, true
}

// fdLimitWait bounds one wait of fdLimitAccept for a client.
const fdLimitWait = 100 * time.Millisecond
