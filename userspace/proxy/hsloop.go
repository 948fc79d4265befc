package proxy

import (
	"bufio"
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/http1"
	"github.com/wsplice/wsplice/userspace/limit"
	"github.com/wsplice/wsplice/userspace/websocket"
)

// The handshake loop serves the WebSocket handshakes of the HTTP listeners
// on bare non-blocking sockets, outside Go's net package: no goroutine, no
// runtime poller registration and no duplicate fd per connection. Go's net
// package costs about 1.6x an event loop's CPU per handshake
// (bench/evfloor against bench/gofloor), and on the kernel path a
// connection lives in the kernel after its handshake anyway.
//
// It serves the common case only: a request head that came whole with the
// connection's first read, a WebSocket upgrade without a body, a backend
// given by IP address that accepts the connection and answers 101. Every
// other turn (a head that has not arrived, a plain HTTP request, a refused
// upgrade, an error to answer, a backend given by name) hands the
// connection to the goroutine path with what the loop read and learnt, and
// the goroutine path goes on exactly where the loop stopped: the two paths
// answer alike because the answers are the goroutine path's.
//
// Per connection the loop makes these system calls: accept4, the data
// plane's adoption, read; socket, setsockopt (TCP_NODELAY, keepalive),
// connect, epoll_ctl; getsockopt (SO_ERROR), the adoption, write, epoll_ctl;
// read; write (bytes the client pipelined, rare), and the splice.
//
// Data flow: rawAccept (one goroutine per listener: accept, first read,
// parse, backend choice, connect) -> hsLoop.run (one goroutine: connect
// done, request written, answer read) -> the data plane's SpliceFD.

// rawHS is one handshake in the loop.
type rawHS struct {
	p        *Proxy
	l        *hsLoop
	track    *tracked
	ip       string
	accepted time.Time // the head timeout runs from here
	start    time.Time // the request head read: the handshake metric's start

	// mu guards the fds against abort (a drain deadline, a forced
	// shutdown) from other goroutines: an fd is closed or handed over
	// only with mu held and done set.
	mu     sync.Mutex
	done   bool
	client dataplane.RawSock
	bk     dataplane.RawSock // FD -1 until a socket exists

	buf     []byte // the client's bytes (head, then what it pipelined)
	headLen int
	req     *http1.RequestHead
	breq    *backend.Request
	lease   *backend.Lease
	tried   []*backend.Backend
	lastErr error

	loopFD    int // the socket the loop waits on for h (-1: none)
	connected bool
	resp      []byte // the backend's bytes so far
	deadline  time.Time
	heapIdx   int
}

// hsLoop waits for the handshakes' backend sockets.
type hsLoop struct {
	p    *Proxy
	raw  dataplane.Raw
	epfd int
	file *os.File // epfd, waited for in Go's netpoller
	rc   syscall.RawConn

	bufs sync.Pool // *[]byte of MaxHeaderBytes: the first reads

	mu     sync.Mutex
	conns  map[int32]*rawHS // by backend fd
	timers hsTimers
	closed bool
}

func newHSLoop(p *Proxy, raw dataplane.Raw) (*hsLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("handshake loop: epoll_create1: %w", err)
	}
	// Non-blocking, or os.NewFile keeps it out of the poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("handshake loop: epoll fd: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "hsloop-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("handshake loop: epoll fd: %w", err)
	}
	l := &hsLoop{p: p, raw: raw, epfd: epfd, file: f, rc: rc, conns: make(map[int32]*rawHS)}
	l.bufs.New = func() any { b := make([]byte, p.cfg.MaxHeaderBytes); return &b }
	return l, nil
}

// close stops the loop; handshakes still in it are aborted.
func (l *hsLoop) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.abortAll()
	_ = l.file.Close()
}

// abortAll aborts every handshake in the loop (forced shutdown).
func (l *hsLoop) abortAll() { l.abort(false) }

// abortIdle aborts the connections still waiting for their first bytes
// (shutdown closes idle connections at once).
func (l *hsLoop) abortIdle() { l.abort(true) }

func (l *hsLoop) abort(idleOnly bool) {
	l.mu.Lock()
	hs := make([]*rawHS, 0, len(l.conns))
	for _, h := range l.conns {
		if !idleOnly || h.loopFD == h.client.FD {
			hs = append(hs, h)
		}
	}
	l.mu.Unlock()
	for _, h := range hs {
		h.abort()
	}
}

