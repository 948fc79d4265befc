package loader

import (
	"errors"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// kickHeld marks a pending event in pair.pending (event masks never use
// this bit).
const kickHeld = 1 << 31

// errPairClosed stops a drain whose pair was closed under it.
var errPairClosed = errors.New("pair closed")

// sideError ends a drain's wait: one of the pair's sockets failed (a
// reset). Epoll does not report it: a socket's one-shot registration is
// disarmed while a drain owns it.
type sideError struct {
	sk  *sock
	err error
}

func (e *sideError) Error() string { return "spliced socket failed: " + e.err.Error() }
func (e *sideError) Unwrap() error { return e.err }

// waitCheck is how long a drain waits on a peer before it checks both
// sockets for an error, and then between two checks.
const waitCheck = 100 * time.Millisecond

// failedSide returns whichever of a and b has a pending socket error (nil
// for none). Reading SO_ERROR clears it: the caller resets the pair.
func failedSide(a, b *sock) (*sock, error) {
	for _, sk := range [...]*sock{a, b} {
		if sk == nil {
			continue
		}
		if err := sockError(sk.fd); err != nil {
			return sk, err
		}
	}
	return nil, nil
}

// failWait ends a drain whose wait or write on dst failed: nothing to do
// for a pair already closed; a failed socket has its peer reset; any
// other error resets dst's peer.
func (s *Splicer) failWait(p *pair, dst *sock, err error) {
	var se *sideError
	switch {
	case errors.Is(err, errPairClosed):
	case errors.As(err, &se):
		s.abort(p, se.sk)
	case !p.isClosed():
		s.abort(p, dst)
	}
}

// kick reacts to an event on a spliced socket: a pass notice from the
// verdict (events == 0), or FIN/error/hang-up from epoll. At most one
// drain goroutine reads a socket at a time.
func (s *Splicer) kick(sk *sock, events uint32) {
	p := sk.pair
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if !p.ready {
		for i, o := range p.socks {
			if o == sk {
				p.pending[i] |= events | kickHeld
			}
		}
		p.mu.Unlock()
		return
	}
	if sk.eof {
		// FIN already passed on: only an error (RST) or the end of the
		// other direction matter now. Syscalls on fds happen under p.mu
		// while the pair is open, so they never hit a reused fd number.
		failed := events&unix.EPOLLERR != 0 || sockError(sk.fd) != nil
		both := sk.peer.eof
		if !failed && !both {
			s.rearm(sk, true)
		}
		p.mu.Unlock()
		switch {
		case failed:
			s.abort(p, sk)
		case both:
			s.closePair(p, false)
		}
		return
	}
	if sk.draining {
		sk.again = true
		p.mu.Unlock()
		return
	}
	sk.draining = true
	p.users++
	p.mu.Unlock()
	// A FIN (from epoll) on a direction the kernel carried: in the
	// common case every byte before it is already in the peer, and the
	// FIN is passed on here, without a goroutine and its wake-ups.
	// (EPOLLHUP comes with it once the peer is shut down too; an error
	// goes to the drain, which resets.)
	fin := events&unix.EPOLLRDHUP != 0 && events&unix.EPOLLERR == 0
	if fin && !sk.userMode && s.finishNow(sk) {
		s.leave(p)
		return
	}
	s.drains.Add(1)
	go s.drain(sk)
}

// drain is the slow path of one direction, src to src.peer: it forwards
// the bytes the verdict passed to src's own receive queue (the peer was
// full, or userspace still had passed bytes), then hands the direction
// back to the kernel; on FIN it propagates the half-close once every byte
// is in the peer; on error it propagates RST.
//
// The first time a direction needs the slow path it stays in userspace
// for good: the verdict passes every later byte and epoll (EPOLLIN) wakes
// a drain when bytes arrive. Handing a busy stream back to the kernel
// (switching between redirect and pass) reordered or duplicated bytes in
// rare runs of the stress tests on 6.18, which no design here could rule
// out; a one-way switch keeps one simple order: every byte redirected
// before the first pass is in the peer before userspace writes anything.
// Each round reads the passed bytes (at most what the verdict counted),
// writes them once the peer holds every redirected byte, and publishes
// them as consumed.
//
// One exception keeps the common case in the kernel: a direction that has
// not redirected a byte yet (bytes the backend sent between its 101 and
// the switch of its socket, typically its answer to the client's first
// frame) is handed back once userspace has forwarded what was passed.
// That is the pass-to-redirect switch Splice makes on every socket, with
// nothing redirected in flight, not the redirect-pass-redirect round trip
// that proved unsafe.
//
// A drain woken by FIN or an error does not switch the direction: it
// switches only when it finds passed bytes.
func (s *Splicer) drain(src *sock) {
	p := src.pair
	defer s.drains.Done()
	defer s.leave(p)
	var bp *[]byte
	defer func() {
		if bp != nil {
			putBuf(bp)
		}
	}()
	dst := src.peer
	stuck := 0
	handBack := false // forwarding bytes passed before the first redirect
	for {
		st, err := s.stats(src.cookie)
		if err != nil {
			s.log.Error().Err(err).Msg("read pass counters")
			s.abort(p, src)
			return
		}
		want := st.Passed - src.consumed
		if want > 0 && !src.userMode {
			if st.Redirected == 0 {
				// The verdict passes while consumed lags passed, so
				// nothing can be redirected before the hand-back.
				handBack = true
			} else {
				// The first time this direction needs userspace
				// after redirecting, it stays there (see
				// sock.userMode): the verdict passes everything.
				handBack = false
				src.userMode = true
				if err := s.putCtl(src); err != nil {
					s.log.Error().Err(err).Msg("switch direction to userspace")
					s.abort(p, src)
					return
				}
			}
		}
		if want > 0 {
			// Bytes redirected before these were passed may still wait
			// in the peer's psock queue; ours must land after them. The
			// same snapshot gives both counts: while passed bytes are
			// outstanding the verdict only passes, so st.Redirected
			// cannot grow, and a later snapshot could count passes
			// that came after redirects this one does not cover.
			if err := s.waitGiven(p, src, dst, st.Redirected); err != nil {
				s.failWait(p, dst, err)
				return
			}
		}
		if want == 0 {
			// Nothing passed is waiting: has the stream ended, or is
			// this round over?
			var one [1]byte
			n, _, err := unix.Recvfrom(src.fd, one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case n > 0 || errors.Is(err, unix.EINTR):
				continue // passed after the lookup
			case n == 0 && err == nil:
				if s.finish(src) {
					return
				}
				continue
			case errors.Is(err, unix.EAGAIN):
				if handBack && !src.userMode {
					// Every passed byte is forwarded: a new epoch
					// makes the verdict announce its next pass,
					// and the counters read after it show any pass
					// the old epoch's notice already covered.
					handBack = false
					src.epoch++
					if err := s.putCtl(src); err != nil {
						s.log.Error().Err(err).Msg("hand direction back to the kernel")
						s.abort(p, src)
						return
					}
					// A verdict that read the old entry may still
					// pass, without a notice: counted before the
					// lookup that follows once this returns.
					if err := verdictBarrier(src.fd); err != nil {
						s.abort(p, src)
						return
					}
					continue
				}
				if s.endRound(src) {
					return
				}
				continue
			default:
				if !p.isClosed() {
					s.abort(p, src)
				}
				return
			}
		}
		if bp == nil || (want > uint64(len(*bp)) && len(*bp) < bigBuf) {
			if bp != nil {
				putBuf(bp)
			}
			bp = getBuf(want)
		}
		buf := *bp
		n, err := unix.Read(src.fd, buf[:min(want, uint64(len(buf)))])
		switch {
		case n > 0:
			stuck = 0
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			// Passed bytes are counted just before they are queued,
			// so a short wait is normal. A long one means the kernel
			// could not queue them (the socket's receive memory was
			// over SO_RCVBUF) and parked them on the psock's work
			// queue, behind the bytes redirected *to* this socket;
			// those wait for room that these bytes' sender holds: a
			// deadlock. Growing SO_RCVBUF lets the next retry of the
			// work queue deliver them.
			stuck++
			if stuck%64 == 0 {
				growRcvBuf(src.fd)
			}
			time.Sleep(50 * time.Microsecond)
			continue
		case n == 0 && err == nil:
			// recvmsg reports the FIN as soon as the message queue is
			// empty, even while passed bytes still wait on the psock's
			// work queue (see above): wait for them, within bounds.
			stuck++
			if stuck < stuckLimit {
				time.Sleep(50 * time.Microsecond)
				continue
			}
			s.log.Warn().Uint64("missing", want).Msg("stream ended before every passed byte was read")
			if s.finish(src) {
				return
			}
			continue
		default:
			if !p.isClosed() {
				s.abort(p, src)
			}
			return
		}
		if err := s.writeAll(p, src, dst.fd, buf[:n]); err != nil {
			s.failWait(p, dst, err)
			return
		}
		src.consumed += uint64(n)
		dst.written += uint64(n)
		s.bytesUser.Add(uint64(n))
		if err := s.putCtl(src); err != nil {
			s.log.Error().Err(err).Msg("update ctl after slow-path write")
			s.abort(p, src)
			return
		}
	}
}

// endRound is called when nothing passed waits in src's queue. It
// reports true when the drain may stop: epoll wakes the next one when
// bytes arrive (level-triggered, so bytes that came meanwhile count).
func (s *Splicer) endRound(src *sock) bool {
	p := src.pair
	p.mu.Lock()
	defer p.mu.Unlock()
	if src.again && !p.closed {
		src.again = false
		return false
	}
	src.draining = false
	if !p.closed {
		s.rearm(src, false)
	}
	return true
}

func (s *Splicer) putCtl(sk *sock) error {
	mode := uint32(modeRedirect)
	if sk.userMode {
		mode = modePass
	}
	return s.objs.CtlMap.Put(sk.cookie, wspliceConnCtl{
		Peer:     sk.peer.cookie,
		Consumed: sk.consumed,
		Epoch:    sk.epoch,
		Mode:     mode,
	})
}

// finish handles FIN read from src. The FIN must reach the peer only after
// every byte before it (KERNEL-NOTES 3): every byte src received has been
// through the verdict, userspace has forwarded every passed byte, and the
// peer holds everything redirected. It reports false when passed bytes are
// still to be read.
func (s *Splicer) finish(src *sock) bool {
	p := src.pair
	dst := src.peer
	deadline := time.Now().Add(2 * time.Second)
	var st wspliceConnStats
	for {
		var err error
		if st, err = s.stats(src.cookie); err != nil {
			s.abort(p, src)
			return true
		}
		ti, err := dataplane.TCPInfo(src.fd)
		if err != nil {
			s.abort(p, src)
			return true
		}
		// tcpi_bytes_received counts the FIN as one byte (KERNEL-NOTES 13).
		if st.Passed+st.Redirected+1 >= ti.Bytes_received {
			break
		}
		if time.Now().After(deadline) {
			s.log.Warn().Uint64("verdicted", st.Passed+st.Redirected).
				Uint64("received", ti.Bytes_received).Msg("verdict did not see every byte before FIN")
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	if st.Passed != src.consumed {
		return false
	}
	// Every byte src received has been verdicted, so st.Redirected is
	// final: wait for the peer to hold it all.
	if err := s.waitGiven(p, src, dst, st.Redirected); err != nil {
		s.failWait(p, dst, err)
		return true
	}
	s.passFIN(src)
	return true
}

// finishNow is finish without waiting: it passes the FIN read from src
// on at once if nothing stands before it (no passed byte waits, the
// verdict has seen every byte, the peer holds every byte redirected to
// it) and reports true; otherwise it changes nothing and reports false,
// and a drain goroutine waits for them. A few syscalls instead of a
// goroutine per FIN: the close path was a quarter of the daemon's CPU on
// a handshake load. In the common case one: the verdict saw the FIN with
// every byte before it already in the peer (fin_clear, bpf/wsplice.c's
// note_fin), and the counters say so; the checks below are for a FIN
// that came with data, or with bytes still on their way, or that woke
// epoll before it reached the verdict (tcp_fin wakes the reader before
// the segment is handed over).
func (s *Splicer) finishNow(src *sock) bool {
	dst := src.peer
	st, err := s.stats(src.cookie)
	if err != nil || st.Passed != src.consumed {
		return false
	}
	if st.FinClear != 0 {
		s.finsAtOnce.Add(1)
		s.passFIN(src)
		return true
	}
	ti, err := dataplane.TCPInfo(src.fd)
	// tcpi_bytes_received counts the FIN as one byte (KERNEL-NOTES 13).
	if err != nil || st.Passed+st.Redirected+1 < ti.Bytes_received {
		return false
	}
	given, err := bytesGivenAtLeast(dst.fd)
	if err != nil || given < dst.givenBase+dst.written+st.Redirected {
		return false
	}
	s.passFIN(src)
	return true
}

// passFIN shuts down src's peer for writing, once every byte src sent
// before its FIN is in the peer, and closes the pair when both
// directions have ended.
func (s *Splicer) passFIN(src *sock) {
	p, dst := src.pair, src.peer
	// shutdown and eof under p.mu: the shutdown can make epoll report
	// EPOLLHUP on dst at once, and kick must then see both directions
	// ended, or it re-arms and is woken again, in a loop, until it does.
	p.mu.Lock()
	if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil {
		// dst is gone (reset): src's side must see a reset too, not
		// a clean end of what dst sent, which may have been cut.
		if !p.closed {
			resetOnClose(src.fd)
		}
		p.mu.Unlock()
		s.closePair(p, true)
		return
	}
	src.eof = true
	src.draining = false
	both := dst.eof
	if !both && !p.closed {
		s.rearm(src, true)
	}
	p.mu.Unlock()
	if both {
		s.closePair(p, false)
	}
}

// waitGiven waits until dst holds every byte userspace wrote into it plus
// redirected bytes redirected to it: what it was given (acked + still
// queued, less its base) covers them.
//
// The kworker that writes redirected bytes into dst can stop for good: when
// dst is not writeable it gives up with EAGAIN without marking the socket
// SOCK_NOSPACE (sk_psock_handle_skb checks sock_writeable before sending),
// so no write-space callback reschedules it, and once this direction is in
// userspace no new redirect does either. Seen on 6.18 as a stress test
// stalled for good with ~1 MiB in the psock queue and the peer idle. So
// when dst takes nothing between two looks, kickWriter pokes it.
//
// It returns a sideError if src or dst fails (is reset) meanwhile.
func (s *Splicer) waitGiven(p *pair, src, dst *sock, redirected uint64) error {
	backoff := 20 * time.Microsecond
	var last uint64
	check := time.Now().Add(waitCheck)
	for {
		if p.isClosed() {
			return errPairClosed
		}
		if time.Now().After(check) {
			if sk, err := failedSide(src, dst); sk != nil {
				return &sideError{sk: sk, err: err}
			}
			check = time.Now().Add(waitCheck)
		}
		given, err := bytesGivenAtLeast(dst.fd)
		if err != nil {
			return err
		}
		if given >= dst.givenBase+dst.written+redirected {
			return nil
		}
		if given == last {
			kickWriter(dst.fd)
		}
		last = given
		time.Sleep(backoff)
		backoff = min(backoff*2, 20*time.Millisecond)
	}
}

// kickWriter runs fd's write-space callback, which for a socket in the
// sockmap schedules its psock's kworker (sk_psock_write_space): setting
// TCP_NOTSENT_LOWAT calls sk_write_space. The value set, 0, is the default
// (use the net.ipv4.tcp_notsent_lowat sysctl), so nothing else changes.
func kickWriter(fd int) {
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, 0)
}

// bytesGiven is the number of bytes ever written into a TCP socket (plus
// the socket's givenBase): acked bytes plus the send queue. An ACK between
// the two reads would make the sum short, so it retries until bytes_acked
// did not move around the SIOCOUTQ read.
func bytesGiven(fd int) (uint64, error) {
	for {
		before, err := dataplane.TCPInfo(fd)
		if err != nil {
			return 0, err
		}
		outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			return 0, err
		}
		after, err := dataplane.TCPInfo(fd)
		if err != nil {
			return 0, err
		}
		if before.Bytes_acked == after.Bytes_acked {
			return after.Bytes_acked + uint64(outq), nil
		}
	}
}

// bytesGivenAtLeast is a lower bound of bytesGiven in two syscalls instead
// of three or more: an ACK between the two reads only moves bytes from the
// send queue to the acked count, so the sum can come out short, never
// long. Enough for waiting until a socket holds a given number of bytes.
func bytesGivenAtLeast(fd int) (uint64, error) {
	ti, err := dataplane.TCPInfo(fd)
	if err != nil {
		return 0, err
	}
	outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, err
	}
	return ti.Bytes_acked + uint64(outq), nil
}

