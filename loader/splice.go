package loader

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// Values of conn_ctl.mode (bpf/consts.h).
const (
	modePass     = 0
	modeRedirect = 1
)

// sock is one adopted socket. Fields below pair are guarded by pair.mu
// once the socket is spliced.
type sock struct {
	cookie uint64
	conn   *dataplane.Conn // until spliced
	pair   *pair

	fd       int    // our duplicate of the socket, once spliced
	peer     *sock  // the other socket of the pair
	consumed uint64 // bytes read from this socket and written to peer
	written  uint64 // bytes userspace wrote into this socket
	// givenBase is what bytesGiven reports beyond what was written into
	// the socket: 1 on a socket we connected (tcpi_bytes_acked counts the
	// acked SYN there), 0 on an accepted one; measured, not assumed.
	givenBase uint64
	// userMode: this direction (bytes from this socket to its peer) has
	// left the kernel path for good; the verdict passes all of it.
	userMode bool
	// epoch is conn_ctl.epoch: bumped on each hand-back (see drain).
	epoch    uint32
	eof      bool // FIN read from this socket and passed on to peer
	draining bool // a drain goroutine owns this socket's reads
	again    bool // another event came while draining
}

// pair is a spliced client/backend pair. It is all the daemon keeps of an
// established connection (with its two socks, their map entries and the
// proxy's Owner), so its size is the daemon's memory per idle connection:
// keep it small.
type pair struct {
	// Field order packs the struct into 128 bytes, a smaller allocation
	// class than the 144 a declaration in reading order took.
	s     *Splicer
	mu    sync.Mutex
	socks [2]*sock // client, backend
	// pending holds, per socket, events that came before ready.
	pending [2]uint32
	users   int32 // drain goroutines running; fds close when it drops to 0
	closed  bool
	// ready is set once Splice has finished setting the pair up; events
	// before that are kept in pending (per socket) and replayed then.
	ready bool
	// owner is the client Conn's Owner (nil: nobody is told): told
	// when the pair starts and ends.
	owner dataplane.Owner
	// base is what the proxy had read from each socket by Splice: the
	// pair's counts start there.
	base [2]uint64
	// start is when the pair was spliced (monoNow): idle from there if
	// no byte ever arrives.
	start int64
	// idle is the pair's place in the Splicer's idle queue.
	idle dataplane.IdleEntry
	// final holds each socket's redirected count once the pair is
	// released and its counters freed.
	final *[2]uint64
}

// spliceRcvBuf, when set, caps SO_RCVBUF of spliced sockets. It is 0:
// a capped receive buffer makes the kernel park passed bytes on the psock
// work queue (their receive memory is over SO_RCVBUF), behind bytes
// redirected into the same socket, which stalled a bidirectional stress
// test; autotuning keeps it rare.
var spliceRcvBuf = 0

// Slow-path buffers; only directions in the slow path use one. Most
// drains forward a message or two (bytes passed around the switch at
// splice time): they get a buffer of their size from the heap, whose
// small-object memory is already mapped; a fresh pooled buffer (the pool
// empties at every GC) costs a page fault per 4 KiB on first use, which
// profiles on this VM showed at about a millisecond per drain. A drain
// with more waiting takes a big pooled buffer: the larger the buffer, the
// fewer rounds a backlog takes.
const (
	smallBuf = 32 << 10
	bigBuf   = 4 << 20
)

var bigBufs = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

// getBuf returns a buffer for want bytes: small or big.
func getBuf(want uint64) *[]byte {
	if want <= smallBuf {
		b := make([]byte, max(want, 4<<10))
		return &b
	}
	return bigBufs.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if len(*b) == bigBuf {
		bigBufs.Put(b)
	}
}

