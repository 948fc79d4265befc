package proxy

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/userspace/certstore"
	"github.com/wsplice/wsplice/userspace/ktls"
)

// testCerts writes self-signed certificates, one per name list, and
// returns their pairs and a pool trusting all of them.
type testCerts struct {
	pairs []certstore.Pair
	pool  *x509.CertPool
}

func writeCert(t *testing.T, dir, cn string, names ...string) (certstore.Pair, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: names, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kd, _ := x509.MarshalECPrivateKey(key)
	p := certstore.Pair{Cert: filepath.Join(dir, cn+".crt"), Key: filepath.Join(dir, cn+".key")}
	if err := os.WriteFile(p.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, leaf
}

func newTestCerts(t *testing.T) *testCerts {
	t.Helper()
	dir := t.TempDir()
	tc := &testCerts{pool: x509.NewCertPool()}
	for _, n := range [][]string{{"default", "default.test"}, {"a", "a.test"}} {
		p, leaf := writeCert(t, dir, n[0], n[1:]...)
		tc.pairs = append(tc.pairs, p)
		tc.pool.AddCert(leaf)
	}
	return tc
}

// startTLSProxy runs a proxy with every kind of listener.
func startTLSProxy(t *testing.T, backends []string, certs *testCerts, mod func(*Config)) *testProxy {
	t.Helper()
	return startProxy(t, backends, func(c *Config) {
		c.TLSListen = []string{"127.0.0.1:0"}
		c.TCPListen = []string{"127.0.0.1:0"}
		c.TCPTLSListen = []string{"127.0.0.1:0"}
		c.Certificates = certs.pairs
		if mod != nil {
			mod(c)
		}
	})
}

// wantTLSPath is the path TLS 1.3 sessions must take here: "ktls" where
// the kernel has TLS, else "userspace". With WSPLICE_REQUIRE_PRIV=1 on a
// kernel with the tls module (the VM of scripts/vm-test.sh), kTLS must work.
func wantTLSPath(t *testing.T) string {
	t.Helper()
	err := ktls.Available()
	if err == nil {
		return "ktls"
	}
	if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" && ktls.ModulePresent() {
		t.Fatalf("kernel TLS required (WSPLICE_REQUIRE_PRIV=1, tls module present) but unavailable: %v", err)
	}
	t.Logf("kernel TLS unavailable (%v): expecting the userspace TLS path; the kTLS path is tested by `make vm-test`", err)
	return "userspace"
}

func checkTLSPath(t *testing.T, p *testProxy, want string, n uint64) {
	t.Helper()
	st := p.Stats()
	if st.TLSPath[want] != n {
		t.Errorf("tls_path = %v, want %d on %q", st.TLSPath, n, want)
	}
}

// randomEcho sends random messages of mixed sizes and checks each echo.
func wsRandomEcho(t *testing.T, c *websocket.Conn) {
	t.Helper()
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 40; i++ {
		msg := make([]byte, r.IntN(70_000)+1)
		for j := range msg {
			msg[j] = byte(r.Uint32())
		}
		if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d: echo of %d bytes differs (%d back)", i, len(msg), len(got))
		}
	}
}

