package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/topology"
	"github.com/wsplice/wsplice/tests/wsraw"
)

// The TLS listeners sit beside the plain --listen on the balancer's client
// address.
var (
	tlsAddr    = netip.AddrPortFrom(topology.LBClientAddr, 8443).String() // --listen-tls
	tcpTLSAddr = netip.AddrPortFrom(topology.LBClientAddr, 9443).String() // --listen-tcp-tls
	tcpAddr    = netip.AddrPortFrom(topology.LBClientAddr, 9080).String() // --listen-tcp
)

const (
	// tlsHandshakeTimeout is short so that the stall tests take seconds.
	tlsHandshakeTimeout = time.Second
	// defaultName is the first certificate's name (the default one);
	// otherName the second's, served only to clients asking for it by SNI.
	defaultName = "wsplice.test"
	otherName   = "other.test"
)

// testPKI is a throw-away CA and two server certificates signed by it, in
// PEM files for the daemon and in memory for the test's clients.
type testPKI struct {
	caFile            string
	pool              *x509.CertPool
	certFile, keyFile [2]string // default, other
	leaf              [2]*x509.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wsplice e2e test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{caFile: filepath.Join(dir, "ca.pem"), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	for i, name := range []string{defaultName, otherName} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: name},
			DNSNames:     []string{name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if i == 0 {
			// Clients dial the address, so the default certificate
			// names it too.
			tmpl.IPAddresses = []net.IP{topology.LBClientAddr.AsSlice()}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		if p.leaf[i], err = x509.ParseCertificate(der); err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		p.certFile[i] = filepath.Join(dir, name+".crt")
		p.keyFile[i] = filepath.Join(dir, name+".key")
		writePEM(t, p.certFile[i], "CERTIFICATE", der)
		writePEM(t, p.keyFile[i], "PRIVATE KEY", keyDER)
	}
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientConfig trusts the test CA only.
func (p *testPKI) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}
}

// tlsDaemon is a wsplice with --listen, --listen-tls, --listen-tcp-tls and
// --listen-tcp, serving the test PKI's two certificates.
type tlsDaemon struct {
	*daemon
	pki *testPKI
	// path is the start-up line's tls_path: "userspace" on a kernel
	// without TLS, "ktls" where the kernel has it.
	path string
}

func (e *env) startTLSDaemon(t *testing.T, dp string, pki *testPKI, args ...string) *tlsDaemon {
	t.Helper()
	argv := []string{
		"--listen-tls", tlsAddr, "--listen-tcp-tls", tcpTLSAddr, "--listen-tcp", tcpAddr,
		"--tls-cert", pki.certFile[0], "--tls-key", pki.keyFile[0],
		"--tls-cert", pki.certFile[1], "--tls-key", pki.keyFile[1],
		"--tls-handshake-timeout", tlsHandshakeTimeout.String(),
	}
	d := e.startDaemon(t, dp, append(argv, args...)...)
	var started struct {
		TLSPath         string   `json:"tls_path"`
		KTLSUnavailable string   `json:"ktls_unavailable"`
		TLSListeners    []string `json:"tls_listeners"`
		TCPTLSListeners []string `json:"tcp_tls_listeners"`
		TCPListeners    []string `json:"tcp_listeners"`
	}
	line := d.waitLog(t, "wsplice started", time.Second)
	if err := json.Unmarshal([]byte(line), &started); err != nil {
		t.Fatalf("start line %q: %v", line, err)
	}
	if len(started.TLSListeners) != 1 || len(started.TCPTLSListeners) != 1 || len(started.TCPListeners) != 1 {
		t.Fatalf("start line lists TLS %v, TCP+TLS %v, TCP %v; want one of each", started.TLSListeners, started.TCPTLSListeners, started.TCPListeners)
	}
	switch started.TLSPath {
	case "userspace":
		t.Logf("TLS path: userspace (kernel TLS unavailable: %s)", started.KTLSUnavailable)
	case "ktls":
		t.Logf("TLS path: ktls (this kernel has TLS)")
	default:
		t.Fatalf("start line's tls_path %q, want userspace or ktls", started.TLSPath)
	}
	return &tlsDaemon{daemon: d, pki: pki, path: started.TLSPath}
}

// tlsStats are the TLS counters of GET /debug/stats.
type tlsStats struct {
	Handshakes      uint64            `json:"tls_handshakes_total"`
	HandshakeErrors uint64            `json:"tls_handshake_errors_total"`
	Path            map[string]uint64 `json:"tls_path"`
}

