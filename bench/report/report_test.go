package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeRun writes one raw result as scripts/bench.sh names it.
func writeRun(t *testing.T, dir, target, scenario string, rep int, r map[string]any) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "raw", fmt.Sprintf("%s.%s.%d.json", target, scenario, rep))
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rawDir returns a results directory with its raw/ folder.
func rawDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildReport builds dir's report and returns its Markdown.
func buildReport(t *testing.T, dir string) string {
	t.Helper()
	if err := build(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A run with steal over quietSteal, or with background work, counts in
// the medians over all runs and not in the quiet runs' table.
func TestQuietRuns(t *testing.T) {
	dir := rawDir(t)
	rates := map[string][3]float64{
		"direct": {100000, 100000, 100000}, "sockmap": {60000, 10000, 62000},
		"haproxy": {50000, 51000, 52000}, "nginx": {40000, 41000, 42000},
	}
	for target, rs := range rates {
		for i, rate := range rs {
			r := map[string]any{"mode": "closed-loop", "msgs_per_s": rate, "integrity_ok": true}
			switch {
			case target == "sockmap" && i == 1:
				r["steal_fraction"] = 0.4 // the slow run: stolen
			case target == "haproxy" && i == 2:
				r["background_cpus"] = 1.5 // other work before it
			}
			writeRun(t, dir, target, "closed-loop", i+1, r)
		}
	}
	// Handshakes: HAProxy's and nginx's runs all stolen, so the quiet
	// table has no best of them to compare with.
	for _, target := range []string{"direct", "sockmap", "haproxy", "nginx"} {
		r := map[string]any{"mode": "handshake", "handshakes_per_s": 3000.0, "integrity_ok": true}
		if target == "haproxy" || target == "nginx" {
			r["steal_fraction"] = 0.3
		}
		writeRun(t, dir, target, "handshake", 1, r)
	}
	md := buildReport(t, dir)
	// The quiet runs' table: from its header to the blank line after it.
	i := strings.Index(md, "| target | measured (quiet runs) |")
	if i < 0 {
		t.Fatalf("no quiet runs' table:\n%s", md)
	}
	table := md[i:]
	table = table[:strings.Index(table, "\n\n")]
	if strings.Contains(table, "NaN") {
		t.Errorf("a missing value printed as NaN in the quiet runs' table:\n%s", table)
	}
	if !strings.Contains(md, "| handshakes/s ≥ best of HAProxy/nginx | 3000 vs – – (–) | 1.00× | n/a |") {
		t.Errorf("quiet handshake row without a best missing or wrong:\n%s", md)
	}
	// All runs: the median of 60000, 10000, 62000.
	if !strings.Contains(md, "| closed-loop msgs/s ≥ 1.3× best of HAProxy/nginx | 60000 = 1.18× haproxy (51000) |") {
		t.Errorf("all-runs target row missing or wrong:\n%s", md)
	}
	if !strings.Contains(md, "quiet runs only (12 of 16 runs") {
		t.Errorf("quiet runs' count missing or wrong:\n%s", md)
	}
	// Quiet runs: sockmap 61000 (60000 and 62000), HAProxy 50500.
	if !strings.Contains(md, "| closed-loop msgs/s ≥ 1.3× best of HAProxy/nginx | 61000 = 1.21× haproxy (50500) |") {
		t.Errorf("quiet target row missing or wrong:\n%s", md)
	}
	var res struct {
		Summary      metrics `json:"summary"`
		SummaryQuiet metrics `json:"summary_quiet"`
	}
	rb, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rb, &res); err != nil {
		t.Fatal(err)
	}
	if got := res.Summary["sockmap"]["cl_msgs"]; got.N != 3 || got.Median != 60000 {
		t.Errorf("summary sockmap cl_msgs = %+v, want 3 runs, median 60000", got)
	}
	if got := res.SummaryQuiet["sockmap"]["cl_msgs"]; got.N != 2 || got.Median != 61000 {
		t.Errorf("quiet summary sockmap cl_msgs = %+v, want 2 runs, median 61000", got)
	}
}

// With every run quiet, the report has no second table.
func TestQuietRunsAllQuiet(t *testing.T) {
	dir := rawDir(t)
	for _, target := range []string{"direct", "sockmap", "haproxy", "nginx"} {
		writeRun(t, dir, target, "closed-loop", 1, map[string]any{"mode": "closed-loop", "msgs_per_s": 1000.0, "integrity_ok": true})
	}
	if md := buildReport(t, dir); strings.Contains(md, "quiet runs only") {
		t.Errorf("a report of quiet runs has a quiet-runs table:\n%s", md)
	}
}

// A run limited by TARGETS and SCENARIOS (here handshakes only, without
// the direct connection) still gets a report, with the charts it has data
// for and none of the others.
func TestPartialRun(t *testing.T) {
	dir := rawDir(t)
	for i, target := range []string{"sockmap", "evfloor", "haproxy", "nginx"} {
		writeRun(t, dir, target, "handshake", 1, map[string]any{"mode": "handshake", "handshakes_per_s": 3000.0 + float64(i), "integrity_ok": true})
	}
	md := buildReport(t, dir)
	if !strings.Contains(md, "| handshakes/s ≥ best of HAProxy/nginx | 3000 vs nginx 3003 (1.00×) | 1.00× | no |") {
		t.Errorf("handshake target row missing or wrong:\n%s", md)
	}
	for _, f := range []string{"latency.png", "throughput.png", "cpu.png", "memory.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s drawn without data", f)
		}
		if strings.Contains(md, "("+f+")") {
			t.Errorf("report links %s, which has no data", f)
		}
	}
	if strings.Contains(md, "NaN") {
		t.Errorf("a missing value printed as NaN:\n%s", md)
	}
	if strings.Contains(md, "## Charts") {
		t.Errorf("a Charts heading without charts:\n%s", md)
	}
}