// writeAll writes b to a non-blocking socket, waiting while it is full;
// while it waits it checks src (the socket b came from, nil for none) for
// an error, returned as a sideError.
func (s *Splicer) writeAll(p *pair, src *sock, fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if n > 0 {
			b = b[n:]
		}
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if p.isClosed() {
				return errPairClosed
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if n, _ := unix.Poll(pfd, int(waitCheck/time.Millisecond)); n == 0 {
				keepAcksFlowing(fd)
				if sk, err := failedSide(src, nil); sk != nil {
					return &sideError{sk: sk, err: err}
				}
			}
		default:
			return err
		}
	}
	return nil
}

// keepAcksFlowing raises fd's send buffer when the socket's receive
// memory is over what the kernel lets in while the socket is busy
// (rcvbuf + sndbuf: a segment that arrives while userspace or the
// kworker holds the socket is dropped whole over that, its ACK too).
// Bytes the verdict passes are charged to the receive memory even past
// SO_RCVBUF (the psock queues them), so a direction in userspace whose
// reader waits can push it there; the ACKs for what we send on fd are
// then lost, fd backs off exponentially, and the other direction stalls
// for tens of seconds. Raising sndbuf lifts that limit without opening
// the receive window (which follows rcvbuf alone).
func keepAcksFlowing(fd int) {
	var mi [unix.SK_MEMINFO_VARS]uint32
	n := uint32(unsafe.Sizeof(mi))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mi)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return
	}
	rmem, rcvbuf, sndbuf := uint64(mi[unix.SK_MEMINFO_RMEM_ALLOC]), uint64(mi[unix.SK_MEMINFO_RCVBUF]), uint64(mi[unix.SK_MEMINFO_SNDBUF])
	if rmem+(256<<10) <= rcvbuf+sndbuf || sndbuf >= maxRcvBuf {
		return
	}
	want := min(rmem+(1<<20)-rcvbuf, maxRcvBuf)
	// The kernel doubles what it is given.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, int(want/2+1))
}

