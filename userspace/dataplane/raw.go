package dataplane

import (
	"fmt"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FileConn turns a connected TCP socket fd into a *net.TCPConn (a
// duplicate registered with Go's poller) and closes fd.
func FileConn(fd int) (*net.TCPConn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("socket fd to net.Conn: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("socket fd to net.Conn: not TCP")
	}
	return tc, nil
}

// AdoptFD implements Raw. Userspace needs no per-socket setup.
func (u *Userspace) AdoptFD(fd int) (uint64, error) {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	return 0, nil
}

// ConnFD implements Raw.
func (u *Userspace) ConnFD(sk RawSock) (*Conn, error) {
	tc, err := FileConn(sk.FD)
	if err != nil {
		return nil, err
	}
	if sk.Prepare != nil {
		sk.Prepare(tc)
	}
	return NewConnCounted(tc, sk.Read, sk.Written), nil
}

// ReleaseFD implements Raw.
func (u *Userspace) ReleaseFD(sk RawSock) { _ = unix.Close(sk.FD) }

// SpliceFD implements Raw: the userspace copiers work on Go conns, so both
// fds go to Go's net package first.
func (u *Userspace) SpliceFD(client, backend RawSock, toClient []byte, owner Owner) error {
	cc, err := u.ConnFD(client)
	if err != nil {
		_ = unix.Close(backend.FD)
		return err
	}
	bc, err := u.ConnFD(backend)
	if err != nil {
		_ = cc.Close()
		return err
	}
	cc.Owner = owner
	_ = cc.SetWriteDeadline(time.Now().Add(rawWriteTimeout))
	return u.Splice(cc, bc, toClient)
}

// rawWriteTimeout bounds SpliceFD's write of toClient.
const rawWriteTimeout = 10 * time.Second

// TCPProgress is what fd's peer acknowledged of the bytes sent to it plus
// the bytes received from it (TCP_INFO), for the idle timeout: it grows
// while the connection moves bytes either way, whoever holds them.
func TCPProgress(fd int) (uint64, error) {
	ti, err := TCPInfo(fd)
	if err != nil {
		return 0, err
	}
	return ti.Bytes_acked + ti.Bytes_received, nil
}

// TCPInfo reads TCP_INFO into a value that stays on the caller's stack:
// x/sys's GetsockoptTCPInfo allocates one per call, which came to a
// kilobyte of garbage per handshake on the kernel path (the heap's growth
// between GCs is the daemon's RSS).
func TCPInfo(fd int) (unix.TCPInfo, error) {
	var ti unix.TCPInfo
	n := uint32(unsafe.Sizeof(ti))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&ti)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return ti, fmt.Errorf("getsockopt TCP_INFO: %w", e)
	}
	return ti, nil
}

// connProgress is TCPProgress of c's socket, 0 once it is closed.
func connProgress(c *net.TCPConn) uint64 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n uint64
	_ = rc.Control(func(fd uintptr) { n, _ = TCPProgress(int(fd)) })
	return n
}