// Adopt implements dataplane.Dataplane: the socket enters sock_hash in
// pass mode (no control entry) before its first byte is read, so every byte it ever receives
// goes through the verdict and is counted (KERNEL-NOTES 1 and 12). A socket
// that cannot be inserted is returned with Cookie 0 and later served by the
// fallback data path.
func (s *Splicer) Adopt(c *net.TCPConn) (*dataplane.Conn, error) {
	dc := dataplane.NewConn(c)
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, dataplane.ErrClosed
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return dc, nil
	}
	var cookie, base uint64
	var ierr error
	cerr := raw.Control(func(fd uintptr) {
		cookie, base, ierr = s.insert(int(fd))
	})
	if cerr != nil || ierr != nil {
		s.log.Debug().Err(errors.Join(cerr, ierr)).Msg("socket not adopted by the kernel path; it will use the fallback")
		return dc, nil
	}
	dc.Cookie = cookie
	s.mu.Lock()
	s.socks[cookie] = &sock{cookie: cookie, conn: dc, givenBase: base}
	s.mu.Unlock()
	return dc, nil
}

// insert puts fd into sock_hash and returns its cookie and its givenBase
// (see sock). Four syscalls: a connection's set-up cost on the kernel path
// is mostly syscalls, so each one here is counted. The verdict counts
// every byte from the socket's first segment (creating its counters);
// the control entry waits for Splice.
func (s *Splicer) insert(fd int) (cookie, base uint64, err error) {
	cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, 0, fmt.Errorf("get SO_COOKIE: %w", err)
	}
	// Nothing has been written into the socket yet, so its send queue is
	// empty and what it was given so far (bytesGiven) is its acked count
	// alone: 1 on a socket we connected (the SYN), 0 on an accepted one.
	// Measured, not assumed; one TCP_INFO read, exact without SIOCOUTQ.
	ti, err := dataplane.TCPInfo(fd)
	if err != nil {
		return 0, 0, fmt.Errorf("read TCP_INFO: %w", err)
	}
	base = ti.Bytes_acked
	if err := s.objs.SockHash.Update(cookie, uint64(fd), ebpf.UpdateAny); err != nil {
		return 0, 0, fmt.Errorf("insert into sock_hash: %w", err)
	}
	// Bytes queued before insertion wait for the next segment unless
	// something calls sk_data_ready; setting SO_RCVLOWAT does, so they go
	// through the verdict now (KERNEL-NOTES 1).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1); err != nil {
		s.objs.SockHash.Delete(cookie)
		s.forget(cookie)
		return 0, 0, fmt.Errorf("set SO_RCVLOWAT: %w", err)
	}
	return cookie, base, nil
}

// stats reads cookie's counters. The verdict creates them on the socket's
// first segment: a missing entry reads as zeros.
func (s *Splicer) stats(cookie uint64) (wspliceConnStats, error) {
	var st wspliceConnStats
	err := s.objs.StatsMap.Lookup(cookie, &st)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return wspliceConnStats{}, nil
	}
	return st, err
}

// forget removes cookie's counters, keeping (and returning) its
// redirected byte count. The socket must be closed (or out of sock_hash)
// first, or the verdict could create its counters again. Control entries
// (spliced sockets only) go with their pair (releasePair).
func (s *Splicer) forget(cookie uint64) (redirected uint64) {
	var st wspliceConnStats
	// One syscall for both (hash maps have LOOKUP_AND_DELETE since 5.14).
	if err := s.objs.StatsMap.LookupAndDelete(cookie, &st); err == nil {
		s.bytesKernel.Add(st.Redirected)
		s.overlapTrimmed.Add(st.OverlapTrimmed)
		redirected = st.Redirected
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		_ = s.objs.StatsMap.Delete(cookie)
	}
	return redirected
}

// Release implements dataplane.Dataplane.
func (s *Splicer) Release(c *dataplane.Conn) {
	c.Close() // closing removes the socket from sock_hash
	if c.Cookie == 0 {
		return
	}
	s.mu.Lock()
	delete(s.socks, c.Cookie)
	s.mu.Unlock()
	s.forget(c.Cookie)
}