// rearm re-enables epoll for sk: FIN and errors (and data, once the
// direction is in userspace), or only errors after FIN.
func (s *Splicer) rearm(sk *sock, afterFIN bool) {
	ev := epollEvent(sk, unix.EPOLLRDHUP|unix.EPOLLONESHOT)
	if sk.userMode {
		ev.Events |= unix.EPOLLIN
	}
	if afterFIN {
		ev.Events = unix.EPOLLONESHOT // EPOLLERR and EPOLLHUP are always reported
	}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, sk.fd, &ev); err != nil {
		s.log.Error().Err(err).Msg("epoll re-arm failed")
	}
}

// abort propagates an error on from as a reset of its peer, then closes
// the pair.
func (s *Splicer) abort(p *pair, from *sock) {
	p.mu.Lock()
	if !p.closed {
		resetOnClose(from.peer.fd)
	}
	p.mu.Unlock()
	s.closePair(p, true)
}

// resetBroken resets a connection whose stream the verdict could not keep
// intact: both sides of a spliced pair, or the client of a handshake in
// progress (the proxy then sees its read fail).
func (s *Splicer) resetBroken(sk *sock) {
	p := sk.pair
	if p == nil {
		switch {
		case sk.conn != nil:
			_ = sk.conn.SetLinger(0)
			_ = sk.conn.Close()
		default:
			// A bare fd of the proxy's handshake loop (AdoptFD): it
			// is the loop's to close; a reset makes its I/O fail.
			// Under s.mu, which the loop's ReleaseFD and ConnFD take
			// before the fd is closed: the number is still this
			// socket's.
			s.mu.Lock()
			if s.socks[sk.cookie] == sk && sk.fd > 0 && sk.pair == nil {
				resetOnClose(sk.fd)
				_ = unix.Shutdown(sk.fd, unix.SHUT_RDWR)
			}
			s.mu.Unlock()
		}
		return
	}
	p.mu.Lock()
	if !p.closed {
		for _, o := range p.socks {
			resetOnClose(o.fd)
		}
	}
	p.mu.Unlock()
	s.closePair(p, true)
}