// rawListener returns a duplicate of ln's fd in Go's poller: a listener's
// own RawConn cannot wait for readiness (its Read is EINVAL). The
// duplicate keeps the listening socket open: shutdown closes it with the
// listeners (closeListeners).
func (p *Proxy) rawListener(ln *net.TCPListener) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	// Non-blocking like the listener (the flag is the open file's, shared
	// by both fds), so os.NewFile puts it in the poller.
	return os.NewFile(uintptr(nfd), "listener"), nil
}

// rawAcceptLoop accepts on an HTTP listener (f, from rawListener) for the
// handshake loop. The accept runs inside f's RawConn.Read, which holds the
// fd: a concurrent Close cannot have its number reused under it.
func (p *Proxy) rawAcceptLoop(f *os.File, listener string, l *hsLoop) {
	defer p.wg.Done()
	rc, err := f.SyscallConn()
	if err != nil {
		p.log.Error().Err(err).Str("listener", listener).Msg("handshake loop: listener fd")
		return
	}
	var backoff time.Duration
	for {
		var fd int
		var ip netip.Addr
		var aerr error
		err := rc.Read(func(lfd uintptr) bool {
			fd, ip, aerr = accept4(int(lfd))
			if fdExhausted(aerr) && !listenerReadable(int(lfd), 0) {
				// At the fd limit accept fails even with no client
				// waiting: wait for one (then accept, or turn it away).
				return false
			}
			return !errors.Is(aerr, unix.EAGAIN)
		})
		if err != nil {
			if !p.shuttingDown.Load() && !errors.Is(err, os.ErrClosed) {
				p.log.Error().Err(err).Str("listener", listener).Msg("handshake loop: accept stopped")
			}
			return
		}
		if aerr != nil {
			if errors.Is(aerr, unix.ECONNABORTED) || errors.Is(aerr, unix.EINTR) {
				continue
			}
			if fdExhausted(aerr) && p.shedRaw(rc.Read, kindHTTP, listener) {
				continue
			}
			backoff = p.acceptBackoff(backoff, aerr)
			continue
		}
		backoff = 0
		p.rawServe(l, fd, ip, listener)
	}
}

// accept4 accepts a non-blocking connection on lfd and returns the peer's
// IP. Not unix.Accept4: its sockaddr conversion asks the listener for
// SO_PROTOCOL on every IPv4 accept (one system call per connection).
func accept4(lfd int) (int, netip.Addr, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.Addr{}, e
	}
	var ip netip.Addr
	switch rsa.Addr.Family {
	case unix.AF_INET:
		ip = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa)).Addr)
	case unix.AF_INET6:
		ip = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa)).Addr).Unmap()
	}
	return int(r), ip, nil
}

// rawServe sets up an accepted connection and runs the loop's first steps:
// adoption, the first read, the request head, the backend choice and the
// connect. It runs in the accept goroutine: every step is a non-blocking
// system call.
func (p *Proxy) rawServe(l *hsLoop, fd int, ip netip.Addr, listener string) {
	ticket, reason := p.limiter.Admit(ip)
	if reason != limit.OK {
		if c, err := dataplane.FileConn(fd); err == nil {
			p.refuse(c, kindHTTP, listener, reason)
		}
		return
	}
	cookie, err := l.raw.AdoptFD(fd)
	if err != nil {
		// Adopt before the first read: the kernel path needs it.
		unix.Close(fd)
		ticket.Release()
		p.log.Error().Err(err).Msg("adopt client connection")
		return
	}
	h := &rawHS{p: p, l: l, ip: ip.String(), accepted: time.Now(),
		client: dataplane.RawSock{FD: fd, Cookie: cookie, Prepare: p.keepAlive}, bk: dataplane.RawSock{FD: -1}, loopFD: -1}
	h.track = p.track(listener, ticket)
	p.mu.Lock()
	if p.shuttingDown.Load() {
		p.mu.Unlock()
		l.raw.ReleaseFD(h.client)
		h.track.release()
		return
	}
	// Counted as a connection goroutine would be: the drain waits for it.
	p.wg.Add(1)
	p.mu.Unlock()
	p.connections.Add(1)

	if !h.takeRequest() {
		h.waitClient()
	}
}