// Splice implements dataplane.Dataplane. The client's stream is switched
// to redirect before toClient (the 101) is written, so nothing the client
// sends in answer is passed to userspace; the backend's stream is switched
// right after, since the client must get the 101 before any backend byte.
// Bytes passed before a switch are forwarded by the slow path.
func (s *Splicer) Splice(client, backend *dataplane.Conn, toClient []byte) error {
	cs, bs, closed := s.pairSocks(client.Cookie, backend.Cookie)
	if closed {
		s.Release(client)
		s.Release(backend)
		return dataplane.ErrClosed
	}
	if cs == nil || bs == nil {
		return s.spliceFallback(client, backend, toClient)
	}
	// A side with a TLS session (crypto/tls or kernel TLS) is never
	// redirected here: with crypto/tls the socket holds ciphertext only
	// Go can read; with kernel TLS the verdict-only program would not see
	// decrypted data, and the FIN drain compares TCP byte counts that TLS
	// framing changes. The proxy does not adopt such sockets (Cookie 0
	// above); this keeps a TLS pair off the kernel path even if one is.
	if client.TLS != nil || client.KTLS || backend.TLS != nil || backend.KTLS {
		return s.spliceFallback(client, backend, toClient)
	}
	var fds [2]int
	for i, c := range []*dataplane.Conn{client, backend} {
		fd, err := dupFD(c.TCPConn)
		if err != nil {
			if i == 1 {
				unix.Close(fds[0])
			}
			if (errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)) && s.fallback != nil {
				// At the fd limit: the fallback needs no duplicate.
				return s.spliceFallback(client, backend, toClient)
			}
			s.Release(client)
			s.Release(backend)
			return fmt.Errorf("duplicate socket fd: %w", err)
		}
		fds[i] = fd
	}
	return s.splicePair(cs, bs, fds, toClient, spliceIO{
		owner:          client.Owner,
		clientRead:     client.BytesRead(),
		backendRead:    backend.BytesRead(),
		backendWritten: backend.BytesWritten(),
		writeClient: func(_ *pair, b []byte) (int64, error) {
			_, err := client.Write(b)
			return client.BytesWritten(), err
		},
		// The Go conns go away (and with them the runtime poller's
		// registration); the sockets live on through the duplicates.
		dropConns: func() {
			client.TCPConn.Close()
			backend.TCPConn.Close()
		},
	})
}

// pairSocks returns the adopted socks of a pair about to be spliced (nil
// for a socket the kernel path did not take: cookie 0 or unknown), and
// whether the data path is closed.
func (s *Splicer) pairSocks(client, backend uint64) (cs, bs *sock, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if client != 0 {
		cs = s.socks[client]
	}
	if backend != 0 {
		bs = s.socks[backend]
	}
	return cs, bs, s.closed
}

// spliceIO is what splicePair needs from the proxy's side of a handshake,
// done through Go conns (Splice) or on bare fds (SpliceFD).
type spliceIO struct {
	owner dataplane.Owner
	// What the proxy read from each socket and wrote to the backend.
	clientRead, backendRead, backendWritten int64
	// writeClient writes b to the client and returns all the proxy ever
	// wrote to it.
	writeClient func(p *pair, b []byte) (int64, error)
	// dropConns closes what the proxy held besides the fds (nil: none).
	dropConns func()
}

