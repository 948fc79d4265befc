package proxy

import (
	"encoding/json"
	"net/http"
	"testing"
)

func TestAdminStats(t *testing.T) {
	p := startProxy(t, []string{startWSBackend(t, "a")}, func(c *Config) { c.Admin = "127.0.0.1:0" })
	wsDial(t, p.addr, nil)
	cl := dial(t, p.addr) // open, not spliced
	cl.send("GET / HTTP/1.1\r\n")

	hc := &http.Client{Timeout: testTimeout}
	resp, err := hc.Get("http://" + p.AdminAddr().String() + "/debug/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
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