func (d *tlsDaemon) tlsStats(t *testing.T) tlsStats {
	t.Helper()
	resp, err := d.admin.Get("http://" + adminAddr + "/debug/stats")
	if err != nil {
		t.Fatalf("GET /debug/stats: %v", err)
	}
	defer resp.Body.Close()
	var s tlsStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decode /debug/stats: %v", err)
	}
	if s.Path == nil {
		t.Fatal("/debug/stats has no tls_path")
	}
	return s
}

// checkPath asserts that the conns TLS sessions completed since before
// were carried by the path the daemon announced: on "userspace" all of
// them; on "ktls" each by the kernel unless its cipher or version kept it
// in crypto/tls, which is logged.
func (d *tlsDaemon) checkPath(t *testing.T, before tlsStats, conns int) {
	t.Helper()
	after := d.tlsStats(t)
	ktls := after.Path["ktls"] - before.Path["ktls"]
	user := after.Path["userspace"] - before.Path["userspace"]
	switch {
	case ktls+user != uint64(conns):
		t.Errorf("tls_path grew by ktls %d + userspace %d; want %d, the connections opened", ktls, user, conns)
	case d.path == "userspace" && ktls != 0:
		t.Errorf("tls_path.ktls grew by %d, but the daemon started with tls_path userspace", ktls)
	case d.path == "ktls":
		t.Logf("tls_path: ktls %d, userspace %d (kernel TLS available)", ktls, user)
	default:
		t.Logf("tls_path: userspace %d of %d connections", user, conns)
	}
}

// randSize is log-uniform in [1, max]: most messages small, some large.
func randSize(rng *mrand.Rand, max int) int {
	n := int(math.Exp(rng.Float64() * math.Log(float64(max))))
	return min(max, n)
}

// TestTLSEcho: through each TLS listener, a Go TLS client trusting the
// test CA exchanges random messages of random sizes (1 B to 1 MiB, sent
// while echoes come back) over several connections and gets every byte
// back; WSS through the WebSocket echo, L4 TLS (and plain L4 as the
// control) through the backend's raw byte echo. /debug/stats shows which
// path carried the sessions: userspace on a kernel without TLS.
func TestTLSEcho(t *testing.T) {
	e := newEnv(t)
	pki := newTestPKI(t)
	const conns = 4
	messages := int(size(t, "WSPLICE_TLS_MESSAGES", 400, 120))
	maxSize := 1 << 20
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startTLSDaemon(t, dp, pki)

		t.Run("wss", func(t *testing.T) {
			before := d.tlsStats(t)
			dialer := d.dialer()
			dialer.TLSClientConfig = pki.clientConfig()
			runConns(t, conns, func(i int) (int64, error) {
				ws, resp, err := dialer.Dial("wss://"+tlsAddr+"/tls", nil)
				if err != nil {
					return 0, fmt.Errorf("dial wss: %w", err)
				}
				defer ws.Close()
				if name := resp.Header.Get("X-Backend-Name"); !isBackendName(name) {
					return 0, fmt.Errorf("101 has X-Backend-Name %q", name)
				}
				ws.SetReadLimit(64 << 20)
				return wsExchange(ws, uint64(i), messages/conns, maxSize)
			})
			d.checkPath(t, before, conns)
		})

		for _, l := range []struct {
			name string
			addr string
			tls  bool
		}{{"l4_tls", tcpTLSAddr, true}, {"l4_plain", tcpAddr, false}} {
			t.Run(l.name, func(t *testing.T) {
				if !l.tls {
					skipUntrimmedKernel(t, dp) // a plain L4 pair is spliced in the kernel
				}
				before := d.tlsStats(t)
				runConns(t, conns, func(i int) (int64, error) {
					c, br, err := d.dialL4Raw(l.addr, l.tls)
					if err != nil {
						return 0, err
					}
					defer c.Close()
					return rawExchange(c, br, uint64(i), messages/conns, maxSize)
				})
				if l.tls {
					d.checkPath(t, before, conns)
				} else if after := d.tlsStats(t); after.Handshakes != before.Handshakes {
					t.Errorf("plain L4 connections started %d TLS handshakes", after.Handshakes-before.Handshakes)
				}
			})
		}
		d.idle(t)
	})
}