func TestTLSWSSEcho(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, []string{startWSBackend(t, "a")}, certs, nil)
	want := wantTLSPath(t)
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: certs.pool, ServerName: "a.test"}, HandshakeTimeout: testTimeout}
	c, resp, err := d.Dial("wss://"+p.TLSAddrs()[0].String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("X-Backend-Name") != "a" {
		t.Errorf("X-Backend-Name = %q", resp.Header.Get("X-Backend-Name"))
	}
	wsRandomEcho(t, c)
	checkTLSPath(t, p, want, 1)
	st := p.Stats()
	if st.SplicedTotal != 1 || st.TLSHandshakesTotal != 1 || st.TLSHandshakeErrorsTotal != 0 {
		t.Errorf("stats = %+v", st)
	}
	// TLS 1.2 sessions stay in crypto/tls, with the same behaviour.
	d.TLSClientConfig.MaxVersion = tls.VersionTLS12
	c2, _, err := d.Dial("wss://"+p.TLSAddrs()[0].String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	wsRandomEcho(t, c2)
	if st := p.Stats(); st.TLSPath["userspace"] != map[string]uint64{"ktls": 1, "userspace": 2}[want] {
		t.Errorf("after a TLS 1.2 session: tls_path = %v", st.TLSPath)
	}
}

func TestTLSSNIAndALPN(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, nil, certs, nil)
	for _, tc := range []struct{ sni, cn string }{{"a.test", "a"}, {"default.test", "default"}, {"unknown.test", "default"}, {"", "default"}} {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimeout}, "tcp", p.TLSAddrs()[0].String(),
			&tls.Config{ServerName: tc.sni, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatalf("SNI %q: %v", tc.sni, err)
		}
		st := c.ConnectionState()
		if got := st.PeerCertificates[0].Subject.CommonName; got != tc.cn {
			t.Errorf("SNI %q: certificate %q, want %q", tc.sni, got, tc.cn)
		}
		if st.NegotiatedProtocol != "http/1.1" {
			t.Errorf("ALPN: %q, want http/1.1", st.NegotiatedProtocol)
		}
		c.Close()
	}
	// A client offering only h2 is refused (no common protocol).
	if c, err := tls.Dial("tcp", p.TLSAddrs()[0].String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}); err == nil {
		c.Close()
		t.Error("handshake offering only h2 succeeded")
	}
	// Old versions and non-AEAD suites are refused.
	if c, err := tls.Dial("tcp", p.TLSAddrs()[0].String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("TLS 1.1 handshake succeeded")
	}
	if c, err := tls.Dial("tcp", p.TLSAddrs()[0].String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}); err == nil {
		c.Close()
		t.Error("CBC suite accepted")
	}
}

func TestTLSPlainHTTPS(t *testing.T) {
	certs := newTestCerts(t)
	be := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto=%s", r.Header.Get("X-Forwarded-Proto"))
	}))
	p := startTLSProxy(t, []string{be}, certs, nil)
	hc := &http.Client{Timeout: testTimeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.pool, ServerName: "a.test"}}}
	defer hc.CloseIdleConnections()
	for i := 0; i < 3; i++ { // keep-alive over one TLS connection
		resp, err := hc.Get("https://" + p.TLSAddrs()[0].String() + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "proto=https" {
			t.Fatalf("status %d body %q", resp.StatusCode, b)
		}
	}
	// The plaintext listener still says http.
	resp, err := hc.Get("http://" + p.addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "proto=http" {
		t.Fatalf("plain listener: body %q", b)
	}
	if st := p.Stats(); st.TLSHandshakesTotal != 1 {
		t.Errorf("tls handshakes %d, want 1 (keep-alive)", st.TLSHandshakesTotal)
	}
}

// expectClose reads until the proxy closes the connection, which must
// happen within limit, and returns what it sent.
func expectClose(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed within %v: %v", limit, err)
	}
	return string(b)
}

func TestTLSBadInput(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, []string{startWSBackend(t, "a")}, certs, func(c *Config) {
		c.TLSHandshakeTimeout = 300 * time.Millisecond
	})
	for _, addr := range []string{p.TLSAddrs()[0].String(), p.TCPTLSAddrs()[0].String()} {
		// Plaintext HTTP on a TLS port: a plaintext 400.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if got := expectClose(t, c, testTimeout); !strings.HasPrefix(got, "HTTP/1.0 400 ") || !strings.Contains(got, "HTTPS") {
			t.Errorf("plain HTTP on a TLS port: %q", got)
		}
		c.Close()
		// A truncated ClientHello, then EOF: closed.
		c, _ = net.Dial("tcp", addr)
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
		c.(*net.TCPConn).CloseWrite()
		expectClose(t, c, testTimeout)
		c.Close()
		// A truncated ClientHello that then stalls: closed at the timeout.
		c, _ = net.Dial("tcp", addr)
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
		start := time.Now()
		expectClose(t, c, testTimeout)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("stalled handshake closed after %v", d)
		}
		c.Close()
		// Silence: closed at the timeout.
		c, _ = net.Dial("tcp", addr)
		expectClose(t, c, testTimeout)
		c.Close()
		// Garbage: an alert or a close, never a hang.
		c, _ = net.Dial("tcp", addr)
		c.Write(bytes.Repeat([]byte{0xff}, 64))
		expectClose(t, c, testTimeout)
		c.Close()
	}
	// The proxy still works.
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: certs.pool, ServerName: "a.test"}, HandshakeTimeout: testTimeout}
	ws, _, err := d.Dial("wss://"+p.TLSAddrs()[0].String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	wsRandomEcho(t, ws)
	ws.Close()
	if st := p.Stats(); st.TLSHandshakeErrorsTotal != 10 || st.Connections > 1 {
		t.Errorf("stats after bad input: %+v", st)
	}
}