// System-wide CPU per message comes from cpu.nonidle_s, or, in results of
// a generator that did not write it, from the vCPUs x duration less idle
// and steal; never from the tick-sampled busy_s.
func TestSystemCPU(t *testing.T) {
	dir := rawDir(t)
	if err := os.WriteFile(filepath.Join(dir, "machine.json"), []byte(`{"vcpus": 2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// direct: 5 s of 20 non-idle, per 50,000 messages = 100 µs a message.
	writeRun(t, dir, "direct", "open-loop", 1, map[string]any{"mode": "open-loop", "messages": 50000, "duration_s": 10,
		"cpu": map[string]any{"busy_s": 1, "idle_s": 14, "steal_s": 1, "nonidle_s": 5}, "integrity_ok": true})
	// sockmap, old format: 2*10 - 12 - 0 = 8 s = 160 µs a message.
	writeRun(t, dir, "sockmap", "open-loop", 1, map[string]any{"mode": "open-loop", "messages": 50000, "duration_s": 10,
		"cpu": map[string]any{"busy_s": 1, "idle_s": 12}, "integrity_ok": true})
	buildReport(t, dir)
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Summary map[string]map[string]struct {
			Median float64 `json:"median"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]float64{"direct": 100, "sockmap": 160} {
		if got := res.Summary[target]["ol_cpu_sys_us"].Median; got != want {
			t.Errorf("%s system-wide CPU %.1f µs a message, want %.0f", target, got, want)
		}
	}
}

// With the sockmap floor in the run, the targets table gives the floor's
// figure beside the kernel path's, and whether the floor meets it.
func TestSockmapFloorColumn(t *testing.T) {
	dir := rawDir(t)
	for target, rate := range map[string]float64{"direct": 100000, "sockmap": 45000, "smfloor": 48000, "haproxy": 50000, "nginx": 55000} {
		writeRun(t, dir, target, "closed-loop", 1, map[string]any{"mode": "closed-loop", "msgs_per_s": rate, "integrity_ok": true})
	}
	md := buildReport(t, dir)
	for _, want := range []string{
		"| target | measured | needed | met | sockmap floor, same runs (met) |",
		"| closed-loop msgs/s ≥ 1.3× best of HAProxy/nginx | 45000 = 0.82× nginx (55000) | 1.30× | no | 48000 = 0.87× nginx (55000) (no) |",
		"| closed-loop msgs/s ≥ 0.8× direct | 0.45× direct (100000) | 0.80× | no | 0.48× direct (100000) (no) |",
		// The floor ran no idle scenario: nothing to show.
		"| balancer RSS per idle WebSocket ≤ 1 KiB | – B (HAProxy – B, nginx – B) | 1024 B | n/a | – |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "NaN") {
		t.Errorf("a missing value printed as NaN:\n%s", md)
	}
}
