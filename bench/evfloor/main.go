// Command evfloor is the benchmark's second reference: the least a Go
// balancer can do per WebSocket connection when it leaves Go's net package
// and its goroutine per connection aside and runs an event loop of its own,
// as nginx and HAProxy do. One loop per GOMAXPROCS, each with its own epoll
// set (waited for in Go's netpoller) and its own SO_REUSEPORT listener;
// raw non-blocking accept4, read, write, connect. Per connection it reads the
// client's request head, connects to the one backend, forwards the head
// and then relays bytes both ways (the 101 included), passing each
// half-close on. It parses nothing, rewrites nothing, enforces no limit and
// has no timeout: not a product, a floor.
//
// bench/gofloor answers "what does Go's net package cost"; this answers
// "what would a handshake layer outside it cost": scripts/bench.sh runs it
// as the "evfloor" target for the handshake and closed-loop scenarios.
//
// With -sockmap it is the sockmap floor ("smfloor" in scripts/bench.sh):
// once the backend's answer head has been read (and before it is passed
// on, so that neither side can have sent anything yet) both sockets are
// spliced by the least sk_skb verdict there is (bpf/floor.c, loaded by
// loader.Floor), and every later byte goes from socket to socket in the
// kernel; the loop only passes FINs on and closes. This answers "what does
// the kernel mechanism itself cost", per message and per connection,
// without any of wsplice's bookkeeping. Not a data path: bytes still
// queued in the kernel when a FIN is passed on can be lost
// (KERNEL-NOTES 3), and nothing bounds a stalled reader.
//
// Usage: evfloor [-sockmap] LISTEN_ADDR BACKEND_ADDR
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/wsplice/wsplice/loader"
)

// The loop's system calls never block (every socket is non-blocking), so
// they go through RawSyscall: a goroutine in syscall.Syscall is "in a
// system call" for the scheduler, and one that stays there longer than a
// sysmon tick (a loopback connect, write or shutdown runs the peer's
// receive path inline) has its scheduler slot taken and handed on, which
// keeps sysmon waking every 20 µs.
func rawRead(fd int, p []byte) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return ret(r, e)
}

func rawWrite(fd int, p []byte) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return ret(r, e)
}

func rawAccept(lfd int) (int, error) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
	return ret(r, e)
}

func rawConnect(fd int, sa unsafe.Pointer, n uintptr) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(sa), n)
	if e != 0 {
		return e
	}
	return nil
}

func rawSocket(family int) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	return ret(r, e)
}

func rawEpollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func rawShutdown(fd int) {
	syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(fd), syscall.SHUT_WR, 0)
}

func rawClose(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawNodelay(fd int) {
	one := int32(1)
	syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0)
}

func ret(r uintptr, e syscall.Errno) (int, error) {
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// maxHead bounds a request head; a longer one closes the connection.
const maxHead = 16 << 10

// bufSize is each loop's read buffer.
const bufSize = 64 << 10

func main() {
	sockmap := flag.Bool("sockmap", false, "splice each pair with bpf/floor.c after the backend's answer head")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: evfloor [-sockmap] LISTEN_ADDR BACKEND_ADDR")
		os.Exit(2)
	}
	laddr, err := net.ResolveTCPAddr("tcp", flag.Arg(0))
	if err != nil {
		fatal(err)
	}
	baddr, err := net.ResolveTCPAddr("tcp", flag.Arg(1))
	if err != nil {
		fatal(err)
	}
	var fl *loader.Floor
	if *sockmap {
		if fl, err = loader.NewFloor(); err != nil {
			fatal(err)
		}
	}
	n := runtime.GOMAXPROCS(0)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		lfd, err := listen(laddr)
		if err != nil {
			fatal(err)
		}
		l := &loop{lfd: lfd, family: family(baddr), conns: map[int]*conn{}, buf: make([]byte, bufSize), floor: fl}
		l.sa, l.salen = rawSockaddr(baddr)
		go func() { errs <- l.run() }()
	}
	fatal(<-errs)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "evfloor:", err)
	os.Exit(1)
}

func family(a *net.TCPAddr) int {
	if a.IP.To4() != nil {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func sockaddr(a *net.TCPAddr) syscall.Sockaddr {
	if ip4 := a.IP.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: a.Port}
		copy(sa.Addr[:], ip4)
		return sa
	}
	sa := &syscall.SockaddrInet6{Port: a.Port}
	copy(sa.Addr[:], a.IP.To16())
	return sa
}

// rawSockaddr is a in the kernel's layout.
func rawSockaddr(a *net.TCPAddr) (unsafe.Pointer, uintptr) {
	port := uint16(a.Port>>8) | uint16(a.Port&0xff)<<8 // network order
	if ip4 := a.IP.To4(); ip4 != nil {
		sa := &syscall.RawSockaddrInet4{Family: syscall.AF_INET, Port: port}
		copy(sa.Addr[:], ip4)
		return unsafe.Pointer(sa), syscall.SizeofSockaddrInet4
	}
	sa := &syscall.RawSockaddrInet6{Family: syscall.AF_INET6, Port: port}
	copy(sa.Addr[:], a.IP.To16())
	return unsafe.Pointer(sa), syscall.SizeofSockaddrInet6
}