func TestTLSReload(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, []string{startWSBackend(t, "a")}, certs, nil)
	addr := p.TLSAddrs()[0].String()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: certs.pool, ServerName: "a.test"}, HandshakeTimeout: testTimeout}
	ws, _, err := d.Dial("wss://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	serial := func() *big.Int {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber
	}
	before := serial()
	// A broken file: an error, the old certificate stays.
	a := certs.pairs[1]
	good, _ := os.ReadFile(a.Cert)
	os.WriteFile(a.Cert, []byte("garbage"), 0o600)
	if err := p.ReloadCertificates(); err == nil {
		t.Fatal("reload of a broken certificate succeeded")
	}
	if serial().Cmp(before) != 0 {
		t.Fatal("broken reload changed the certificate")
	}
	os.WriteFile(a.Cert, good, 0o600)
	// A new certificate: served to new handshakes.
	np, _ := writeCert(t, t.TempDir(), "a", "a.test")
	os.Rename(np.Cert, a.Cert)
	os.Rename(np.Key, a.Key)
	if err := p.ReloadCertificates(); err != nil {
		t.Fatal(err)
	}
	if serial().Cmp(before) == 0 {
		t.Fatal("reload did not change the certificate")
	}
	// The connection made before both reloads still works.
	wsRandomEcho(t, ws)
}

// startTCPEcho runs a raw TCP echo server; it half-closes after EOF.
func startTCPEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

// streamEcho writes random data from one goroutine and reads the echo in
// another, then half-closes and expects the echo to end too.
func streamEcho(t *testing.T, c net.Conn, closeWrite func() error, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	c.SetDeadline(time.Now().Add(4 * testTimeout))
	errc := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c, 7000)
		_, err := w.Write(data)
		if err == nil {
			err = w.Flush()
		}
		if err == nil {
			err = closeWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v (after %d bytes)", err, len(got))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: %d bytes sent, %d back", len(data), len(got))
	}
}

func TestTCPListeners(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, []string{startTCPEcho(t)}, certs, nil)
	want := wantTLSPath(t)
	// Plain L4.
	c, err := net.Dial("tcp", p.TCPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	streamEcho(t, c, c.(*net.TCPConn).CloseWrite, 3<<20)
	c.Close()
	// L4 over TLS; the client's close_notify ends its direction cleanly.
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimeout}, "tcp", p.TCPTLSAddrs()[0].String(),
		&tls.Config{RootCAs: certs.pool, ServerName: "a.test"})
	if err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != "" {
		t.Errorf("ALPN on the L4 TLS listener: %q, want none", got)
	}
	streamEcho(t, tc, tc.CloseWrite, 3<<20)
	tc.Close()
	checkTLSPath(t, p, want, 1)
	if st := p.Stats(); st.SplicedTotal != 2 || st.HandshakesTotal != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// syncBuf is a bytes.Buffer for a KeyLogWriter.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) secret(label string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range strings.Split(s.b.String(), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == label {
			b, _ := hex.DecodeString(f[2])
			return b
		}
	}
	return nil
}