// splicePair switches an adopted pair to the kernel path. fds are the
// pair's own from here on (closed with it), the client's first. The
// client's stream is switched to redirect before toClient (the 101) is
// written, so nothing the client sends in answer is passed to userspace;
// the backend's stream is switched right after, since the client must get
// the 101 before any backend byte. Bytes passed before a switch are
// forwarded by the slow path.
func (s *Splicer) splicePair(cs, bs *sock, fds [2]int, toClient []byte, io spliceIO) error {
	p := &pair{s: s, socks: [2]*sock{cs, bs}, owner: io.owner}
	cs.peer, bs.peer = bs, cs
	cs.fd, bs.fd = fds[0], fds[1]
	drop := func() {
		if io.dropConns != nil {
			io.dropConns()
		}
	}
	// Published and registered with epoll before any switch, so that a
	// pass notice or a FIN finds the pair; kick holds such events until
	// the pair is ready.
	s.mu.Lock()
	for _, sk := range p.socks {
		sk.pair = p
	}
	s.mu.Unlock()
	s.spliced.Add(1)
	s.splicedTotal.Add(1)
	// A splice that fails resets both sides: the client may not have its
	// 101, and the backend may have the client's first bytes but will
	// get no more; neither may take the close for a clean end. (Not once
	// the pair is closed, by shutdown: its fds may be gone.)
	fail := func(err error) error {
		p.mu.Lock()
		if !p.closed {
			for _, sk := range p.socks {
				resetOnClose(sk.fd)
			}
		}
		p.mu.Unlock()
		drop()
		s.closePair(p, true)
		return err
	}
	for _, sk := range p.socks {
		ev := epollEvent(sk, unix.EPOLLRDHUP|unix.EPOLLONESHOT)
		if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, sk.fd, &ev); err != nil {
			return fail(fmt.Errorf("epoll_ctl add: %w", err))
		}
	}

	// The proxy has written all it owes the backend: client bytes may go
	// straight to it from now on.
	cs.consumed = uint64(io.clientRead)
	bs.written = uint64(io.backendWritten)
	bs.consumed = uint64(io.backendRead)
	if err := s.putCtl(cs); err != nil {
		return fail(fmt.Errorf("switch client socket to redirect: %w", err))
	}
	if len(toClient) == 0 {
		// Otherwise the write below is the barrier.
		if err := verdictBarrier(cs.fd); err != nil {
			return fail(err)
		}
	}
	// Nothing between the 101 and the backend's switch: whatever the
	// backend sends before the switch (typically its answer to the
	// client's first frame, sent on receipt of the 101) is passed, and
	// must then be forwarded by the slow path.
	written, err := io.writeClient(p, toClient)
	if err != nil {
		return fail(fmt.Errorf("write to client: %w", err))
	}
	if err := s.putCtl(bs); err != nil {
		return fail(fmt.Errorf("switch backend socket to redirect: %w", err))
	}
	if err := verdictBarrier(bs.fd); err != nil {
		return fail(err)
	}
	cs.written = uint64(written)
	p.base = [2]uint64{cs.consumed, bs.consumed}
	drop()
	for _, sk := range p.socks {
		sk.conn = nil
	}
	// From now on the proxy may close the pair through its handle (a
	// drain deadline); PairEnded comes later, after ready.
	if p.owner != nil {
		p.owner.PairStarted(s.Name(), p)
	}
	p.start = monoNow()
	// Read before ready: from then on drains own consumed. A drain that
	// moves it meanwhile only makes the check below kick once more.
	consumed := [2]uint64{cs.consumed, bs.consumed}
	p.mu.Lock()
	p.ready = true
	pending := p.pending
	p.mu.Unlock()
	s.idle.Add(p, time.Duration(s.idleTimeout.Load()))
	// Bytes that arrived before a switch were passed without a notice:
	// drain them now if there are any; replay held events.
	for i, sk := range p.socks {
		if st, err := s.stats(sk.cookie); err == nil && st.Passed != consumed[i] {
			pending[i] |= kickHeld
		}
		if pending[i] != 0 {
			s.kick(sk, pending[i]&^kickHeld)
		}
	}
	return nil
}

// AdoptFD implements dataplane.Raw: Adopt for a bare fd, which stays the
// caller's. A socket that cannot be inserted gets cookie 0 and is later
// served by the fallback data path.
func (s *Splicer) AdoptFD(fd int) (uint64, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, dataplane.ErrClosed
	}
	cookie, base, err := s.insert(fd)
	if err != nil {
		s.log.Debug().Err(err).Msg("socket not adopted by the kernel path; it will use the fallback")
		return 0, nil
	}
	s.mu.Lock()
	s.socks[cookie] = &sock{cookie: cookie, fd: fd, givenBase: base}
	s.mu.Unlock()
	return cookie, nil
}

// ConnFD implements dataplane.Raw.
func (s *Splicer) ConnFD(sk dataplane.RawSock) (*dataplane.Conn, error) {
	if sk.Cookie != 0 {
		s.mu.Lock()
		if so := s.socks[sk.Cookie]; so != nil {
			so.fd = 0 // about to be closed (see resetBroken)
		}
		s.mu.Unlock()
	}
	tc, err := dataplane.FileConn(sk.FD)
	if err != nil {
		s.forgetRaw(sk)
		return nil, err
	}
	if sk.Prepare != nil {
		sk.Prepare(tc)
	}
	dc := dataplane.NewConnCounted(tc, sk.Read, sk.Written)
	if sk.Cookie == 0 {
		return dc, nil
	}
	dc.Cookie = sk.Cookie
	s.mu.Lock()
	if so := s.socks[sk.Cookie]; so != nil {
		so.conn = dc
	}
	s.mu.Unlock()
	return dc, nil
}