// listen opens one SO_REUSEPORT listener: the kernel spreads connections
// over the loops' listeners. TCP_NODELAY on it is inherited by accepted
// sockets.
func listen(a *net.TCPAddr) (int, error) {
	fd, err := syscall.Socket(family(a), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	for _, o := range [][2]int{{syscall.SOL_SOCKET, syscall.SO_REUSEADDR}, {syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */}, {syscall.IPPROTO_TCP, syscall.TCP_NODELAY}} {
		if err := syscall.SetsockoptInt(fd, o[0], o[1], 1); err != nil {
			return -1, fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := syscall.Bind(fd, sockaddr(a)); err != nil {
		return -1, fmt.Errorf("bind %s: %w", a, err)
	}
	if err := syscall.Listen(fd, 4096); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// conn is one socket of a pair.
type conn struct {
	fd   int
	peer *conn
	// head collects the client's request head until the backend is
	// dialled (client sockets), and with -sockmap the backend's answer
	// head until the pair is spliced (backend sockets).
	head []byte
	// backend: this socket is the one the loop connected.
	backend bool
	// spliced: the kernel carries this socket's bytes (-sockmap).
	spliced bool
	// out holds bytes for this socket that a write could not take yet.
	out        []byte
	events     uint32 // registered epoll interest
	rdEOF      bool   // read returned 0: FIN passed (or to pass) to peer
	shutAfter  bool   // shut down writing once out is flushed
	wrShut     bool
	registered bool
}

type loop struct {
	lfd, epfd int
	family    int
	// sa and salen are the backend's address as connect(2) takes it.
	sa    unsafe.Pointer
	salen uintptr
	conns map[int]*conn
	buf   []byte
	// floor splices pairs in the kernel once the backend has answered
	// (-sockmap); nil relays every byte.
	floor *loader.Floor
}

func (l *loop) run() error {
	var err error
	if l.epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, l.lfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(l.lfd)}); err != nil {
		return fmt.Errorf("epoll_ctl listener: %w", err)
	}
	// The loop waits for its epoll set in Go's netpoller (the set's fd is
	// readable when it holds events), not in a blocking epoll_wait: a
	// thread blocked in a system call has its scheduler slot taken by
	// sysmon and handed on, which costs more than the wait.
	if err := syscall.SetNonblock(l.epfd, true); err != nil { // or os.NewFile leaves it out of the poller
		return fmt.Errorf("epoll fd: %w", err)
	}
	f := os.NewFile(uintptr(l.epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("epoll fd: %w", err)
	}
	evs := make([]syscall.EpollEvent, 128)
	for {
		var n int
		var werr error
		if err := rc.Read(func(uintptr) bool {
			n, werr = syscall.EpollWait(l.epfd, evs, 0)
			return n != 0 || (werr != nil && werr != syscall.EINTR)
		}); err != nil {
			return fmt.Errorf("wait for the epoll set: %w", err)
		}
		if werr != nil {
			return fmt.Errorf("epoll_wait: %w", werr)
		}
		for i := 0; i < n; i++ {
			fd := int(evs[i].Fd)
			if fd == l.lfd {
				l.accept()
				continue
			}
			c := l.conns[fd]
			if c == nil {
				continue // closed earlier in this batch
			}
			ev := evs[i].Events
			if ev&syscall.EPOLLOUT != 0 && !l.flush(c) {
				continue
			}
			if ev&(syscall.EPOLLIN|syscall.EPOLLHUP|syscall.EPOLLERR|syscall.EPOLLRDHUP) != 0 && l.conns[fd] == c {
				l.readable(c)
			}
		}
	}
}

func (l *loop) accept() {
	for i := 0; i < 64; i++ {
		fd, err := rawAccept(l.lfd)
		if err != nil {
			return // EAGAIN, or EMFILE and the like: the next event retries
		}
		c := &conn{fd: fd}
		l.conns[fd] = c
		// The head is usually there already: read before registering.
		l.readable(c)
		if l.conns[fd] == c && !c.registered {
			l.interest(c, syscall.EPOLLIN|syscall.EPOLLRDHUP)
		}
	}
}

// interest sets c's epoll interest to ev.
func (l *loop) interest(c *conn, ev uint32) {
	if c.registered && c.events == ev {
		return
	}
	op := syscall.EPOLL_CTL_MOD
	if !c.registered {
		op = syscall.EPOLL_CTL_ADD
	}
	if err := rawEpollCtl(l.epfd, op, c.fd, &syscall.EpollEvent{Events: ev, Fd: int32(c.fd)}); err != nil {
		l.closePair(c)
		return
	}
	c.registered, c.events = true, ev
}

func (l *loop) readable(c *conn) {
	n, err := rawRead(c.fd, l.buf)
	switch {
	case err == syscall.EAGAIN:
		return
	case err != nil:
		l.closePair(c)
		return
	case n == 0:
		l.eof(c)
		return
	}
	data := l.buf[:n]
	if l.floor != nil && c.backend && !c.spliced {
		l.answer(c, data)
		return
	}
	if c.peer == nil { // a client still sending its head
		c.head = append(c.head, data...)
		if bytes.Contains(c.head, []byte("\r\n\r\n")) {
			l.dial(c)
		} else if len(c.head) > maxHead {
			l.closePair(c)
		}
		return
	}
	l.send(c.peer, data)
}

// dial connects client c's backend and queues the head (and anything after
// it) for it.
func (l *loop) dial(c *conn) {
	fd, err := rawSocket(l.family)
	if err != nil {
		l.closePair(c)
		return
	}
	rawNodelay(fd)
	if err := rawConnect(fd, l.sa, l.salen); err != nil && err != syscall.EINPROGRESS {
		rawClose(fd)
		l.closePair(c)
		return
	}
	b := &conn{fd: fd, peer: c, out: c.head, backend: true}
	c.peer, c.head = b, nil
	l.conns[fd] = b
	// Writable once connected; the head goes then.
	l.interest(b, syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP)
}

// answer collects backend b's answer head (-sockmap); once it is whole,
// the pair is spliced and then the head is passed to the client. The
// backend sends nothing more before the client does, and the client
// nothing before it has the head, so no byte can wait in a socket's
// receive queue at the splice (the verdict would never see it:
// KERNEL-NOTES 1). A backend that sends more with its head is not the
// benchmark's echo backend: the pair is closed.
func (l *loop) answer(b *conn, data []byte) {
	b.head = append(b.head, data...)
	i := bytes.Index(b.head, []byte("\r\n\r\n"))
	if i < 0 {
		if len(b.head) > maxHead {
			l.closePair(b)
		}
		return
	}
	c := b.peer
	if i+4 != len(b.head) || len(b.out) > 0 || len(c.out) > 0 || c.rdEOF {
		l.closePair(b)
		return
	}
	if err := l.floor.Splice(c.fd, b.fd); err != nil {
		fmt.Fprintln(os.Stderr, "evfloor: splice:", err)
		l.closePair(b)
		return
	}
	b.spliced, c.spliced = true, true
	head := b.head
	b.head = nil
	// From now on only a FIN (or an error) concerns the loop.
	l.interest(b, syscall.EPOLLRDHUP)
	l.interest(c, syscall.EPOLLRDHUP)
	l.send(c, head)
}

// send writes data to c, queueing what it cannot take.
func (l *loop) send(c *conn, data []byte) {
	if len(c.out) > 0 || c.events&syscall.EPOLLOUT != 0 {
		c.out = append(c.out, data...)
		return
	}
	n, err := rawWrite(c.fd, data)
	if err != nil && err != syscall.EAGAIN {
		l.closePair(c)
		return
	}
	if n < 0 {
		n = 0
	}
	if n < len(data) {
		c.out = append(c.out[:0], data[n:]...)
		l.interest(c, c.events|syscall.EPOLLOUT)
	}
}

// flush writes c's queued bytes; false if the pair was closed.
func (l *loop) flush(c *conn) bool {
	for len(c.out) > 0 {
		n, err := rawWrite(c.fd, c.out)
		if err == syscall.EAGAIN {
			return true
		}
		if err != nil {
			l.closePair(c)
			return false
		}
		c.out = c.out[n:]
	}
	c.out = nil
	if c.shutAfter && !c.wrShut {
		c.wrShut = true
		rawShutdown(c.fd)
		if done(c) {
			l.closePair(c)
			return false
		}
	}
	ev := c.events &^ syscall.EPOLLOUT
	if c.rdEOF {
		ev &^= syscall.EPOLLIN | syscall.EPOLLRDHUP
	}
	l.interest(c, ev)
	return l.conns[c.fd] == c
}

// eof passes c's FIN on to its peer; the pair closes once both ways have
// ended.
func (l *loop) eof(c *conn) {
	if c.rdEOF {
		return // a hang-up reported again
	}
	c.rdEOF = true
	p := c.peer
	if p == nil {
		l.closePair(c)
		return
	}
	if len(p.out) == 0 && p.events&syscall.EPOLLOUT == 0 {
		p.wrShut = true
		rawShutdown(p.fd)
	} else {
		p.shutAfter = true
	}
	if done(c) {
		l.closePair(c)
		return
	}
	l.interest(c, c.events&^(syscall.EPOLLIN|syscall.EPOLLRDHUP))
}

// done reports whether both directions of c's pair have ended.
func done(c *conn) bool {
	p := c.peer
	return p != nil && c.rdEOF && p.rdEOF && c.wrShut && p.wrShut
}

func (l *loop) closePair(c *conn) {
	for _, x := range []*conn{c, c.peer} {
		if x != nil && l.conns[x.fd] == x {
			delete(l.conns, x.fd)
			rawClose(x.fd)
		}
	}
}