// runConns runs fn for n connections at once and fails t with the first
// error.
func runConns(t *testing.T, n int, fn func(i int) (int64, error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	bytes := make([]int64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bytes[i], errs[i] = fn(i)
		}()
	}
	wg.Wait()
	var total int64
	for i, err := range errs {
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		total += bytes[i]
	}
	t.Logf("%d connections echoed %s", n, mib(total))
}

// wsExchange sends n random text and binary messages from one goroutine
// while another reads the echoes and compares each with what was sent.
func wsExchange(ws *websocket.Conn, seed uint64, n, maxSize int) (int64, error) {
	type msg struct {
		typ  int
		data []byte
	}
	sent := make(chan msg, n)
	werr := make(chan error, 1)
	go func() {
		rng := mrand.New(mrand.NewPCG(seed, 1))
		for range n {
			m := msg{websocket.BinaryMessage, make([]byte, randSize(rng, maxSize))}
			for j := range m.data {
				m.data[j] = byte(rng.Uint32())
			}
			if rng.IntN(2) == 0 {
				m.typ = websocket.TextMessage
				for j := range m.data {
					m.data[j] = 'a' + m.data[j]%26
				}
			}
			sent <- m
			if err := ws.WriteMessage(m.typ, m.data); err != nil {
				werr <- fmt.Errorf("write: %w", err)
				return
			}
		}
		werr <- nil
	}()
	var total int64
	ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	for i := range n {
		typ, got, err := ws.ReadMessage()
		if err != nil {
			return total, fmt.Errorf("read echo %d of %d: %w", i, n, err)
		}
		want := <-sent
		if typ != want.typ || !bytes.Equal(got, want.data) {
			return total, fmt.Errorf("echo %d: type %d, %d bytes; sent type %d, %d bytes (equal %v)",
				i, typ, len(got), want.typ, len(want.data), bytes.Equal(got, want.data))
		}
		total += int64(len(got))
	}
	if err := <-werr; err != nil {
		return total, err
	}
	return total, ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
}

// dialL4Raw connects to an L4 listener from the client namespace (with TLS
// trusting the test CA if tlsOn), and asks the backend, through the
// splice, for its raw byte echo.
func (d *tlsDaemon) dialL4Raw(addr string, tlsOn bool) (net.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := d.e.topo.Client.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := raw
	if tlsOn {
		cfg := d.pki.clientConfig()
		cfg.ServerName = topology.LBClientAddr.String()
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
			raw.Close()
			return nil, nil, fmt.Errorf("L4 TLS listener negotiated ALPN %q, want none", p)
		}
		c = tc
	}
	key := wsraw.NewKey()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(wsraw.UpgradeRequest(addr, "/?raw=1", key)); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("write upgrade: %w", err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := wsraw.ReadUpgradeResponse(br, key)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("upgrade through %s: %w", addr, err)
	}
	if name := resp.Header.Get("X-Backend-Name"); !isBackendName(name) {
		c.Close()
		return nil, nil, fmt.Errorf("101 through %s has X-Backend-Name %q", addr, name)
	}
	c.SetDeadline(time.Time{})
	return c, br, nil
}

// rawExchange writes n random chunks of random sizes while reading the
// echoed stream and comparing it with what was written.
func rawExchange(c net.Conn, br *bufio.Reader, seed uint64, n, maxSize int) (int64, error) {
	sent := make(chan []byte, n)
	werr := make(chan error, 1)
	go func() {
		rng := mrand.New(mrand.NewPCG(seed, 2))
		for range n {
			b := make([]byte, randSize(rng, maxSize))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			sent <- b
			if _, err := c.Write(b); err != nil {
				werr <- fmt.Errorf("write: %w", err)
				return
			}
		}
		werr <- nil
	}()
	var total int64
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, maxSize)
	for i := range n {
		want := <-sent
		if _, err := io.ReadFull(br, got[:len(want)]); err != nil {
			return total, fmt.Errorf("read echo of chunk %d of %d (%d bytes) after %d bytes: %w", i, n, len(want), total, err)
		}
		if j := firstDiff(got[:len(want)], want); j >= 0 {
			return total, fmt.Errorf("echoed stream differs at byte %d (chunk %d, offset %d)", total+int64(j), i, j)
		}
		total += int64(len(want))
	}
	return total, <-werr
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestTLSNodeClient: Node's ws package, a TLS and WebSocket implementation
// this project did not write, trusting only the test CA, exchanges random
// text and binary messages through --listen-tls; Node's tls module does
// the same with raw bytes through --listen-tcp-tls.
func TestTLSNodeClient(t *testing.T) {
	e := newEnv(t)
	dir, err := filepath.Abs("../node")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		topology.SkipOrFail(t, "node is not installed")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws")); err != nil {
		topology.SkipOrFail(t, "tests/node/node_modules is missing: run npm ci in tests/node")
	}
	pki := newTestPKI(t)
	messages := size(t, "WSPLICE_NODE_MESSAGES", 2000, 200)
	const conns = 8
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startTLSDaemon(t, dp, pki)
		for _, c := range []struct {
			name, script, url string
		}{
			{"wss", "client.js", "wss://" + tlsAddr + "/node-tls"},
			{"l4_tls", "tls-raw-client.js", "tls://" + tcpTLSAddr + "/?raw=1"},
		} {
			t.Run(c.name, func(t *testing.T) {
				before := d.tlsStats(t)
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				defer cancel()
				cmd := e.topo.Client.Command(ctx, node, filepath.Join(dir, c.script),
					"--url", c.url, "--ca", pki.caFile, "--connections", fmt.Sprint(conns),
					"--messages", fmt.Sprint(messages), "--max-size", fmt.Sprint(1<<20), "--timeout", "100")
				res := runNodeClient(t, cmd)
				if res.Backends["backend1"] == 0 || res.Backends["backend2"] == 0 {
					t.Errorf("node client's connections went to %v, want both backends", res.Backends)
				}
				t.Logf("node %s: %d messages, %s, backends %v", c.script, res.Messages, mib(res.Bytes), res.Backends)
				d.checkPath(t, before, conns)
			})
		}
	})
}