// ReleaseFD implements dataplane.Raw.
func (s *Splicer) ReleaseFD(sk dataplane.RawSock) {
	// Out of s.socks before the close (see resetBroken), counters after
	// it (see forget).
	s.unlist(sk.Cookie)
	unix.Close(sk.FD) // closing removes the socket from sock_hash
	if sk.Cookie != 0 {
		s.forget(sk.Cookie)
	}
}

// forgetRaw forgets a socket whose fd is closed.
func (s *Splicer) forgetRaw(sk dataplane.RawSock) {
	s.unlist(sk.Cookie)
	if sk.Cookie != 0 {
		s.forget(sk.Cookie)
	}
}

// unlist drops cookie's sock from s.socks (0: none).
func (s *Splicer) unlist(cookie uint64) {
	if cookie == 0 {
		return
	}
	s.mu.Lock()
	delete(s.socks, cookie)
	s.mu.Unlock()
}

// SpliceFD implements dataplane.Raw: Splice for bare fds, which it takes
// over as the pair's own (no duplicate, no Go conn to close).
func (s *Splicer) SpliceFD(client, backend dataplane.RawSock, toClient []byte, owner dataplane.Owner) error {
	cs, bs, closed := s.pairSocks(client.Cookie, backend.Cookie)
	if closed {
		s.ReleaseFD(client)
		s.ReleaseFD(backend)
		return dataplane.ErrClosed
	}
	if cs == nil || bs == nil {
		cc, err := s.ConnFD(client)
		if err != nil {
			s.ReleaseFD(backend)
			return err
		}
		bc, err := s.ConnFD(backend)
		if err != nil {
			s.Release(cc)
			return err
		}
		cc.Owner = owner
		_ = cc.SetWriteDeadline(time.Now().Add(rawWriteTimeout))
		return s.spliceFallback(cc, bc, toClient)
	}
	return s.splicePair(cs, bs, [2]int{client.FD, backend.FD}, toClient, spliceIO{
		owner:          owner,
		clientRead:     client.Read,
		backendRead:    backend.Read,
		backendWritten: backend.Written,
		writeClient: func(p *pair, b []byte) (int64, error) {
			if err := s.writeAll(p, nil, client.FD, b); err != nil {
				return 0, err
			}
			return client.Written + int64(len(b)), nil
		},
	})
}

// rawWriteTimeout bounds the fallback's write of the 101 for SpliceFD.
const rawWriteTimeout = 10 * time.Second

// verdictBarrier returns once no verdict that may have read a control
// entry older than the last putCtl on fd's socket is still running. A
// verdict runs from the socket's data_ready, under the socket's lock (the
// softirq holds its spinlock; a backlog or SO_RCVLOWAT run holds it as
// owner), and reads the control entry without a lock: one that read the
// old entry just before a switch to redirect can still pass a segment,
// without a notice, after the switch. Splice's check for bytes passed
// around the switch, and a drain's hand-back, must come after such a
// verdict, or the segment waits in the receive queue until the next
// one (seen as a lost echo in 1 of ~40,000 churn connections). Reading
// TCP_INFO takes the lock (lock_sock_fast), which waits for it.
func verdictBarrier(fd int) error {
	if _, err := dataplane.TCPInfo(fd); err != nil {
		return fmt.Errorf("wait for running verdicts: %w", err)
	}
	return nil
}

// Counts implements dataplane.Pair: what p moved since Splice, each way:
// what the verdict redirected plus what the slow path forwarded (consumed
// beyond base). For metrics; it costs two map lookups while the pair
// lives, none once it is released.
func (p *pair) Counts() dataplane.PairCounts {
	var n [2]uint64
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, sk := range p.socks {
		if p.final != nil {
			n[i] = p.final[i]
		} else if st, err := p.s.stats(sk.cookie); err == nil {
			n[i] = st.Redirected
		}
		n[i] += sk.consumed - p.base[i]
	}
	return dataplane.PairCounts{ToBackend: n[0], ToClient: n[1]}
}