// resetOnClose makes fd's close send RST (SO_LINGER 0) instead of FIN.
func resetOnClose(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// closePair marks p closed; its fds are closed once no drain uses them,
// so an fd number is never reused under a running drain.
func (s *Splicer) closePair(p *pair, reset bool) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.users == 0
	p.mu.Unlock()
	if reset {
		s.log.Debug().Msg("spliced pair reset")
	}
	if idle {
		s.releasePair(p)
	}
}

// leave is called by a drain goroutine on exit.
func (s *Splicer) leave(p *pair) {
	p.mu.Lock()
	p.users--
	last := p.users == 0 && p.closed
	p.mu.Unlock()
	if last {
		s.releasePair(p)
	}
}

func (s *Splicer) releasePair(p *pair) {
	s.idle.Remove(p)
	s.mu.Lock()
	for _, sk := range p.socks {
		delete(s.socks, sk.cookie)
	}
	s.mu.Unlock()
	// forget reads each socket's last counts as it frees them; they are
	// kept in p.final, under p.mu so that pairCounts sees either the live
	// entries or the final counts, for Done.
	p.mu.Lock()
	var final [2]uint64
	for i, sk := range p.socks {
		// The last fd of the socket: closing it also takes it out of
		// the epoll set and out of sock_hash, so no verdict runs on it
		// once close returns, and forget's deletes are final.
		unix.Close(sk.fd)
		final[i] = s.forget(sk.cookie)
	}
	p.final = &final
	p.mu.Unlock()
	// Both control entries in one syscall; one may be missing (Splice
	// failed before writing it), which stops the batch there.
	keys := []uint64{p.socks[0].cookie, p.socks[1].cookie}
	if n, err := s.objs.CtlMap.BatchDelete(keys, nil); err != nil {
		for _, k := range keys[min(n, len(keys)):] {
			_ = s.objs.CtlMap.Delete(k)
		}
	}
	s.spliced.Add(-1)
	if p.owner != nil {
		p.owner.PairEnded(p.Counts())
	}
}

func (p *pair) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// sockError returns the pending socket error (SO_ERROR), if any.
func sockError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// growRcvBuf doubles a socket's receive buffer, up to maxRcvBuf.
func growRcvBuf(fd int) {
	cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil || cur >= maxRcvBuf {
		return
	}
	// The kernel doubles what it is given and reports the doubled value.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, min(cur, maxRcvBuf/2))
}

// stuckLimit bounds how many 50 µs waits a drain spends, after the FIN,
// on passed bytes that have not reached the message queue (about 1 s);
// then the FIN is passed on anyway and a warning logged, so a pair never
// lingers.
const stuckLimit = 20_000

// maxRcvBuf caps growRcvBuf.
const maxRcvBuf = 64 << 20