type nodeResult struct {
	OK       bool           `json:"ok"`
	Error    string         `json:"error"`
	Messages int            `json:"messages"`
	Bytes    int64          `json:"bytes"`
	Backends map[string]int `json:"backends"`
}

func runNodeClient(t *testing.T, cmd *exec.Cmd) nodeResult {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var res nodeResult
	_, line, found := strings.Cut(string(out), "RESULT ")
	if !found || json.Unmarshal([]byte(strings.TrimSpace(line)), &res) != nil {
		t.Fatalf("node client printed no result (%v):\n%s", err, out)
	}
	if err != nil || !res.OK {
		t.Fatalf("node client: %s (%v)\n%s", res.Error, err, out)
	}
	return res
}

// TestTLSBadInput: on each TLS listener, plaintext HTTP gets a 400 or a
// close, a truncated ClientHello and a silent client are closed within
// --tls-handshake-timeout, each counted as a failed handshake; an unknown
// SNI gets the default certificate and a known one its own; and the
// listener still serves afterwards.
func TestTLSBadInput(t *testing.T) {
	e := newEnv(t)
	pki := newTestPKI(t)
	hello := clientHello(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startTLSDaemon(t, dp, pki)
		for _, l := range []struct{ name, addr string }{{"https", tlsAddr}, {"l4_tls", tcpTLSAddr}} {
			t.Run(l.name, func(t *testing.T) {
				before := d.tlsStats(t)

				t.Run("plaintext_http", func(t *testing.T) {
					got, elapsed := d.sendAndWaitClose(t, l.addr, []byte("GET / HTTP/1.1\r\nHost: "+l.addr+"\r\n\r\n"))
					switch {
					case len(got) == 0:
						t.Logf("closed without an answer after %v", elapsed.Round(time.Millisecond))
					case bytes.HasPrefix(got, []byte("HTTP/1.0 400 ")) || bytes.HasPrefix(got, []byte("HTTP/1.1 400 ")):
						line, _, _ := bytes.Cut(got, []byte("\r\n"))
						t.Logf("%q, then closed after %v", line, elapsed.Round(time.Millisecond))
					default:
						t.Errorf("answered %q; want a 400 or a close", got[:min(len(got), 80)])
					}
				})

				t.Run("truncated_client_hello", func(t *testing.T) {
					got, elapsed := d.sendAndWaitClose(t, l.addr, hello[:len(hello)/2])
					checkStallClosed(t, got, elapsed)
				})

				t.Run("silent_client", func(t *testing.T) {
					got, elapsed := d.sendAndWaitClose(t, l.addr, nil)
					checkStallClosed(t, got, elapsed)
				})

				// crypto/tls closes the socket when the handshake's
				// context expires, just before the daemon counts the
				// error: wait for the count.
				var n uint64
				for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					if n = d.tlsStats(t).HandshakeErrors - before.HandshakeErrors; n >= 3 || time.Now().After(deadline) {
						break
					}
				}
				if n != 3 {
					t.Errorf("tls_handshake_errors_total grew by %d after 3 bad handshakes, want 3", n)
				}

				t.Run("sni", func(t *testing.T) {
					for _, c := range []struct {
						sni  string
						want *x509.Certificate
					}{
						{"unknown.test", pki.leaf[0]},
						{"", pki.leaf[0]},
						{otherName, pki.leaf[1]},
						{defaultName, pki.leaf[0]},
					} {
						leaf := d.peerCert(t, l.addr, c.sni)
						if !leaf.Equal(c.want) {
							t.Errorf("SNI %q got the certificate for %v, want the one for %v", c.sni, leaf.DNSNames, c.want.DNSNames)
						}
					}
				})
			})
		}
		// Still serving after all that.
		dialer := d.dialer()
		dialer.TLSClientConfig = pki.clientConfig()
		ws, _, err := dialer.Dial("wss://"+tlsAddr+"/after", nil)
		if err != nil {
			t.Fatalf("wss after bad input: %v", err)
		}
		defer ws.Close()
		if _, err := wsExchange(ws, 99, 10, 4096); err != nil {
			t.Fatalf("wss after bad input: %v", err)
		}
	})
}

