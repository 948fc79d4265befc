package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/ktls"
)

// spliceReadBuffer caps SO_RCVBUF of both proxy sockets once spliced (the
// kernel doubles it). Without a cap, receive autotuning (tcp_rmem, up to
// 32 MiB on the machines here) lets a backend park tens of MiB per pair in
// the proxy's receive queue while its client reads nothing: memory the
// daemon holds with no backpressure reaching the sender. With the cap the
// window closes early and the sender stalls; send buffers still autotune.
const spliceReadBuffer = 256 << 10

// spliceChunk bounds one ReadFrom call.
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
	idleClosed   atomic.Uint64
	idleTimeout  atomic.Int64 // time.Duration for pairs spliced from now on
	idle         *IdleQueue
}

// SetIdleTimeout implements Dataplane.
func (u *Userspace) SetIdleTimeout(d time.Duration) { u.idleTimeout.Store(int64(d)) }

// NewUserspace returns the userspace data path.
func NewUserspace(log zerolog.Logger) Dataplane {
	return &Userspace{log: log, pairs: make(map[*pair]struct{}), idle: NewIdleQueue()}
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
		IdleClosed:     u.idleClosed.Load(),
	}
}

// pair is one spliced client/backend pair.
type pair struct {
	u               *Userspace
	client, backend *Conn
	owner           Owner // of the client Conn, or nil
	abortOnce       sync.Once
	left            atomic.Int32 // directions still copying
	// Bytes moved since Splice, each way.
	toBackend, toClient atomic.Uint64
	// lastActive is when a byte last moved, in nanoseconds of the
	// monotonic clock (monoNow); the idle queue watches it.
	lastActive atomic.Int64
	idle       IdleEntry
	// writing counts copiers holding bytes read and not yet written (a
	// write waiting on a peer that does not read): closing then loses
	// them, so the idle timeout resets instead of sending FIN.
	writing atomic.Int32
}

// moved counts n bytes moved towards dst.
func (p *pair) moved(dst *Conn, n int64) {
	if n <= 0 {
		return
	}
	if dst == p.backend {
		p.toBackend.Add(uint64(n))
	} else {
		p.toClient.Add(uint64(n))
	}
	p.touch()
}

// Counts implements Pair.
func (p *pair) Counts() PairCounts {
	return PairCounts{ToBackend: p.toBackend.Load(), ToClient: p.toClient.Load()}
}

// Close implements Pair.
func (p *pair) Close() { p.closeBoth() }

// IdleEntry, IdleFor and IdleExpire implement Idler.
func (p *pair) IdleEntry() *IdleEntry { return &p.idle }

func (p *pair) IdleFor() (time.Duration, bool) {
	return time.Duration(monoNow() - p.lastActive.Load()), p.left.Load() > 0
}

func (p *pair) IdleExpire(idle time.Duration) {
	lose := p.writing.Load() > 0
	if p.u.log.Debug().Enabled() {
		p.u.log.Debug().Dur("idle", idle).Bool("reset", lose).Msg("idle timeout: closing spliced pair")
	}
	p.u.idleClosed.Add(1)
	if lose {
		// A FIN after a cut stream would pass for a clean end.
		p.abort()
		return
	}
	p.closeBoth()
}

// Delivered implements Idler.
func (p *pair) Delivered() uint64 {
	return connProgress(p.client.TCPConn) + connProgress(p.backend.TCPConn)
}

// touch records activity on p.
func (p *pair) touch() { p.lastActive.Store(monoNow()) }

// clockBase anchors monoNow.
var clockBase = time.Now()

// monoNow is the monotonic clock in nanoseconds.
func monoNow() int64 { return int64(time.Since(clockBase)) }

// Splice implements Dataplane: one copier per direction; a FIN is passed
// on as a half-close, a reset as a reset, and both sockets close when both
// directions are done.
func (u *Userspace) Splice(client, backend *Conn, toClient []byte) error {
	if _, err := client.Write(toClient); err != nil {
		// Reset both: the backend may have the client's first bytes
		// and must not take the close for a clean end of them.
		_ = client.SetLinger(0)
		_ = backend.SetLinger(0)
		_ = client.Close()
		_ = backend.Close()
		return fmt.Errorf("write to client: %w", err)
	}
	_ = client.SetWriteDeadline(time.Time{})
	p := &pair{u: u, client: client, backend: backend, owner: client.Owner}
	p.left.Store(2)
	p.touch()
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
	if p.owner != nil {
		p.owner.PairStarted(u.Name(), p)
	}
	u.spliced.Add(1)
	u.splicedTotal.Add(1)
	_ = client.SetReadBuffer(spliceReadBuffer)
	_ = backend.SetReadBuffer(spliceReadBuffer)
	u.idle.Add(p, time.Duration(u.idleTimeout.Load()))
	if client.TLS != nil || backend.TLS != nil {
		// The socket holds ciphertext: bytes go through the TLS session.
		go u.tlsCopier(p, backend, client, "client_to_backend")
		go u.tlsCopier(p, client, backend, "backend_to_client")
		return nil
	}
	go u.copier(p, backend, client, "client_to_backend")
	go u.copier(p, client, backend, "backend_to_client")
	return nil
}