// Close implements dataplane.Pair.
func (p *pair) Close() { p.s.closePair(p, false) }

// epollEvent is the epoll registration of a spliced socket: its cookie
// is the event's data (Fd and Pad hold its two halves), so the epoll loop
// finds the socket in the one map of adopted sockets.
func epollEvent(sk *sock, events uint32) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: int32(uint32(sk.cookie)), Pad: int32(uint32(sk.cookie >> 32))}
}

// eventCookie is the cookie epollEvent stored in ev.
func eventCookie(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// livePairs returns the spliced pairs (each once, from its client sock).
func (s *Splicer) livePairs() []*pair {
	s.mu.Lock()
	defer s.mu.Unlock()
	pairs := make([]*pair, 0, s.spliced.Load())
	for _, sk := range s.socks {
		if p := sk.pair; p != nil && p.socks[0] == sk {
			pairs = append(pairs, p)
		}
	}
	return pairs
}

// spliceFallback hands a pair the kernel path cannot take to the fallback.
func (s *Splicer) spliceFallback(client, backend *dataplane.Conn, toClient []byte) error {
	if s.fallback == nil {
		s.Release(client)
		s.Release(backend)
		return fmt.Errorf("%w: socket not in sock_hash and no fallback", ErrUnsupported)
	}
	// The sockets stay in sock_hash until they close (taking one out
	// drops what its psock holds), and without control entries the
	// verdict passes every byte to them, which is what the fallback
	// needs; it also counts them, so their counters go when the pair
	// has ended (fallbackOwner), or now if it never starts.
	fo := &fallbackOwner{s: s, next: client.Owner, cookies: [2]uint64{client.Cookie, backend.Cookie}}
	for _, c := range []*dataplane.Conn{client, backend} {
		if c.Cookie != 0 {
			s.mu.Lock()
			delete(s.socks, c.Cookie)
			s.mu.Unlock()
		}
	}
	client.Owner = fo
	s.log.Debug().Msg("pair served by the fallback data path")
	if err := s.fallback.Splice(client, backend, toClient); err != nil {
		fo.forget()
		return err
	}
	return nil
}

// fallbackOwner forgets the counters of a pair's sockets once the fallback
// has closed them (they count every byte while in sock_hash), then tells
// the proxy's Owner.
type fallbackOwner struct {
	s       *Splicer
	next    dataplane.Owner
	cookies [2]uint64
}

func (o *fallbackOwner) forget() {
	for _, c := range o.cookies {
		if c != 0 {
			o.s.forget(c)
		}
	}
}

// PairStarted implements dataplane.Owner.
func (o *fallbackOwner) PairStarted(path string, p dataplane.Pair) {
	if o.next != nil {
		o.next.PairStarted(path, p)
	}
}

// PairEnded implements dataplane.Owner.
func (o *fallbackOwner) PairEnded(c dataplane.PairCounts) {
	o.forget()
	if o.next != nil {
		o.next.PairEnded(c)
	}
}

// dupFD returns a duplicate of c's socket fd (sharing O_NONBLOCK).
func dupFD(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := raw.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// closeLive closes every pair the kernel path holds now.
func (s *Splicer) closeLive() {
	for _, p := range s.livePairs() {
		s.closePair(p, false)
	}
}

// ClosePairs implements dataplane.Dataplane.
func (s *Splicer) ClosePairs() {
	s.closeLive()
	if s.fallback != nil {
		s.fallback.ClosePairs()
	}
}

// Close implements dataplane.Dataplane: spliced pairs are closed (their
// sockets send FIN after what is queued), the program is detached and
// every map is freed.
func (s *Splicer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.closeLive()
	var err error
	if s.fallback != nil {
		err = s.fallback.Close()
	}
	s.drains.Wait()
	s.idle.Stop()
	s.release()
	return err
}