// clientHello is the first record a Go TLS client sends.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: defaultName}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatalf("capture ClientHello: %v", err)
	}
	rec := make([]byte, 5+int(hdr[3])<<8|int(hdr[4]))
	copy(rec, hdr)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatalf("capture ClientHello: %v", err)
	}
	if rec[0] != 22 || rec[5] != 1 {
		t.Fatalf("captured record type %d, message %d; want a handshake record with a ClientHello", rec[0], rec[5])
	}
	return rec
}

// sendAndWaitClose connects, writes b (if any) and reads until the daemon
// closes the connection, and returns what it read and how long the close
// took. It fails t if the connection is still open 3 s after the
// handshake timeout.
func (d *tlsDaemon) sendAndWaitClose(t *testing.T, addr string, b []byte) ([]byte, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.e.topo.Client.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	start := time.Now()
	if len(b) > 0 {
		if _, err := c.Write(b); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	c.SetReadDeadline(start.Add(tlsHandshakeTimeout + 3*time.Second))
	got, err := io.ReadAll(c)
	elapsed := time.Since(start)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("still open after %v (--tls-handshake-timeout %v), read %q", elapsed.Round(time.Millisecond), tlsHandshakeTimeout, got)
	case err != nil && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("read: %v after %v", err, elapsed)
	}
	return got, elapsed
}

// checkStallClosed: a stalled handshake is closed at the handshake
// timeout (not later, and not long before), after at most a TLS alert.
func checkStallClosed(t *testing.T, got []byte, elapsed time.Duration) {
	t.Helper()
	if len(got) > 0 && got[0] != 21 { // alert record
		t.Errorf("read %d bytes that are not a TLS alert before the close: %q", len(got), got[:min(len(got), 40)])
	}
	if elapsed < tlsHandshakeTimeout/2 {
		t.Errorf("closed after %v, before the handshake timeout %v", elapsed, tlsHandshakeTimeout)
	}
	t.Logf("closed after %v (--tls-handshake-timeout %v), %d bytes before the close", elapsed.Round(time.Millisecond), tlsHandshakeTimeout, len(got))
}

// peerCert does a TLS handshake with sni and returns the server's leaf. It
// verifies the chain against the test CA but not the name, since an
// unknown SNI matches no certificate by design.
func (d *tlsDaemon) peerCert(t *testing.T, addr, sni string) *x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := d.e.topo.Client.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer raw.Close()
	cfg := &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // checked below, without the name
		NextProtos:         []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: d.pki.pool})
			return err
		},
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake with SNI %q: %v", sni, err)
	}
	defer tc.Close()
	return tc.ConnectionState().PeerCertificates[0]
}

// TestTLSIdleCounted: an idle TLS pair (served in userspace on every data
// path) closed by the idle timeout is counted in idle_closed, on the
// kernel path too (its fallback's count).
func TestTLSIdleCounted(t *testing.T) {
	e := newEnv(t)
	pki := newTestPKI(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startTLSDaemon(t, dp, pki, "--idle-timeout", "1s")
		c, _, err := d.dialL4Raw(tcpTLSAddr, true)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		d.waitStats(t, 5*time.Second, "the idle TLS pair closed and counted", func(s stats) bool { return s.Spliced == 0 && s.IdleClosed == 1 })
	})
}