// tlsBufs holds tlsCopier buffers: one TLS record's worth of plaintext.
var tlsBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// tlsCopier moves src → dst through Conn.Read and Conn.Write, which go
// through the TLS session of either side; it ends like copier: EOF (after
// the client's close_notify, or a plain FIN) is passed on as a half-close,
// an error as a reset.
func (u *Userspace) tlsCopier(p *pair, dst, src *Conn, dir string) {
	defer u.wg.Done()
	bp := tlsBufs.Get().(*[]byte)
	defer tlsBufs.Put(bp)
	buf := *bp
	var total int64
	var err error
	for {
		var n int
		n, err = src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
			total += int64(n)
			u.bytes.Add(uint64(n))
			p.moved(dst, int64(n))
		}
		if err != nil {
			break
		}
	}
	u.finish(p, dst, err, total, dir)
}

// copier moves src → dst until src ends. Named so stacks read well.
//
// Small rounds: wait in the poller with no buffer held, then read(2) what
// is queued into a pooled buffer and write(2) it; for the small messages
// most WebSocket traffic is made of, that is three system calls a message
// (the read that finds nothing, the read, the write), where a splice round
// takes five (a peek that finds nothing, the peek, SIOCINQ, two splice(2)
// calls through a pipe). A read that fills the buffer means more is
// queued: the direction switches to splice rounds, which move exactly what
// is queued with ReadFrom (the splice(2) path for a *net.TCPConn source
// behind a LimitedReader) and avoid the copies for bulk, until a round
// moves no more than a buffer's worth. Either way each round moves what is
// queued, so the byte counters are exact while the pair lives. The Conn
// wrappers are bypassed, so the counting is done here.
func (u *Userspace) copier(p *pair, dst, src *Conn, dir string) {
	defer u.wg.Done()
	var total int64
	var err error
	raw, err := src.TCPConn.SyscallConn()
	if src.Cookie != 0 {
		// The socket is still in a sockmap (a pair the kernel path
		// handed over): its bytes wait in the psock queue, which only
		// recvmsg reads. splice(2) and SIOCINQ see the TCP queue, which
		// the verdict has already emptied, and would wait forever.
		total, err = copyRead(dst, src, &u.bytes, p)
		u.finish(p, dst, err, total, dir)
		return
	}
	// Kernel TLS sockets keep splice rounds only: their non-data records
	// are recognised by the errors splice returns (ktlsRecordEnd).
	bulk := src.KTLS || dst.KTLS
	count := func(n int64) {
		total += n
		src.read.Add(n)
		dst.written.Add(n)
		u.bytes.Add(uint64(n))
		p.moved(dst, n)
	}
	for err == nil {
		if !bulk {
			var n int
			var bp *[]byte
			if bp, n, err = readSome(raw); n > 0 {
				p.writing.Add(1)
				m, werr := dst.TCPConn.Write((*bp)[:n])
				p.writing.Add(-1)
				count(int64(m))
				if werr != nil && err == nil {
					err = werr
				}
			}
			if bp != nil {
				smallBufs.Put(bp)
			}
			if n == 0 && err == nil {
				break // EOF
			}
			bulk = n == smallCopy
			continue
		}
		var avail int
		if avail, err = queued(raw); err != nil || avail == 0 {
			break
		}
		if src.KTLS {
			// SIOCINQ counts ciphertext still in TCP, not plaintext
			// the TLS layer already holds (it may say 0 then): take
			// up to a record's worth, which splice returns as soon as
			// any of it is there.
			avail = max(avail, 16<<10)
		}
		var n int64
		p.writing.Add(1)
		n, err = dst.TCPConn.ReadFrom(&io.LimitedReader{R: src.TCPConn, N: int64(min(avail, spliceChunk))})
		p.writing.Add(-1)
		count(n)
		if n == 0 && err == nil {
			break // EOF
		}
		bulk = src.KTLS || dst.KTLS || n > smallCopy
	}
	if err != nil && src.KTLS && !errors.Is(err, net.ErrClosed) {
		err = u.ktlsRecordEnd(p, src, err, dir)
	}
	u.finish(p, dst, err, total, dir)
}

// smallCopy is the buffer of one small copier round.
const smallCopy = 16 << 10

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallCopy); return &b }}

// readSome waits until the socket is readable and reads what it holds, up
// to smallCopy bytes, into a buffer from smallBufs that the caller puts
// back (nil if nothing was read). No buffer is held while waiting: an idle
// pair costs its two goroutines and nothing more. It returns 0 and no
// error at EOF, and the error of a reset socket.
func readSome(raw syscall.RawConn) (*[]byte, int, error) {
	var bp *[]byte
	var n int
	var opErr error
	err := raw.Read(func(fd uintptr) bool {
		if bp == nil {
			bp = smallBufs.Get().(*[]byte)
		}
		m, e := unix.Read(int(fd), *bp)
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			smallBufs.Put(bp)
			bp = nil
			return false // not readable yet: wait in the poller
		case e != nil:
			opErr = os.NewSyscallError("read", e)
			return true
		}
		n = m
		return true
	})
	if err == nil {
		err = opErr
	}
	if n == 0 && bp != nil {
		smallBufs.Put(bp)
		bp = nil
	}
	return bp, n, err
}

