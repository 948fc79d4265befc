package chat

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// bins are the binaries under test, built once by TestMain.
var bins struct {
	wsplice, chat string
	// tls: this wsplice has --listen-tls, so the tests also run over wss.
	tls bool
	err error
}

// artifactsRoot holds every test's screenshots and logs; it is kept.
var artifactsRoot string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsplice-chat-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.wsplice = filepath.Join(dir, "wsplice")
	bins.chat = filepath.Join(dir, "wsplice-chat")
	bins.err = build(map[string]string{
		bins.wsplice: "github.com/wsplice/wsplice/cmd/wsplice",
		bins.chat:    "github.com/wsplice/wsplice/cmd/wsplice-chat",
	})
	if bins.err == nil {
		help, _ := exec.Command(bins.wsplice, "--help").CombinedOutput()
		bins.tls = strings.Contains(string(help), "-listen-tls")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(targets map[string]string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		// sudo often resets PATH; the toolchain that built this test
		// is still there.
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for out, pkg := range targets {
		cmd := exec.Command(gobin, "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// skipOrFail skips t with msg, or fails it when WSPLICE_REQUIRE_PRIV=1: CI
// provisions everything, so a missing prerequisite there is an error.
func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" {
		t.Fatalf("%s (WSPLICE_REQUIRE_PRIV=1, so this is a failure, not a skip)", msg)
	}
	t.Skip(msg)
}

// tools are the programs the browser tests need besides the binaries.
type tools struct {
	redis, node, chromium, nodeDir string
}

// requireTools returns the tools, or skips (fails under
// WSPLICE_REQUIRE_PRIV=1) saying what is missing and how to get it.
func requireTools(t *testing.T) tools {
	t.Helper()
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	var tl tools
	var missing []string
	var err error
	if tl.redis, err = exec.LookPath("redis-server"); err != nil {
		missing = append(missing, "redis-server (apt-get install redis-server)")
	}
	if tl.node, err = exec.LookPath("node"); err != nil {
		missing = append(missing, "node (apt-get install nodejs npm)")
	}
	tl.chromium = os.Getenv("WSPLICE_CHROMIUM")
	if tl.chromium == "" {
		tl.chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(tl.chromium); err != nil {
		missing = append(missing, tl.chromium+" (apt-get install chromium)")
	}
	if tl.nodeDir, err = filepath.Abs("."); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tl.nodeDir, "node_modules", "playwright-core")); err != nil {
		missing = append(missing, "tests/chat/node_modules (npm ci in tests/chat)")
	}
	if len(missing) > 0 {
		skipOrFail(t, "missing "+strings.Join(missing, ", ")+": run sudo scripts/provision.sh")
	}
	return tl
}

// dataplanes are the data paths to test: WSPLICE_DATAPLANES, or both.
func dataplanes() []string {
	if s := os.Getenv("WSPLICE_DATAPLANES"); s != "" {
		return strings.Split(s, ",")
	}
	return []string{"sockmap", "userspace"}
}

// artifactDir is where t's screenshots and logs go.
func artifactDir(t *testing.T) string {
	t.Helper()
	if artifactsRoot == "" {
		artifactsRoot = os.Getenv("WSPLICE_ARTIFACTS")
		if artifactsRoot == "" {
			d, err := os.MkdirTemp("", "wsplice-chat-artifacts-")
			if err != nil {
				t.Fatal(err)
			}
			artifactsRoot = d
		}
	}
	dir := filepath.Join(artifactsRoot, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// proc is a process with its output in a file, stopped in t.Cleanup.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

func startProc(t *testing.T, dir, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(5 * time.Second); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log (last lines):\n%s", name, p.tail(40))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, if the process is still there after timeout,
// SIGKILL.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	p.kill()
	return fmt.Errorf("still running %v after SIGTERM: killed", timeout)
}

// kill ends the process with SIGKILL, as a crash would.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
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

// waitFor polls ready every 20 ms until it returns nil, p exits, or
// timeout passes.
func (p *proc) waitFor(t *testing.T, what string, timeout time.Duration, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return
		}
		if p.exited() {
			t.Fatalf("%s exited before %s:\n%s", p.name, what, p.tail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s within %v (%v):\n%s", p.name, what, timeout, err, p.tail(30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// getOK GETs url with httpClient and fails unless the answer is 200.
func getOK(url string) ([]byte, error) { return getWith(httpClient, url) }

func getWith(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, nil
}

// stack is the deployment under test: Redis, two chat backends, wsplice.
type stack struct {
	dir       string
	dataplane string
	backends  map[string]*proc // by name: chat-1, chat-2
	wsplice   *proc
	admin     string
	url       string // what the browser opens
	// spki is the base64 SHA-256 of the TLS certificate's public key, for
	// Chromium's --ignore-certificate-errors-spki-list (wss only).
	spki string
	// client reaches st.url (it trusts the test CA for wss).
	client *http.Client
}

var backendNames = []string{"chat-1", "chat-2"}

func startStack(t *testing.T, tl tools, dataplane, scheme string) *stack {
	t.Helper()
	st := &stack{dir: artifactDir(t), dataplane: dataplane, backends: map[string]*proc{}, client: httpClient}
	t.Logf("artifacts (screenshots, network log, process logs): %s", st.dir)

	// Redis: loopback only, no persistence, its files in the test's
	// directory.
	redisAddr := freeAddr(t)
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	redisDir := t.TempDir()
	rp := startProc(t, st.dir, "redis", tl.redis, "--port", redisPort, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", redisDir)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1})
	defer rdb.Close()
	rp.waitFor(t, "PONG", 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err()
	})

	var backendAddrs []string
	for _, name := range backendNames {
		addr := freeAddr(t)
		p := startProc(t, st.dir, name, bins.chat, "--listen", addr, "--name", name, "--redis", redisAddr, "--log-level", "debug")
		p.waitFor(t, "/healthz 200", 10*time.Second, func() error {
			_, err := getOK("http://" + addr + "/healthz")
			return err
		})
		st.backends[name] = p
		backendAddrs = append(backendAddrs, addr)
	}

	listen := freeAddr(t)
	st.admin = freeAddr(t)
	// --drain-timeout: a page still connected at the end does not hold
	// the stop past its 5 s.
	args := []string{"--listen", listen, "--admin", st.admin, "--dataplane", dataplane, "--log-level", "info", "--drain-timeout", "2s"}
	for _, a := range backendAddrs {
		args = append(args, "--backend", a)
	}
	st.url = "http://" + listen + "/"
	if scheme == "wss" {
		tlsAddr := freeAddr(t)
		cert, key, spki, roots := writeTestCert(t, st.dir)
		args = append(args, "--listen-tls", tlsAddr, "--tls-cert", cert, "--tls-key", key)
		st.url = "https://" + tlsAddr + "/"
		st.spki = spki
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		st.client = &http.Client{Timeout: 2 * time.Second, Transport: tr}
		t.Cleanup(tr.CloseIdleConnections)
	}
	st.wsplice = startProc(t, st.dir, "wsplice", bins.wsplice, args...)
	st.wsplice.waitFor(t, "/debug/stats", 10*time.Second, func() error {
		_, err := getOK("http://" + st.admin + "/debug/stats")
		return err
	})
	if got := st.stats(t).Dataplane; got != dataplane {
		t.Fatalf("wsplice --dataplane %s runs the %q data path", dataplane, got)
	}
	return st
}

// wspliceStats is the part of /debug/stats the tests look at.
type wspliceStats struct {
	Dataplane    string `json:"dataplane"`
	SplicedTotal uint64 `json:"spliced_total"`
	BytesKernel  uint64 `json:"bytes_kernel"`
	BytesUser    uint64 `json:"bytes_userspace"`
	// HandshakeErrors counts WebSocket handshakes that did not end
	// spliced, a 502 from a dead backend among them.
	HandshakeErrors uint64 `json:"handshake_errors_total"`
	// TLSPath counts TLS sessions by what carried their records: "ktls"
	// (the kernel, then spliced) or "userspace" (crypto/tls).
	TLSPath map[string]uint64 `json:"tls_path"`
}

func (st *stack) stats(t *testing.T) wspliceStats {
	t.Helper()
	b, err := getOK("http://" + st.admin + "/debug/stats")
	if err != nil {
		t.Fatal(err)
	}
	var s wspliceStats
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("decode /debug/stats %s: %v", b, err)
	}
	return s
}

// errorLines returns the lines wsplice logged at level error.
func (st *stack) errorLines() []string {
	var out []string
	for _, l := range strings.Split(st.wsplice.log(), "\n") {
		var e struct {
			Level string `json:"level"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && (e.Level == "error" || e.Level == "fatal" || e.Level == "panic") {
			out = append(out, l)
		}
	}
	return out
}

// browserResult is the RESULT line of browser.js.
type browserResult struct {
	OK                bool              `json:"ok"`
	Error             string            `json:"error"`
	Backends          map[string]string `json:"backends"`
	BackendsAfter     map[string]string `json:"backendsAfter"`
	ReconnectMs       int64             `json:"reconnectMs"`
	Messages          int               `json:"messages"`
	SlowestDeliveryMs int64             `json:"slowestDeliveryMs"`
	Screenshot        string            `json:"screenshot"`
	Websockets        map[string][]struct {
		URL            string `json:"url"`
		FramesSent     int    `json:"framesSent"`
		FramesReceived int    `json:"framesReceived"`
	} `json:"websockets"`
}

// runBrowser runs browser.js with scenario against st and returns its
// result. A KILL line from it kills that backend with SIGKILL.
func runBrowser(t *testing.T, tl tools, st *stack, scenario string) browserResult {
	t.Helper()
	// Chromium's profile (Playwright makes a fresh one under TMPDIR) goes
	// in a directory of the test's, so that a browser left behind by a
	// killed node can be found and killed by PID.
	tmp := t.TempDir()
	t.Cleanup(func() { killBrowsers(t, tmp) })
	scheme := "ws"
	if strings.HasPrefix(st.url, "https:") {
		scheme = "wss"
	}
	label := scenario + "-" + st.dataplane + "-" + scheme
	cfg := map[string]any{
		"url":       st.url,
		"label":     label,
		"artifacts": st.dir,
		"chromium":  tl.chromium,
		"backends":  backendNames,
		"scenario":  scenario,
		"spki":      st.spki,
		"timeoutMs": 75000,
	}
	cfgPath := filepath.Join(tmp, "config.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tl.node, filepath.Join(tl.nodeDir, "browser.js"), cfgPath)
	cmd.Dir = tl.nodeDir
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	// On timeout: SIGTERM lets it close the browser; SIGKILL 10 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	stderr, err := os.Create(filepath.Join(st.dir, scenario+"-node-stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}

	var res browserResult
	gotResult := false
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 64<<10), 4<<20)
	for lines.Scan() {
		line := lines.Text()
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "LOG":
			t.Logf("browser: %s", rest)
		case "KILL":
			p, ok := st.backends[rest]
			if !ok {
				t.Errorf("browser asked to kill %q, which is not a backend", rest)
				fmt.Fprintln(stdin, "NO")
				continue
			}
			p.kill()
			// One plain request through wsplice, which round-robin sends
			// to the survivor, so that the page's first reconnect goes to
			// the dead backend: the balancer has no health checks yet,
			// and the page must get over the 502 by retrying.
			if _, err := getWith(st.client, st.url+"healthz"); err != nil {
				t.Logf("GET %shealthz after the kill: %v", st.url, err)
			}
			t.Logf("killed %s (SIGKILL)", rest)
			fmt.Fprintln(stdin, "KILLED")
		case "RESULT":
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Errorf("browser result %q: %v", rest, err)
			}
			gotResult = true
		default:
			t.Logf("browser stdout: %s", line)
		}
	}
	stdin.Close()
	werr := cmd.Wait()
	if !gotResult {
		errOut, _ := os.ReadFile(stderr.Name())
		t.Fatalf("browser.js gave no result (%v, context: %v):\n%s", werr, ctx.Err(), errOut)
	}
	if !res.OK {
		t.Fatalf("browser: %s (screenshot: %s)", res.Error, res.Screenshot)
	}
	if werr != nil {
		t.Errorf("browser.js: %v", werr)
	}
	return res
}

// killBrowsers kills, by PID, any process whose command line names dir:
// a Chromium whose driver died without closing it.
func killBrowsers(t *testing.T, dir string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		t.Logf("killing left-over browser process %d", pid)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("kill %d: %v", pid, err)
		}
	}
}

// sawConnectFailure reports whether GET /backends shows a backend with a
// failed connect or check (down, or failures counted).
func (st *stack) sawConnectFailure(t *testing.T) bool {
	t.Helper()
	b, err := getOK("http://" + st.admin + "/backends")
	if err != nil {
		t.Fatalf("GET /backends: %v", err)
	}
	var backends []struct {
		State  string `json:"state"`
		Health struct {
			Failures  int    `json:"consecutive_failures"`
			LastError string `json:"last_error"`
		} `json:"health"`
	}
	if err := json.Unmarshal(b, &backends); err != nil {
		t.Fatalf("GET /backends: %v: %s", err, b)
	}
	for _, be := range backends {
		if be.State == "down" || be.Health.Failures > 0 || be.Health.LastError != "" {
			return true
		}
	}
	return false
}