// takeRequest reads the client's request head (a non-blocking read) and,
// for a WebSocket upgrade the loop serves, starts the backend's connect;
// anything else goes to the goroutine path. It reports false when nothing
// has arrived yet: the head is then waited for in the loop.
func (h *rawHS) takeRequest() bool {
	p := h.p
	// At most MaxHeaderBytes: what the goroutine path's reader holds,
	// so that it can take these bytes back in one piece (serveFrom).
	bp := h.l.bufs.Get().(*[]byte)
	n, err := unix.Read(h.client.FD, *bp)
	if n > 0 {
		h.client.Read = int64(n)
		h.buf = append([]byte(nil), (*bp)[:n]...)
	}
	h.l.bufs.Put(bp)
	if errors.Is(err, unix.EAGAIN) {
		return false
	}
	if err != nil || n <= 0 {
		// EOF or an error: the goroutine path sees it again and closes.
		h.toGo()
		return true
	}
	req, headLen, err := parseRequest(p, h.buf)
	if err != nil || req.Method == "CONNECT" || !websocket.IsUpgrade(req.Header) ||
		websocket.CheckRequest(req) != nil || req.HasBody() {
		// Incomplete (the rest is still on its way), malformed, not a
		// WebSocket upgrade, or one the goroutine path refuses: it reads
		// (and answers) the request again, from these bytes on.
		h.toGo()
		return true
	}
	h.req, h.headLen, h.start = req, headLen, time.Now()
	p.handshakes.Add(1)
	h.breq = p.backendRequest(h.ip, req)
	h.dial()
	return true
}

// waitClient waits in the loop for the client's first bytes, until the
// head timeout.
func (h *rawHS) waitClient() {
	h.deadline = h.accepted.Add(h.p.conf().HeaderTimeout)
	if !h.l.add(h, h.client.FD, unix.EPOLLIN|unix.EPOLLRDHUP) {
		h.toGo()
		return
	}
	// Shutdown sets shuttingDown before it closes the idle connections
	// in the loop (abortIdle): one added after that scan sees the flag.
	if h.p.shuttingDown.Load() {
		h.abort()
	}
}

// parseRequest parses the request head at the start of b; it returns its
// length. An incomplete head is an error (io.ErrUnexpectedEOF).
func parseRequest(p *Proxy, b []byte) (*http1.RequestHead, int, error) {
	br := p.readers.Get().(*bufio.Reader)
	rd := bytes.NewReader(b)
	br.Reset(rd)
	req, err := http1.ReadRequestHead(br, p.cfg.MaxHeaderBytes)
	n := len(b) - br.Buffered() - rd.Len()
	br.Reset(nil)
	p.readers.Put(br)
	return req, n, err
}

// parseResponse parses the response head at the start of b, skipping
// interim 1xx heads as the goroutine path does; it returns the head and
// the length of all it consumed.
func parseResponse(p *Proxy, b []byte) (*http1.ResponseHead, int, error) {
	br := p.readers.Get().(*bufio.Reader)
	rd := bytes.NewReader(b)
	br.Reset(rd)
	var resp *http1.ResponseHead
	var err error
	for i := 0; ; i++ {
		resp, err = http1.ReadResponseHead(br, p.cfg.MaxHeaderBytes)
		if i > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the real answer is still to come
		}
		if err != nil || resp.Status == 101 || resp.Status >= 200 || i == maxInterim {
			break
		}
	}
	err = finalAnswer(resp, err)
	n := len(b) - br.Buffered() - rd.Len()
	br.Reset(nil)
	p.readers.Put(br)
	return resp, n, err
}

// dial picks a backend and starts a non-blocking connect to it; the loop
// takes over from there. A backend given by name (the loop does not
// resolve) or no backend at all goes to the goroutine path.
func (h *rawHS) dial() {
	p := h.p
	lease, err := p.pool.Acquire(h.breq, h.tried)
	if err != nil {
		h.toGoUpgrade(nil)
		return
	}
	be := lease.Backend()
	ap, perr := netip.ParseAddrPort(be.Addr())
	if perr != nil {
		// The goroutine path resolves the name and dials it with this
		// lease: acquiring another there would move the balancer on
		// again (round-robin would never pick a backend given by name).
		h.toGoUpgrade(lease)
		return
	}
	// Until spliced, a drain deadline closes the handshake.
	lease.SetCloser(h.abort)
	h.lease = lease
	fd, err := rawConnect(ap, p.conf().TCPKeepAliveOff)
	if err != nil {
		h.connectFailed(fmt.Errorf("dial backend %s: %w", be.Addr(), err))
		return
	}
	h.mu.Lock()
	h.bk = dataplane.RawSock{FD: fd, Prepare: p.keepAlive}
	h.mu.Unlock()
	h.deadline = time.Now().Add(p.conf().DialTimeout)
	if !h.l.add(h, fd, unix.EPOLLOUT|unix.EPOLLIN|unix.EPOLLRDHUP) {
		h.connectFailed(fmt.Errorf("dial backend %s: %w", be.Addr(), net.ErrClosed))
	}
}

