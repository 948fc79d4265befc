// Package ktls moves a TLS 1.3 session that Go's crypto/tls negotiated into
// the kernel (kernel TLS): after the handshake the traffic keys are derived
// from the secrets Go hands to tls.Config.KeyLogWriter, the TLS ULP is set
// on the socket and the keys installed for both directions. From then on the
// socket reads and writes plaintext, which splice(2) can move.
//
// Go's crypto/tls exposes neither its keys nor its record sequence numbers,
// so this package keeps the two things it needs true by construction:
//   - no record is read past the end of the handshake: the server handshake
//     runs over a Conn that never returns bytes beyond the current record,
//     so whatever the client sent after its Finished is still in the socket
//     for the kernel to decrypt, and every record is counted both ways;
//   - no record is sent under the application keys during the handshake:
//     the Config used must have SessionTicketsDisabled (Go otherwise sends
//     NewSessionTicket messages in the server's first flight).
//
// TLS 1.2 sessions are not moved: they stay on the Go relay (ErrUnsupported).
package ktls

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrUnsupported wraps every reason a session cannot go to the kernel while
// the connection stays usable through Go's crypto/tls.
var ErrUnsupported = errors.New("kernel TLS unsupported")

// From include/uapi/linux/tls.h; golang.org/x/sys/unix lacks most of them.
const (
	solTLS           = unix.SOL_TLS
	tlsTX            = 1
	tlsRX            = 2
	tlsGetRecordType = 2 // cmsg type carrying a received record's type
	tls13Version     = 0x0304

	cipherAESGCM128        = 51
	cipherAESGCM256        = 52
	cipherChaCha20Poly1305 = 54
)

// Record content types (RFC 8446 §5.1).
const (
	RecordAlert           = 21
	RecordHandshake       = 22
	RecordApplicationData = 23
)

// ulpPath lists the upper layer protocols TCP sockets can take.
const ulpPath = "/proc/sys/net/ipv4/tcp_available_ulp"

var (
	availOnce sync.Once
	availErr  error
)

// Available reports whether the kernel offers the "tls" ULP, loading the
// module with modprobe once if it is not listed yet. The answer is cached.
func Available() error {
	availOnce.Do(func() { availErr = available() })
	return availErr
}

func available() error {
	if ulpListed() {
		return nil
	}
	out, err := exec.Command("modprobe", "tls").CombinedOutput()
	if ulpListed() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %q not in %s and modprobe tls failed: %w (%s)", ErrUnsupported, "tls", ulpPath, err, strings.TrimSpace(string(out)))
	}
	return fmt.Errorf("%w: %q not in %s (kernel built without CONFIG_TLS?)", ErrUnsupported, "tls", ulpPath)
}

func ulpListed() bool {
	b, err := os.ReadFile(ulpPath)
	if err != nil {
		return false
	}
	for _, u := range strings.Fields(string(b)) {
		if u == "tls" {
			return true
		}
	}
	return false
}

// ModulePresent reports whether the running kernel has TLS, listed or as
// a module file; tests use it to refuse to skip where kTLS must work.
func ModulePresent() bool {
	if ulpListed() {
		return true
	}
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	rel := unix.ByteSliceToString(u.Release[:])
	for _, ext := range []string{"", ".xz", ".zst"} {
		if _, err := os.Stat("/lib/modules/" + rel + "/kernel/net/tls/tls.ko" + ext); err == nil {
			return true
		}
	}
	return false
}

// Probe reports, for each cipher suite name, whether the kernel accepts
// keys for it in both directions, by installing dummy keys on loopback
// socket pairs. Ciphers whose crypto module is missing show false.
func Probe() (map[string]bool, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	res := make(map[string]bool)
	for _, s := range suites {
		ok, err := probeSuite(s)
		if err != nil {
			return nil, err
		}
		res[s.name] = ok
	}
	return res, nil
}

func probeSuite(s suite) (bool, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return false, fmt.Errorf("probe listener: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return false, fmt.Errorf("probe dial: %w", err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		return false, fmt.Errorf("probe accept: %w", err)
	}
	defer a.Close()
	var keys directionKeys
	keys.key = make([]byte, s.keyLen)
	keys.iv = make([]byte, 12)
	err = install(a.(*net.TCPConn), s, keys, keys, 0, 0)
	return err == nil, nil
}
