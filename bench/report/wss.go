package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// wssMarkdown is the report's WSS section: the TLS-terminating targets,
// with the plaintext direct run for reference. Empty when none ran.
func wssMarkdown(dir string, m metrics) string {
	var ts []string
	for _, t := range wssTargets {
		if _, ok := m[t]; ok {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return ""
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## WSS: TLS termination\n\n")
	p("wsplice's TLS records went through **%s** on this run (its /debug/stats `tls_path`). ", wssPath(dir))
	p("Each proxy terminates TLS with the same self-signed ECDSA P-256 certificate and forwards plaintext WebSocket to the same echo backend. ")
	p("The generator speaks TLS 1.3 without verifying the certificate (InsecureSkipVerify: the client's trust store is not what is measured) ")
	p("and does a full handshake per connection (no session resumption), so handshakes/s includes the ECDHE and the signature.\n\n")
	p("| target | closed-loop msgs/s | closed-loop p50 µs | p99 µs | CPU µs/msg (attributed) | msgs/s vs best of HAProxy/nginx TLS | msgs/s vs plaintext direct | handshakes/s | handshake p50 µs | p99 µs | handshakes/s vs best |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|\n")
	best := func(k string) float64 {
		v := math.NaN()
		for _, t := range []string{"haproxy-tls", "nginx-tls"} {
			if x := m.med(t, k); !math.IsNaN(x) && (math.IsNaN(v) || x > v) {
				v = x
			}
		}
		return v
	}
	rows := append([]string{}, ts...)
	if _, ok := m["direct"]; ok {
		rows = append(rows, "direct")
	}
	for _, t := range rows {
		name := targetNames[t]
		if t == "direct" {
			name = "direct (plaintext, reference)"
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name,
			m.cell(t, "cl_msgs", 1, 0), m.cell(t, "cl_p50", 1, 0), m.cell(t, "cl_p99", 1, 0), m.cell(t, "cl_cpu_us", 1, 1),
			ratio(m.med(t, "cl_msgs"), best("cl_msgs")), ratio(m.med(t, "cl_msgs"), m.med("direct", "cl_msgs")),
			m.cell(t, "hs_rate", 1, 0), m.cell(t, "hs_p50", 1, 0), m.cell(t, "hs_p99", 1, 0),
			ratio(m.med(t, "hs_rate"), best("hs_rate")))
	}
	p("\n")
	return b.String()
}

// wssPath reads which path carried wsplice's TLS sessions from the
// /debug/stats that scripts/bench.sh saved before stopping it.
func wssPath(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "wsplice-tls-stats.*.json"))
	var ktls, user uint64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var s struct {
			TLSPath map[string]uint64 `json:"tls_path"`
		}
		if json.Unmarshal(b, &s) == nil {
			ktls += s.TLSPath["ktls"]
			user += s.TLSPath["userspace"]
		}
	}
	switch {
	case ktls == 0 && user == 0:
		return "an unknown path (no stats saved)"
	case ktls == 0:
		return fmt.Sprintf("the userspace TLS path (Go's crypto/tls; this kernel has no kernel TLS): %d sessions", user)
	case user == 0:
		return fmt.Sprintf("kernel TLS: %d sessions", ktls)
	}
	return fmt.Sprintf("kernel TLS for %d sessions and userspace for %d", ktls, user)
}