// ktlsRecordEnd looks at why a read from a kernel TLS socket failed. The
// kernel refuses to return a record that is not application data through
// read or splice (EIO, EINVAL): it is taken here with its type. A
// close_notify alert is the end of the client's stream (nil: a FIN is
// passed on); any other record (another alert, a KeyUpdate the kernel
// cannot follow) closes both sides with a FIN, never passing the record's
// bytes on. Other errors are returned as they are.
func (u *Userspace) ktlsRecordEnd(p *pair, src *Conn, err error, dir string) error {
	typ, body, rerr := ktls.ReadRecord(src.TCPConn)
	if rerr != nil {
		return err
	}
	if ktls.IsCloseNotify(typ, body) {
		return nil
	}
	if u.log.Debug().Enabled() {
		u.log.Debug().Uint8("record_type", typ).Hex("record", body[:min(len(body), 8)]).Str("direction", dir).
			Msg("kernel TLS: non-data record after splicing, closing the pair")
	}
	p.closeBoth()
	return net.ErrClosed
}

// finish ends one direction of p: err nil is EOF, passed on as a FIN; a
// closed connection is left alone; any other error resets both sides. The
// last direction to finish closes both sockets.
func (u *Userspace) finish(p *pair, dst *Conn, err error, total int64, dir string) {
	if err == io.EOF {
		err = nil
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
		u.idle.Remove(p)
		// Through TLS where there is a session: a closeClean still
		// sending its close_notify must not lose it to a bare close.
		closeConn(p.client)
		closeConn(p.backend)
		u.mu.Lock()
		delete(u.pairs, p)
		u.mu.Unlock()
		u.spliced.Add(-1)
		if p.owner != nil {
			p.owner.PairEnded(p.Counts())
		}
	}
}

// queued waits until the socket is readable and returns how many bytes
// its receive queue holds: 0 at EOF, an error if it was reset.
func queued(raw syscall.RawConn) (int, error) {
	var n int
	var opErr error
	err := raw.Read(func(fd uintptr) bool {
		var b [1]byte
		m, _, e := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			return false // not readable yet: wait in the poller
		case e != nil:
			opErr = os.NewSyscallError("recvfrom", e)
			return true
		case m == 0:
			n = 0 // EOF
			return true
		}
		if n, e = unix.IoctlGetInt(int(fd), unix.SIOCINQ); e != nil || n < 1 {
			n = 1
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return n, opErr
}

// closeBoth closes both sockets with a FIN; the copiers blocked on them
// return.
func (p *pair) closeBoth() {
	p.abortOnce.Do(func() {
		closeClean(p.client)
		closeClean(p.backend)
	})
}

// closeClean closes c with a FIN, after a close_notify over TLS, so that
// the peer can tell this close (an idle timeout, a drain, shutdown) from
// a truncation. The close_notify goes in the background, bounded by
// closeNotifyWait: a peer that does not read could otherwise hold it up
// for crypto/tls's own 5 s; a copier blocked reading c returns once the
// socket is closed.
func closeClean(c *Conn) {
	if c.TLS != nil {
		go closeConn(c)
		return
	}
	closeConn(c)
}

// closeNotifyWait bounds the write of a close_notify.
const closeNotifyWait = time.Second

// closeConn closes c; over TLS after its close_notify (unless sent
// already), the socket closed under the write past closeNotifyWait.
func closeConn(c *Conn) {
	if c.TLS == nil {
		_ = c.Close()
		return
	}
	t := time.AfterFunc(closeNotifyWait, func() { _ = c.TCPConn.Close() })
	defer t.Stop()
	_ = c.TLS.Close()
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

// ClosePairs implements Dataplane.
func (u *Userspace) ClosePairs() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for p := range u.pairs {
		p.closeBoth()
	}
}

// Close implements Dataplane: it closes every spliced pair and waits for
// the copiers.
func (u *Userspace) Close() error {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	u.ClosePairs()
	u.wg.Wait()
	u.idle.Stop()
	return nil
}

// copyRead moves src to dst with read(2)/write(2) through a buffer,
// counting as it goes; it returns nil at EOF.
func copyRead(dst, src *Conn, moved *atomic.Uint64, p *pair) (int64, error) {
	buf := make([]byte, 64<<10)
	var total int64
	for {
		n, err := src.TCPConn.Read(buf)
		if n > 0 {
			src.read.Add(int64(n))
			m, werr := dst.TCPConn.Write(buf[:n])
			dst.written.Add(int64(m))
			moved.Add(uint64(m))
			p.moved(dst, int64(m))
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