// rawConnect opens a non-blocking socket to ap and starts connecting.
func rawConnect(ap netip.AddrPort, keepAliveOff bool) (int, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Unmap().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	// As Go's net package and the goroutine path set them.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = setKeepAlive(fd, keepAliveOff)
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return fd, nil
}

// connectFailed ends a connect attempt: the backend's failure is counted,
// and the goroutine path tries the next backend (or answers 502).
func (h *rawHS) connectFailed(err error) {
	p := h.p
	be := h.lease.Backend()
	h.mu.Lock()
	if h.bk.FD >= 0 {
		unix.Close(h.bk.FD)
		h.bk = dataplane.RawSock{FD: -1}
	}
	aborted := h.done
	h.mu.Unlock()
	h.lease.Release()
	h.lease = nil
	cerr := &connectError{err}
	if localResourceError(err) && !aborted {
		// Out of fds here, handing the client to Go (a duplicate fd)
		// would fail too: answer from the loop.
		p.refusedLocal(err)
		h.answerRaw(503, errLocalResources, retryLater)
		return
	}
	if !aborted {
		p.reportConnect(be, cerr)
		p.log.Warn().Err(err).Str("backend", be.Addr()).Int("attempt", len(h.tried)+1).Msg("backend connect failed")
	}
	h.tried = append(h.tried, be)
	h.lastErr = cerr
	h.toGoUpgrade(nil)
}

// add registers fd, one of h's sockets, with the loop for events, with
// h.deadline.
func (l *hsLoop) add(h *rawHS, fd int, events uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	h.loopFD = fd
	l.conns[int32(fd)] = h
	heap.Push(&l.timers, h)
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		delete(l.conns, int32(fd))
		heap.Remove(&l.timers, h.heapIdx)
		h.loopFD = -1
		return false
	}
	if l.timers[0] == h {
		_ = l.file.SetReadDeadline(h.deadline)
	}
	return true
}

// remove takes h out of the loop (before the socket it waits on is closed
// or handed over).
func (l *hsLoop) remove(h *rawHS) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fd := h.loopFD
	if fd < 0 || l.conns[int32(fd)] != h {
		return
	}
	delete(l.conns, int32(fd))
	h.loopFD = -1
	if h.heapIdx >= 0 {
		heap.Remove(&l.timers, h.heapIdx)
	}
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// run serves the loop until it is closed.
func (l *hsLoop) run() {
	evs := make([]unix.EpollEvent, 128)
	for {
		var n int
		var werr error
		err := l.rc.Read(func(uintptr) bool {
			n, werr = unix.EpollWait(l.epfd, evs, 0)
			return n > 0 || (werr != nil && !errors.Is(werr, unix.EINTR))
		})
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.expire()
			continue
		case err != nil:
			return // closed
		case werr != nil:
			l.p.log.Error().Err(werr).Msg("handshake loop: epoll_wait")
			return
		}
		for i := 0; i < n; i++ {
			l.mu.Lock()
			h := l.conns[evs[i].Fd]
			l.mu.Unlock()
			if h != nil {
				h.event(evs[i].Events)
			}
		}
		l.expire()
	}
}

