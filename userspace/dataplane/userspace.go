package dataplane

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// spliceReadBuffer caps SO_RCVBUF of both proxy sockets once spliced (the
// kernel doubles it). Without a cap, receive autotuning (tcp_rmem, up to
// 32 MiB on the machines here) lets a backend park tens of MiB per pair in
// the proxy's receive queue while its client reads nothing: memory the
// daemon holds with no backpressure reaching the sender. With the cap the
// window closes early and the sender stalls; send buffers still autotune.
const spliceReadBuffer = 256 << 10

// spliceChunk bounds one ReadFrom call so that byte counters move while a
// long-lived pair is busy, not only when it ends.
const spliceChunk = 4 << 20

// Userspace is the data path that copies spliced pairs in this process,
// with splice(2) under net.TCPConn.ReadFrom. It needs no privileges.
type Userspace struct {
	log zerolog.Logger

	mu     sync.Mutex
	closed bool
	pairs  map[*pair]struct{}
	wg     sync.WaitGroup

	spliced      atomic.Int64
	splicedTotal atomic.Uint64
	bytes        atomic.Uint64
}

// NewUserspace returns the userspace data path.
func NewUserspace(log zerolog.Logger) Dataplane {
	return &Userspace{log: log, pairs: make(map[*pair]struct{})}
}

// Name implements Dataplane.
func (u *Userspace) Name() string { return "userspace" }

// Adopt implements Dataplane. Userspace needs no per-socket setup.
func (u *Userspace) Adopt(c *net.TCPConn) (*Conn, error) {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return NewConn(c), nil
}

// Release implements Dataplane.
func (u *Userspace) Release(c *Conn) { _ = c.Close() }

// Stats implements Dataplane.
func (u *Userspace) Stats() Stats {
	return Stats{
		Dataplane:      u.Name(),
		Spliced:        u.spliced.Load(),
		SplicedTotal:   u.splicedTotal.Load(),
		MapEntries:     -1,
		BytesUserspace: u.bytes.Load(),
	}
}

// pair is one spliced client/backend pair.
type pair struct {
	client, backend *Conn
	abortOnce       sync.Once
	left            atomic.Int32 // directions still copying
}

// Splice implements Dataplane: one copier per direction; a FIN is passed
// on as a half-close, a reset as a reset, and both sockets close when both
// directions are done.
func (u *Userspace) Splice(client, backend *Conn) error {
	p := &pair{client: client, backend: backend}
	p.left.Store(2)
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		_ = client.Close()
		_ = backend.Close()
		return ErrClosed
	}
	u.pairs[p] = struct{}{}
	u.wg.Add(2)
	u.mu.Unlock()
	u.spliced.Add(1)
	u.splicedTotal.Add(1)
	_ = client.SetReadBuffer(spliceReadBuffer)
	_ = backend.SetReadBuffer(spliceReadBuffer)
	go u.copier(p, backend, client, "client_to_backend")
	go u.copier(p, client, backend, "backend_to_client")
	return nil
}

// copier moves src → dst until src ends. Named so stacks read well.
func (u *Userspace) copier(p *pair, dst, src *Conn, dir string) {
	defer u.wg.Done()
	var total int64
	var err error
	for {
		// ReadFrom with a *net.TCPConn source (behind a LimitedReader)
		// takes the splice(2) path; the Conn wrappers are bypassed, so
		// count here.
		var n int64
		n, err = dst.TCPConn.ReadFrom(&io.LimitedReader{R: src.TCPConn, N: spliceChunk})
		total += n
		src.read.Add(n)
		dst.written.Add(n)
		u.bytes.Add(uint64(n))
		if err != nil || n < spliceChunk {
			break
		}
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		// A reset on either side (ECONNRESET reading, EPIPE writing):
		// pass it on as a reset, not a clean close that would make a
		// truncated stream look complete.
		if u.log.Debug().Enabled() {
			u.log.Debug().Err(err).Str("direction", dir).Int64("bytes", total).Msg("splice aborted")
		}
		p.abort()
	} else if err == nil {
		// EOF: pass the FIN on; the other direction keeps flowing.
		_ = dst.CloseWrite()
	}
	if p.left.Add(-1) == 0 {
		_ = p.client.Close()
		_ = p.backend.Close()
		u.mu.Lock()
		delete(u.pairs, p)
		u.mu.Unlock()
		u.spliced.Add(-1)
	}
}

// abort resets both sockets; the copiers blocked on them return.
func (p *pair) abort() {
	p.abortOnce.Do(func() {
		_ = p.client.SetLinger(0)
		_ = p.backend.SetLinger(0)
		_ = p.client.Close()
		_ = p.backend.Close()
	})
}

// Close implements Dataplane: it closes every spliced pair and waits for
// the copiers.
func (u *Userspace) Close() error {
	u.mu.Lock()
	u.closed = true
	for p := range u.pairs {
		_ = p.client.Close()
		_ = p.backend.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
	return nil
}
