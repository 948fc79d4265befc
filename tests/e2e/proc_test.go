package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/topology"
)

// proc is a process started in a namespace, with its output in a file. It
// is stopped in t.Cleanup, and its log tail printed if the test failed.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

func startProc(t *testing.T, ns *topology.NS, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = ns.Command(context.Background(), bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if code, err := p.stop(5 * time.Second); err != nil {
			t.Logf("%s: %v", name, err)
		} else if code != 0 && code != -1 {
			t.Logf("%s exited with status %d", name, code)
		}
		if t.Failed() {
			t.Logf("%s log (last lines):\n%s", name, p.tail(60))
		}
	})
	return p
}

// pid is the program's own PID: nsenter execs it.
func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// status (-1 if killed by a signal).
func (p *proc) wait(timeout time.Duration) (int, error) {
	if !p.exited() {
		select {
		case <-p.done:
		case <-time.After(timeout):
			return 0, fmt.Errorf("%s still running after %v", p.name, timeout)
		}
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	if p.waitErr != nil {
		return 0, p.waitErr
	}
	return 0, nil
}

// stop sends SIGTERM, then SIGKILL after timeout.
func (p *proc) stop(timeout time.Duration) (int, error) {
	if p.exited() {
		return p.wait(0)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	code, err := p.wait(timeout)
	if err != nil {
		p.cmd.Process.Kill()
		p.wait(5 * time.Second)
		return 0, fmt.Errorf("%w; killed", err)
	}
	return code, nil
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	p.wait(5 * time.Second)
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLog waits until a line of the log contains s, and returns it.
func (p *proc) waitLog(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range strings.Split(p.log(), "\n") {
			if strings.Contains(l, s) {
				return l
			}
		}
		if p.exited() {
			code, _ := p.wait(0)
			t.Fatalf("%s exited (status %d) before logging %q:\n%s", p.name, code, s, p.tail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v:\n%s", p.name, s, timeout, p.tail(30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rssBytes is the process's resident set size (VmRSS).
func (p *proc) rssBytes(t *testing.T) int64 {
	t.Helper()
	return procStatusKiB(t, fmt.Sprintf("/proc/%d/status", p.pid()), "VmRSS:") << 10
}

// memAvailable is the machine's MemAvailable.
func memAvailable(t *testing.T) int64 {
	t.Helper()
	return procStatusKiB(t, "/proc/meminfo", "MemAvailable:") << 10
}

func procStatusKiB(t *testing.T, path, key string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == key {
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				t.Fatalf("%s %s: %v", path, key, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", key, path)
	return 0
}

// fdKinds counts the process's open file descriptors by kind: "socket",
// "pipe", "anon_inode:bpf-map", a path...
func (p *proc) fdKinds(t *testing.T) map[string]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", p.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		kind, _, _ := strings.Cut(target, ":[")
		kinds[kind]++
	}
	return kinds
}
