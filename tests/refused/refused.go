// Package refused gives tests a loopback address whose connects are
// refused, and stay refused for the whole test.
//
// Closing a listener and handing out its port is racy: the kernel may give
// the port to another listener (another package's tests run at the same
// time), and the "dead" backend then answers. Addr keeps the port bound
// to a socket that never listens, so a SYN to it gets a reset and no other
// socket can bind it until the test ends.
package refused

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// Addr returns "127.0.0.1:port" with the port held, not listening, until
// t ends.
func Addr(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("refused: socket: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	// No SO_REUSEADDR: a listener that sets it still cannot share the port.
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("refused: bind: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("refused: getsockname: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
}
