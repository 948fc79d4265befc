package refused

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestAddrRefusesAndStaysTaken(t *testing.T) {
	addr := Addr(t)
	if _, err := net.DialTimeout("tcp", addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	// net.Listen sets SO_REUSEADDR; the held port must still be refused to it.
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("listened on %s while it was held", addr)
	}
}
