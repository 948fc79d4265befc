package proxy

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

func TestAdminStats(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.Admin = "127.0.0.1:0" })
	wsDial(t, p.addr, nil)
	cl := dial(t, p.addr) // open, not spliced
	cl.send("GET / HTTP/1.1\r\n")

	hc := &http.Client{Timeout: testTimeout}
	var m map[string]any
	// The proxy registers the open connection after the client's dial
	// returns (its accept loop runs concurrently), and hands the upgraded
	// one to the data path after the client has read its 101: read until
	// both show, within testTimeout.
	for deadline := time.Now().Add(testTimeout); ; time.Sleep(10 * time.Millisecond) {
		resp, err := hc.Get("http://" + p.AdminAddr().String() + "/debug/stats")
		if err != nil {
			t.Fatal(err)
		}
		m = nil
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if (m["connections"] == 1.0 && m["spliced"] == 1.0) || time.Now().After(deadline) {
			break
		}
	}
	for _, k := range []string{"dataplane", "spliced", "spliced_total", "map_entries", "bytes_kernel", "bytes_userspace",
		"goroutines", "open_fds", "connections", "handshakes_total", "handshake_errors_total"} {
		if _, ok := m[k]; !ok {
			t.Errorf("stats lack %q: %v", k, m)
		}
	}
	if m["dataplane"] != "userspace" || m["spliced"] != 1.0 || m["handshakes_total"] != 1.0 || m["connections"] != 1.0 {
		t.Errorf("stats = %v", m)
	}
	if m["open_fds"].(float64) < 4 || m["goroutines"].(float64) < 4 {
		t.Errorf("open_fds %v goroutines %v", m["open_fds"], m["goroutines"])
	}
}

// The admin server also listens on a unix socket, owner-only, and removes
// it on shutdown.
func TestAdminUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	p := startProxy(t, nil, func(c *Config) { c.Admin = "unix:" + path })
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v", path, err, fi.Mode())
	}
	hc := &http.Client{Timeout: testTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	resp, err := hc.Get("http://admin/debug/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /debug/stats over the unix socket: %s", resp.Status)
	}
	p.stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}

// When the built-in default admin address is taken, wsplice starts without
// an admin server; an address given explicitly must work or start-up fails.
func TestAdminDefaultTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := zerolog.Nop()
	cfg := Config{Listen: []string{"127.0.0.1:0"}, Admin: ln.Addr().String()}
	if _, err := New(cfg, dataplane.NewUserspace(log), log); err == nil {
		t.Fatal("explicit admin address in use: New succeeded")
	}
	cfg.AdminOptional = true
	p, err := New(cfg, dataplane.NewUserspace(log), log)
	if err != nil {
		t.Fatalf("default admin address in use: %v", err)
	}
	defer p.closeListeners()
	if p.AdminAddr() != nil {
		t.Errorf("admin server on %v, want none", p.AdminAddr())
	}
}
