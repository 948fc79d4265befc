package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to read while run writes logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"--help"}, &stdout, &stderr)
	if code := exitCode(err, &stderr); code != 0 {
		t.Fatalf("exit code %d, err %v", code, err)
	}
	for _, flag := range []string{"-listen", "-listen-tls", "-listen-tcp", "-listen-tcp-tls", "-tls-cert", "-tls-key", "-tls-handshake-timeout", "-ktls", "-backend", "-dataplane", "-log-level", "-log-format", "-header-timeout", "-max-header-bytes", "-admin", "-version", "-config", "-max-conns", "-max-conn-rate", "-max-conns-per-ip", "-max-conn-rate-per-ip", "-tcp-keepalive", "-drain-timeout", "-connect-timeout", "-backend-timeout", "/metrics", "Usage: wsplice",
		"-balance", "-sticky-cookie", "-health-check", "-health-interval", "-health-timeout", "-health-rise", "-health-fall", "weight=N", "/backends"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("help lacks %q:\n%s", flag, stdout.String())
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "wsplice ") {
		t.Errorf("version output %q", stdout.String())
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--dataplane", "xdp"},
		{"--log-level", "verbose"},
		{"--log-format", "xml"},
		{"--header-timeout", "soon"},
		{"--header-timeout", "-1s"},
		{"--connect-timeout", "0s"},
		{"--backend-timeout", "-1s"},
		{"--max-header-bytes", "10"},
		{"--backend", "no-port"},
		{"--backend", "h:99999"},
		{"--listen", "nope"},
		{"--admin", "nope"},
		{"--admin", ""},
		{"--admin", "unix:"},
		{"--admin", "unix:@abstract"},
		{"--max-header-bytes", "0"},
		{"stray-argument"},
		{"--listen-tls", ":0"},
		{"--listen-tcp-tls", ":0", "--tls-cert", "a.crt"},
		{"--tls-cert", "a.crt", "--tls-key", "a.key"},
		{"--listen-tls", ":0", "--tls-cert", "a.crt", "--tls-key", "a.key", "--tls-handshake-timeout", "0s"},
		{"--listen-tls", ":0", "--tls-cert", "a.crt", "--tls-key", "a.key", "--ktls", "on"},
		{"--listen-tcp", "nope"},
		{"--backend", "h:1,weight=0"},
		{"--backend", "h:1,weight=x"},
		{"--backend", "h:1,max-conns=-1"},
		{"--backend", "h:1,proxy-protocol=v1"},
		{"--backend", "h:1,color=red"},
		{"--backend", "h:1", "--backend", "h:1,weight=2"},
		{"--balance", "random"},
		{"--balance", "hash-header:"},
		{"--sticky-cookie", "a b"},
		{"--health-check", "udp"},
		{"--health-check", "http:nopath"},
		{"--health-interval", "0s"},
		{"--health-fall", "0"},
		{"--health-rise", "-1"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), args, &stdout, &stderr)
			if code := exitCode(err, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2 (err %v)", code, err)
			}
			if !strings.HasPrefix(stderr.String(), "wsplice: ") || !strings.Contains(stderr.String(), "Run 'wsplice --help' for usage.") {
				t.Errorf("stderr %q", stderr.String())
			}
			if strings.Contains(stdout.String(), "Usage:") {
				t.Errorf("a bad flag printed the whole usage: %q", stdout.String())
			}
		})
	}
}

// TestRunUserspace starts the daemon, checks the one started line and
// stops it through its context.
func TestRunUserspace(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9",
			"--dataplane", "userspace", "--log-level", "info"}, &stdout, &stderr)
	}()
	var started map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for started == nil && time.Now().Before(deadline) {
		for _, line := range strings.Split(stderr.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["message"] == "wsplice started" {
				started = m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if started == nil {
		t.Fatalf("no started line in %q", stderr.String())
	}
	if started["level"] != "info" || started["dataplane"] != "userspace" {
		t.Errorf("started line %v", started)
	}
	listeners, _ := started["listeners"].([]any)
	backends, _ := started["backends"].([]any)
	if len(listeners) != 2 || len(backends) != 1 {
		t.Fatalf("listeners %v backends %v", listeners, backends)
	}
	c, err := net.DialTimeout("tcp", listeners[0].(string), time.Second)
	if err != nil {
		t.Fatalf("dial listener: %v", err)
	}
	c.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if _, err := net.DialTimeout("tcp", listeners[0].(string), time.Second); err == nil {
		t.Error("listener open after shutdown")
	}
	if strings.Count(stderr.String(), "wsplice started") != 1 {
		t.Errorf("logs: %s", stderr.String())
	}
}

// A SIGHUP that arrives before the daemon is up (a service manager's
// reload right after start) must not end the process: it is handled once
// the daemon is up. The test runs itself again as the daemon, which sends
// itself the signal before run starts.
func TestHUPBeforeStart(t *testing.T) {
	if os.Getenv("WSPLICE_TEST_HUP_CHILD") == "1" {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the signal is delivered
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		var stderr syncBuffer
		if err := run(ctx, []string{"--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9", "--admin", "off",
			"--dataplane", "userspace"}, io.Discard, &stderr); err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
		return
	}
	if out, err := runChild("TestHUPBeforeStart", "WSPLICE_TEST_HUP_CHILD=1"); err != nil {
		t.Fatalf("the daemon did not survive a SIGHUP before start: %v\n%s", err, out)
	}
}

// runChild runs this test binary again for the one test named, with env
// added: for tests that need a process of their own (signals, limits).
func runChild(test, env string) ([]byte, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env)
	return cmd.CombinedOutput()
}
