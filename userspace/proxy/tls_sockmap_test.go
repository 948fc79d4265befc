package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/loader"
	"github.com/wsplice/wsplice/userspace/dataplane"
)

// TestTLSSockmapDataplane runs every kind of listener on the kernel data
// path: plain L4 pairs are spliced by sockmap (bytes counted by BPF), TLS
// pairs are handed to the userspace relay, over kernel TLS where the
// kernel has it (asserted in the VM of `make vm-test`).
func TestTLSSockmapDataplane(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" {
			t.Fatal("WSPLICE_REQUIRE_PRIV=1 but not root")
		}
		t.Skip("needs root (CAP_BPF, CAP_NET_ADMIN) for the sockmap data path: run with sudo go test ./userspace/proxy/")
	}
	want := wantTLSPath(t)
	certs := newTestCerts(t)
	errs := &errorLines{}
	log := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), errs)).Level(zerolog.WarnLevel)
	dp, err := loader.New(log, loader.Options{Fallback: dataplane.NewUserspace(log)})
	if err != nil {
		t.Fatalf("load the sockmap data path: %+v", err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	// Two proxies on one data path: HTTPS/WSS in front of a WebSocket
	// backend, the L4 listeners in front of a TCP echo.
	serve := func(cfg Config) *Proxy {
		cfg.Certificates, cfg.ShutdownTimeout = certs.pairs, time.Second
		p, err := New(cfg, dp, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Serve(ctx) }()
		t.Cleanup(func() {
			cancel()
			<-done
			if n := errs.count.Load(); n > 0 {
				t.Errorf("%d error lines logged", n)
			}
		})
		return p
	}
	p := serve(Config{TLSListen: []string{"127.0.0.1:0"}, Backends: []string{startWSBackend(t, "a")}})
	p4 := serve(Config{TCPListen: []string{"127.0.0.1:0"}, TCPTLSListen: []string{"127.0.0.1:0"}, Backends: []string{startTCPEcho(t)}})

	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: certs.pool, ServerName: "a.test"}, HandshakeTimeout: testTimeout}
	ws, _, err := d.Dial("wss://"+p.TLSAddrs()[0].String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	wsRandomEcho(t, ws)

	c, err := net.Dial("tcp", p4.TCPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	streamEcho(t, c, c.(*net.TCPConn).CloseWrite, 3<<20)
	c.Close()
	tc, err := tls.Dial("tcp", p4.TCPTLSAddrs()[0].String(), &tls.Config{RootCAs: certs.pool, ServerName: "a.test"})
	if err != nil {
		t.Fatal(err)
	}
	streamEcho(t, tc, tc.CloseWrite, 3<<20)
	tc.Close()

	st, st4 := p.Stats(), p4.Stats()
	t.Logf("stats: %+v %+v", st, st4)
	if st.Dataplane != "sockmap" || st.TLSPath[want] != 1 || st4.TLSPath[want] != 1 || st.SplicedTotal != 3 {
		t.Errorf("stats = %+v, %+v: want sockmap, 3 pairs, a TLS session on %s at each proxy", st, st4, want)
	}
	// The plain L4 pair went through the kernel: its 2 × 3 MiB (less
	// what backpressure passed to userspace) were redirected by BPF.
	deadline := time.Now().Add(testTimeout)
	for p.Stats().BytesKernel == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if p.Stats().BytesKernel == 0 {
		t.Errorf("no byte moved by the kernel: %+v", p.Stats())
	}
}
