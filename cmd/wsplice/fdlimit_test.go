package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLowFDLimit starts the daemon at fd limits from "nothing left but
// what is open" upwards, in a child process (the limit is per process).
// At every limit it either refuses to start with an error that names the
// fd limit, or it starts and answers a client at once (a 5xx: its one
// backend is down); never does it start and leave clients waiting
// unanswered in the listen queue, which it did at a limit of 10 or 11.
func TestLowFDLimit(t *testing.T) {
	if os.Getenv("WSPLICE_TEST_FDLIMIT_CHILD") == "1" {
		lowFDLimitChild(t)
		return
	}
	out, err := runChild("TestLowFDLimit", "WSPLICE_TEST_FDLIMIT_CHILD=1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out)
}

func lowFDLimitChild(t *testing.T) {
	// A free port, found before any limit is lowered (this also opens
	// the runtime's poller fds for good).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	open := uint64(len(entries))
	refused, started := 0, false
	for soft := open + 1; soft <= open+16 && !started; soft++ {
		// The client's socket is made before the limit is lowered: at
		// the limit, this process could not make one.
		cfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		tv := syscall.Timeval{Sec: 2}
		syscall.SetsockoptTimeval(cfd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: soft, Max: orig.Max}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		var stderr syncBuffer
		go func() {
			errc <- run(ctx, []string{"--listen", addr.String(), "--backend", "127.0.0.1:9", "--admin", "off",
				"--dataplane", "userspace", "--log-level", "error"}, io.Discard, &stderr)
		}()
		sa := &syscall.SockaddrInet4{Port: addr.Port, Addr: [4]byte{127, 0, 0, 1}}
		deadline := time.Now().Add(3 * time.Second)
		connected, refusedHere := false, false
	wait:
		for time.Now().Before(deadline) {
			select {
			case err := <-errc:
				if err == nil || !strings.Contains(err.Error(), "fd limit") && !strings.Contains(err.Error(), "too many open files") {
					t.Fatalf("limit %d: run returned %v, want an error that names the fd limit", soft, err)
				}
				t.Logf("limit %d: refused: %v", soft, err)
				// A refused start leaves nothing open (the client's
				// socket aside): a leak here once kept every higher
				// limit refused too.
				if after, _ := os.ReadDir("/proc/self/fd"); uint64(len(after)) != open+1 {
					t.Errorf("limit %d: %d fds open after the refusal, want %d", soft, len(after)-1, open)
				}
				refused++
				refusedHere = true
				break wait
			default:
			}
			if syscall.Connect(cfd, sa) == nil {
				connected = true
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if connected {
			started = true
			syscall.Write(cfd, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			buf := make([]byte, 512)
			n, err := syscall.Read(cfd, buf)
			if err != nil || n < 12 || !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 5")) {
				t.Errorf("limit %d: started, but a client got %q (err %v) within 2 s, want a 5xx at once", soft, buf[:max(n, 0)], err)
			} else {
				t.Logf("limit %d: started; a client got %q", soft, bytes.SplitN(buf[:n], []byte("\r\n"), 2)[0])
			}
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("limit %d: run: %v", soft, err)
			}
		} else if !refusedHere {
			cancel()
			t.Fatalf("limit %d: neither started nor refused within 3 s\n%s", soft, stderr.String())
		}
		cancel()
		syscall.Close(cfd)
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	}
	if refused == 0 || !started {
		t.Fatalf("refused at %d limits, started: %v; want refusals at the lowest limits, then a start", refused, started)
	}
}