// TestTLSKeyUpdateAfterSplice sends a KeyUpdate (a handshake record,
// sealed with the client's keys) after the pair is spliced. On the kernel
// TLS path the kernel cannot follow it: the proxy must close both sides
// and pass nothing of it on. On the userspace path crypto/tls follows it.
// Either way the backend gets exactly the data, never the record's bytes.
func TestTLSKeyUpdateAfterSplice(t *testing.T) {
	certs := newTestCerts(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * testTimeout))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	p := startTLSProxy(t, []string{ln.Addr().String()}, certs, nil)
	want := wantTLSPath(t)
	raw, err := net.Dial("tcp", p.TCPTLSAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	kc := &ktls.Conn{TCPConn: raw.(*net.TCPConn)}
	klog := &syncBuf{}
	tc := tls.Client(kc, &tls.Config{RootCAs: certs.pool, ServerName: "a.test", MinVersion: tls.VersionTLS13, KeyLogWriter: klog})
	tc.SetDeadline(time.Now().Add(testTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	_, w0 := kc.Records()
	if _, err := tc.Write([]byte("data before the KeyUpdate")); err != nil {
		t.Fatal(err)
	}
	_, w1 := kc.Records()
	suite := tc.ConnectionState().CipherSuite
	key, iv, err := ktls.TrafficKeys(suite, klog.secret("CLIENT_TRAFFIC_SECRET_0"))
	if err != nil {
		t.Fatal(err)
	}
	if suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		t.Skip("ChaCha20-Poly1305 negotiated: no AEAD in the standard library to seal with")
	}
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	seq := w1 - w0
	nonce := bytes.Clone(iv)
	for i := 0; i < 8; i++ {
		nonce[4+i] ^= byte(seq >> (56 - 8*i))
	}
	inner := []byte{24, 0, 0, 1, 0, 22} // KeyUpdate(update_not_requested), type handshake
	rec := []byte{23, 3, 3, 0, byte(len(inner) + 16)}
	rec = aead.Seal(rec, nonce, inner, rec[:5])
	if _, err := raw.Write(rec); err != nil {
		t.Fatal(err)
	}
	if want == "ktls" {
		// The proxy closes both sides by itself.
		select {
		case b := <-got:
			if string(b) != "data before the KeyUpdate" {
				t.Fatalf("backend got %q", b)
			}
		case <-time.After(2 * testTimeout):
			t.Fatal("backend not closed after a KeyUpdate on the kernel TLS path")
		}
		expectClose(t, raw, testTimeout)
	} else {
		raw.Close()
		if b := <-got; string(b) != "data before the KeyUpdate" {
			t.Fatalf("backend got %q", b)
		}
	}
	checkTLSPath(t, p, want, 1)
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestTLSIdleCloseSendsCloseNotify: a TLS connection closed for idleness
// ends with a close_notify, so a client that checks can tell the close
// from a truncation (a bare FIN reads as "unexpected EOF" to such
// clients, Python's ssl for one).
func TestTLSIdleCloseSendsCloseNotify(t *testing.T) {
	certs := newTestCerts(t)
	p := startTLSProxy(t, []string{startTCPEcho(t)}, certs, func(c *Config) { c.IdleTimeout = time.Second })
	if wantTLSPath(t) == "ktls" {
		t.Skip("kernel TLS: the idle close sends no close_notify on that path")
	}
	raw, err := net.DialTimeout("tcp", p.TCPTLSAddrs()[0].String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	tc := tls.Client(cc, &tls.Config{RootCAs: certs.pool, ServerName: "a.test"})
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(testTimeout))
	if _, err := tc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q: %v", buf, err)
	}
	before := cc.n.Load() // the handshake, tickets and the echo
	start := time.Now()
	if n, err := tc.Read(buf); err != io.EOF {
		t.Fatalf("read after idle: %d bytes, %v; want EOF", n, err)
	}
	if d := time.Since(start); d < 800*time.Millisecond {
		t.Errorf("closed after %v, want the 1s idle timeout", d)
	}
	if cc.n.Load() == before {
		t.Error("the idle close came as a bare FIN, without a close_notify")
	}
}

// TestTLSIdleCloseHalfClosed: the same for a client that half-closed
// (close_notify, nothing more) while its backend stays silent: the last
// direction's end must not close the socket under the close_notify.
func TestTLSIdleCloseHalfClosed(t *testing.T) {
	certs := newTestCerts(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { _ = ln.Close(); close(stop) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // reads to EOF, never writes nor closes until the test ends
				_, _ = io.Copy(io.Discard, c)
				<-stop
				c.Close()
			}()
		}
	}()
	p := startTLSProxy(t, []string{ln.Addr().String()}, certs, func(c *Config) { c.IdleTimeout = time.Second })
	if wantTLSPath(t) == "ktls" {
		t.Skip("kernel TLS: the idle close sends no close_notify on that path")
	}
	const runs = 5
	lost := 0
	for i := 0; i < runs; i++ {
		raw, err := net.DialTimeout("tcp", p.TCPTLSAddrs()[0].String(), testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		cc := &countingConn{Conn: raw}
		tc := tls.Client(cc, &tls.Config{RootCAs: certs.pool, ServerName: "a.test"})
		_ = tc.SetDeadline(time.Now().Add(testTimeout))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = tc.CloseWrite()
		before := cc.n.Load()
		if _, err := tc.Read(make([]byte, 16)); err != io.EOF {
			t.Fatalf("run %d: read %v, want EOF", i, err)
		}
		if cc.n.Load() == before {
			lost++
		}
		_ = tc.Close()
	}
	if lost > 0 {
		t.Errorf("%d of %d half-closed TLS clients got a bare FIN at the idle close", lost, runs)
	}
}