// expire fails the handshakes past their deadline and sets the wait's
// deadline to the next one.
func (l *hsLoop) expire() {
	now := time.Now()
	for {
		l.mu.Lock()
		if len(l.timers) == 0 {
			_ = l.file.SetReadDeadline(time.Time{})
			l.mu.Unlock()
			return
		}
		h := l.timers[0]
		if h.deadline.After(now) {
			_ = l.file.SetReadDeadline(h.deadline)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		h.timeout()
	}
}

// event handles readiness of h's backend socket.
func (h *rawHS) event(ev uint32) {
	if h.loopFD == h.client.FD {
		// The client's first bytes (or its close).
		h.l.remove(h)
		if !h.takeRequest() {
			h.toGo() // woken with nothing to read: let Go wait
		}
		return
	}
	if !h.connected {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		h.connectDone()
		return
	}
	h.readAnswer()
}

// timeout ends h at its deadline: a connect that did not finish is a
// connect failure; a backend that did not answer gets the goroutine path's
// 504.
func (h *rawHS) timeout() {
	waitingClient := h.loopFD == h.client.FD
	h.l.remove(h)
	if waitingClient {
		h.toGo() // answers 408: the head deadline has passed
		return
	}
	if !h.connected {
		h.connectFailed(fmt.Errorf("dial backend %s: %w", h.lease.Backend().Addr(), os.ErrDeadlineExceeded))
		return
	}
	h.toGoAnswered(nil, 0, fmt.Errorf("read response: %w", os.ErrDeadlineExceeded))
}

// connectDone checks the connect's result, adopts the socket and sends the
// request.
func (h *rawHS) connectDone() {
	p := h.p
	be := h.lease.Backend()
	fd := h.bk.FD
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soErr != 0 {
		err = unix.Errno(soErr)
	}
	if err != nil {
		h.l.remove(h)
		h.connectFailed(fmt.Errorf("dial backend %s: %w", be.Addr(), err))
		return
	}
	h.connected = true
	p.reportConnect(be, nil)
	cookie, err := h.l.raw.AdoptFD(fd)
	if err != nil {
		// Not the backend's fault: no retry (as dialBackend).
		h.l.remove(h)
		h.toGoAnswered(nil, 0, fmt.Errorf("adopt backend connection %s: %w", be.Addr(), err))
		return
	}
	h.bk.Cookie = cookie
	out := backendUpgradeRequest(h.req, h.breq.SourceIP, "http")
	n, err := unix.Write(fd, out)
	if n > 0 {
		h.bk.Written += int64(n)
	}
	if err == nil && n < len(out) {
		err = io.ErrShortWrite // a fresh socket takes a head whole
	}
	if err != nil {
		h.l.remove(h)
		p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed: write request")
		h.toGoAnswered(nil, 0, fmt.Errorf("write request: %w", err))
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	_ = unix.EpollCtl(h.l.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	// The backend gets ResponseTimeout to read the handshake and answer it.
	h.l.mu.Lock()
	h.deadline = time.Now().Add(p.conf().ResponseTimeout)
	heap.Fix(&h.l.timers, h.heapIdx)
	h.l.mu.Unlock()
}

// readAnswer reads the backend's answer; a valid 101 splices the pair.
func (h *rawHS) readAnswer() {
	p := h.p
	max := p.cfg.MaxHeaderBytes
	var b [4096]byte
	n, err := unix.Read(h.bk.FD, b[:])
	switch {
	case errors.Is(err, unix.EAGAIN):
		return
	case err != nil:
		h.l.remove(h)
		h.toGoAnswered(nil, 0, fmt.Errorf("read response: %w", err))
		return
	}
	h.bk.Read += int64(n)
	h.resp = append(h.resp, b[:n]...)
	resp, used, perr := parseResponse(p, h.resp)
	if n == 0 || (perr == nil || !errors.Is(perr, io.ErrUnexpectedEOF)) || len(h.resp) > 2*max {
		// An answer, an error, or the backend's FIN: done waiting.
		h.l.remove(h)
		if perr == nil && resp.Status == 101 &&
			websocket.CheckResponse(resp, h.req.Header.Get("Sec-WebSocket-Key")) == nil {
			h.splice(resp, used)
			return
		}
		h.toGoAnswered(resp, used, perr)
	}
}

// splice hands the pair to the data plane after a valid 101.
func (h *rawHS) splice(resp *http1.ResponseHead, used int) {
	p := h.p
	be := h.lease.Backend()
	res := &handshakeResult{start: h.start}
	if pipelined := h.buf[h.headLen:]; len(pipelined) > 0 {
		// Whatever the client sent behind its request goes to the
		// backend first (see upgradeCounted).
		n, err := unix.Write(h.bk.FD, pipelined)
		if n > 0 {
			h.bk.Written += int64(n)
		}
		if err == nil && n < len(pipelined) {
			err = io.ErrShortWrite
		}
		if err != nil {
			// The backend answered, then went away (or cannot take
			// the bytes): the client is told, as for any backend
			// that fails during its handshake.
			p.log.Warn().Err(err).Str("backend", be.Addr()).Msg("websocket handshake failed: write pipelined bytes")
			h.failWith(res, 502, "backend failed")
			return
		}
	}
	toClient := switchingHead(resp, p.stickyField(h.breq, be))
	toClient = append(toClient, h.resp[used:]...)
	h.mu.Lock()
	if h.done { // aborted
		h.mu.Unlock()
		h.fail(res)
		return
	}
	h.done = true
	client, bk := h.client, h.bk
	h.mu.Unlock()
	p.connections.Add(-1)
	defer p.wg.Done()
	// From here a drain deadline closes the pair (as connectBackend's).
	h.lease.SetCloser(h.track.close)
	h.track.splicing(h.lease)
	var err error
	if _, converts := h.l.raw.(*dataplane.Userspace); converts {
		// It turns both fds into Go conns (net.FileConn: a duplicate
		// for a moment each): at the fd limit that would close the
		// client before its 101. The reserve lends the one fd.
		p.fds.lend(func() { err = h.l.raw.SpliceFD(client, bk, toClient, h.track) })
	} else {
		err = h.l.raw.SpliceFD(client, bk, toClient, h.track)
	}
	if err != nil {
		h.track.PairEnded(dataplane.PairCounts{}) // releases the lease
		p.handshakeErrors.Add(1)
		p.metrics.handshakeDone(0, h.start)
		p.spliceFailed(err, be.Addr())
		return
	}
	p.handshakesLoop.Add(1)
	p.metrics.handshakeDone(101, h.start)
	if p.log.Debug().Enabled() {
		p.log.Debug().Str("remote", h.ip).Str("backend", be.Addr()).Str("target", h.req.Target).
			Str("dataplane", p.dp.Name()).Msg("websocket spliced")
	}
}

// fail closes both sockets of a handshake that cannot go on: the client
// sees a close (as after the goroutine path's reject(0)).
func (h *rawHS) fail(res *handshakeResult) { h.failWith(res, 0, "") }

// failWith is fail, the client answered with status and msg first
// (status 0: not answered).
func (h *rawHS) failWith(res *handshakeResult, status int, msg string) {
	p := h.p
	h.mu.Lock()
	aborted := h.done
	h.done = true
	client, bk := h.client, h.bk
	h.mu.Unlock()
	if aborted {
		status = 0 // nothing was answered
	}
	if status != 0 {
		_, _ = unix.Write(client.FD, errorAnswer(status, msg, nil))
		_ = unix.Shutdown(client.FD, unix.SHUT_WR)
	}
	p.handshakeErrors.Add(1)
	p.metrics.handshakeDone(status, res.start)
	h.l.raw.ReleaseFD(client)
	if bk.FD >= 0 {
		h.l.raw.ReleaseFD(bk)
	}
	if h.lease != nil {
		h.lease.Release()
	}
	h.track.release()
	p.connections.Add(-1)
	p.wg.Done()
}

// abort closes h's sockets from another goroutine (a drain deadline, a
// forced shutdown): shutdown(2) makes the loop's next system call on them
// fail, and the loop ends the handshake.
func (h *rawHS) abort() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return
	}
	h.done = true
	_ = unix.Shutdown(h.client.FD, unix.SHUT_RDWR)
	if h.bk.FD >= 0 {
		_ = unix.Shutdown(h.bk.FD, unix.SHUT_RDWR)
	}
}

// answerRaw answers the client with wsplice's own error from the loop
// (a non-blocking write: the answer fits in the socket's buffer) and ends
// the handshake, as clientConn does when it cannot hand over.
func (h *rawHS) answerRaw(status int, msg string, extra http1.Header) {
	p := h.p
	h.mu.Lock()
	aborted := h.done
	h.done = true
	h.mu.Unlock()
	if !aborted {
		_, _ = unix.Write(h.client.FD, errorAnswer(status, msg, extra))
		_ = unix.Shutdown(h.client.FD, unix.SHUT_WR)
		p.handshakeErrors.Add(1)
		p.metrics.handshakeDone(status, h.start)
	}
	h.l.raw.ReleaseFD(h.client)
	h.track.release()
	p.connections.Add(-1)
	p.wg.Done()
}

// clientConn hands the client socket to Go's net package; nil if the
// handshake was aborted or the socket could not be handed over (then it is
// closed and the handshake ended).
func (h *rawHS) clientConn() *clientConn {
	p := h.p
	h.mu.Lock()
	aborted := h.done
	h.done = true
	var conn *dataplane.Conn
	var err error
	if !aborted {
		conn, err = h.l.raw.ConnFD(h.client)
	}
	h.mu.Unlock()
	if aborted || err != nil {
		if err != nil {
			p.log.Error().Err(err).Msg("handshake loop: hand the client to Go")
		} else {
			h.l.raw.ReleaseFD(h.client)
		}
		h.track.release()
		p.connections.Add(-1)
		p.wg.Done()
		return nil
	}
	cc := &clientConn{p: p, conn: conn, kind: kindHTTP, track: h.track, tried: h.tried, triedErr: h.lastErr}
	h.track.mu.Lock()
	h.track.cc = cc
	h.track.mu.Unlock()
	p.mu.Lock()
	p.conns[cc] = struct{}{}
	p.mu.Unlock()
	return cc
}

// toGo hands the connection to the goroutine path before the loop has
// taken its request: the goroutine path reads it from the bytes the loop
// read, then from the socket.
func (h *rawHS) toGo() {
	cc := h.clientConn()
	if cc == nil {
		return
	}
	// The head timeout runs from the accept, as on the goroutine path.
	cc.headDeadline = h.accepted.Add(h.p.conf().HeaderTimeout)
	go cc.serveFrom(h.buf, nil)
}

// toGoUpgrade hands the connection to the goroutine path with its request
// taken and counted, before a backend connection exists, and the lease
// of the backend to dial first (nil: none chosen).
func (h *rawHS) toGoUpgrade(lease *backend.Lease) {
	cc := h.clientConn()
	if cc == nil {
		if lease != nil {
			lease.Release()
		}
		return
	}
	cc.lease = lease
	if lease != nil {
		// Until connectBackend sets it again: a drain deadline closes
		// the connection meanwhile too.
		lease.SetCloser(cc.track.close)
	}
	req, start := h.req, h.start
	go cc.serveFrom(h.buf[h.headLen:], func() bool { return cc.upgradeCounted(req, start) })
}

// toGoAnswered hands both connections to the goroutine path once the
// backend has answered with resp (its head and interim heads used bytes of
// h.resp), or failed with err: it relays a refusal, or answers the error.
func (h *rawHS) toGoAnswered(resp *http1.ResponseHead, used int, err error) {
	p := h.p
	lease := h.lease
	h.mu.Lock()
	aborted := h.done
	var bconn *dataplane.Conn
	var cerr error
	if !aborted {
		bconn, cerr = h.l.raw.ConnFD(h.bk)
		// The fd is closed either way (a duplicate took its place):
		// abort must not touch the number.
		h.bk.FD = -1
	}
	h.mu.Unlock()
	if aborted || cerr != nil {
		if cerr != nil {
			p.log.Error().Err(cerr).Msg("handshake loop: hand the backend to Go")
		}
		h.fail(&handshakeResult{start: h.start})
		return
	}
	cc := h.clientConn()
	if cc == nil {
		p.dp.Release(bconn)
		lease.Release()
		return
	}
	lease.SetCloser(cc.track.close)
	bbr := p.readers.Get().(*bufio.Reader)
	bbr.Reset(io.MultiReader(bytes.NewReader(h.resp[used:]), bconn))
	req, breq, start := h.req, h.breq, h.start
	go cc.serveFrom(h.buf[h.headLen:], func() bool {
		defer func() {
			bbr.Reset(nil)
			p.readers.Put(bbr)
		}()
		res := &handshakeResult{cc: cc, start: start}
		return cc.answered(res, req, breq, lease, bconn, bbr, resp, err)
	})
}

// hsTimers is a min-heap of handshakes by deadline.
type hsTimers []*rawHS

func (t hsTimers) Len() int           { return len(t) }
func (t hsTimers) Less(i, j int) bool { return t[i].deadline.Before(t[j].deadline) }
func (t hsTimers) Swap(i, j int) {
	t[i], t[j] = t[j], t[i]
	t[i].heapIdx, t[j].heapIdx = i, j
}
func (t *hsTimers) Push(x any) {
	h := x.(*rawHS)
	h.heapIdx = len(*t)
	*t = append(*t, h)
}
func (t *hsTimers) Pop() any {
	old := *t
	h := old[len(old)-1]
	old[len(old)-1] = nil
	h.heapIdx = -1
	*t = old[:len(old)-1]
	return h
}
