// Command report turns the raw results of scripts/bench.sh (one JSON file
// per run of cmd/wsplice-load, named TARGET.SCENARIO.REP.json, plus
// machine.json and perf-*.txt) into results.json, report.md and PNG charts
// in the same directory.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// targets in report order; the first is the baseline, the second the
// project's kernel path. gofloor, evfloor and smfloor are references
// (bench/gofloor, bench/evfloor, bench/evfloor -sockmap), not competitors:
// the targets compare wsplice with HAProxy and nginx only.
var targets = []string{"direct", "sockmap", "userspace", "gofloor", "evfloor", "smfloor", "haproxy", "nginx"}

// wssTargets terminate TLS in front of the same plaintext backend; they
// have a table of their own.
var wssTargets = []string{"wsplice-tls", "haproxy-tls", "nginx-tls"}

var targetNames = map[string]string{
	"direct": "direct", "sockmap": "wsplice sockmap", "userspace": "wsplice userspace",
	"gofloor": "Go floor (bench/gofloor)", "evfloor": "event-loop floor (bench/evfloor)",
	"smfloor": "sockmap floor (bench/evfloor -sockmap)",
	"haproxy": "HAProxy", "nginx": "nginx",
	"wsplice-tls": "wsplice --listen-tls", "haproxy-tls": "HAProxy bind ssl", "nginx-tls": "nginx listen ssl",
}

// run is the subset of cmd/wsplice-load's JSON the report uses.
type run struct {
	Mode       string  `json:"mode"`
	MsgsPerS   float64 `json:"msgs_per_s"`
	MBPerS     float64 `json:"mb_per_s"`
	HsPerS     float64 `json:"handshakes_per_s"`
	Achieved   float64 `json:"achieved_rate"`
	Latency    *lat    `json:"latency"`
	HsLatency  *lat    `json:"handshake_latency"`
	CPUPerMAtt float64 `json:"cpu_s_per_million_attributed"`
	Steal      float64 `json:"steal_fraction"`
	Background float64 `json:"background_cpus"`
	DurationS  float64 `json:"duration_s"`
	Messages   float64 `json:"messages"`
	BytesEcho  float64 `json:"bytes_echoed"`
	CPU        struct {
		Softirq float64 `json:"softirq_s"`
		System  float64 `json:"system_s"`
		Busy    float64 `json:"busy_s"`
		Idle    float64 `json:"idle_s"`
		Steal   float64 `json:"steal_s"`
		NonIdle float64 `json:"nonidle_s"`
	} `json:"cpu"`
	Idle *struct {
		Conns         int     `json:"conns"`
		RSSPerConn    float64 `json:"rss_per_conn_bytes"`
		RSSGrowth     float64 `json:"rss_growth_per_conn_bytes"`
		SlabPerConn   float64 `json:"slab_per_conn_bytes"`
		TCPMemPerConn float64 `json:"tcp_mem_per_conn_bytes"`
	} `json:"idle"`
	Integrity bool   `json:"integrity_ok"`
	Errors    uint64 `json:"errors"`
}

type lat struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p99_9_us"`
}

// stat is the median and spread of one metric over the repetitions.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func summarize(xs []float64) stat {
	if len(xs) == 0 {
		return stat{}
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{Median: m, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// metrics: target -> metric name -> stat.
type metrics map[string]map[string]stat

// summarizeAll summarizes every metric of every target.
func summarizeAll(samples map[string]map[string][]float64) metrics {
	m := metrics{}
	for t, ks := range samples {
		m[t] = map[string]stat{}
		for k, xs := range ks {
			m[t][k] = summarize(xs)
		}
	}
	return m
}

// A quiet run had at most quietSteal of its CPU time stolen by other
// guests and at most quietBackground CPUs busy with other work in the
// second before it (background_cpus).
const (
	quietSteal      = 0.05
	quietBackground = 0.25
)

// quietRuns summarizes the quiet runs only, and says how many of all the
// runs they are.
type quietRuns struct {
	m        metrics
	runs, of int
}

func main() {
	in := flag.String("in", "", "results directory written by scripts/bench.sh")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "report: -in DIR is required")
		os.Exit(2)
	}
	if err := build(*in); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// systemCPU is the run's CPU seconds system-wide: cpu.nonidle_s (CPUs x
// wall time - idle - steal), or, from a generator that did not write it
// yet, the same from the machine's vCPUs and the measured duration. Not
// cpu.busy_s: the tick-sampled busy fields missed up to 40% of the time
// at a partial load on this project's VMs (cmd/wsplice-load, cpuUsage).
func systemCPU(r run, vcpus float64) float64 {
	if r.CPU.NonIdle > 0 {
		return r.CPU.NonIdle
	}
	if vcpus <= 0 || r.DurationS <= 0 {
		return math.NaN()
	}
	return max(0, vcpus*r.DurationS-r.CPU.Idle-r.CPU.Steal)
}

func build(dir string) error {
	var machine map[string]any
	if b, err := os.ReadFile(filepath.Join(dir, "machine.json")); err == nil {
		json.Unmarshal(b, &machine)
	}
	vcpus, _ := machine["vcpus"].(float64)
	files, err := filepath.Glob(filepath.Join(dir, "raw", "*.json"))
	if err != nil {
		return err
	}
	samples := map[string]map[string][]float64{}
	quietSamples := map[string]map[string][]float64{}
	var quiet quietRuns
	var isQuiet bool // the run being read
	put := func(ss map[string]map[string][]float64, t, k string, v float64) {
		if ss[t] == nil {
			ss[t] = map[string][]float64{}
		}
		ss[t][k] = append(ss[t][k], v)
	}
	add := func(t, k string, v float64) {
		put(samples, t, k, v)
		if isQuiet {
			put(quietSamples, t, k, v)
		}
	}
	raw := map[string]json.RawMessage{}
	for _, f := range files {
		parts := strings.Split(strings.TrimSuffix(filepath.Base(f), ".json"), ".")
		if len(parts) != 3 {
			continue
		}
		t, sc := parts[0], parts[1]
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r run
		if len(b) == 0 || json.Unmarshal(b, &r) != nil {
			continue // a failed run; failures.txt says why
		}
		raw[filepath.Base(f)] = b
		isQuiet = r.Steal <= quietSteal && r.Background <= quietBackground
		quiet.of++
		if isQuiet {
			quiet.runs++
		}
		add(t, "steal", r.Steal)
		add(t, "background", r.Background)
		switch sc {
		case "open-loop":
			if r.Latency != nil {
				add(t, "ol_p50", r.Latency.P50)
				add(t, "ol_p90", r.Latency.P90)
				add(t, "ol_p99", r.Latency.P99)
				add(t, "ol_p999", r.Latency.P999)
			}
			if sys := systemCPU(r, vcpus); r.Messages > 0 && !math.IsNaN(sys) {
				add(t, "ol_cpu_sys_us", sys/r.Messages*1e6) // s per million = µs per message
				add(t, "ol_cpu_net_us", max(0, sys-r.Background*r.DurationS)/r.Messages*1e6)
			}
			add(t, "ol_cpu_us", r.CPUPerMAtt)
			add(t, "ol_rate", r.Achieved)
		case "closed-loop":
			add(t, "cl_msgs", r.MsgsPerS)
			if r.Latency != nil {
				add(t, "cl_p50", r.Latency.P50)
				add(t, "cl_p99", r.Latency.P99)
			}
			if sys := systemCPU(r, vcpus); r.Messages > 0 && !math.IsNaN(sys) {
				add(t, "cl_cpu_sys_us", sys/r.Messages*1e6)
			}
			add(t, "cl_cpu_us", r.CPUPerMAtt)
			if r.CPU.Busy > 0 {
				add(t, "cl_softirq_share", r.CPU.Softirq/r.CPU.Busy)
			}
		case "bulk":
			add(t, "bulk_mbs", r.MBPerS)
			if sys := systemCPU(r, vcpus); r.BytesEcho > 0 && !math.IsNaN(sys) {
				add(t, "bulk_cpu_gb", sys/(r.BytesEcho/1e9))
			}
		case "handshake":
			add(t, "hs_rate", r.HsPerS)
			add(t, "hs_cpu_us", r.CPUPerMAtt) // s per million = µs per handshake
			if r.HsLatency != nil {
				add(t, "hs_p50", r.HsLatency.P50)
				add(t, "hs_p99", r.HsLatency.P99)
			}
		case "idle":
			if r.Idle != nil {
				add(t, "idle_conns", float64(r.Idle.Conns))
				add(t, "idle_rss", r.Idle.RSSPerConn)
				if r.Idle.RSSGrowth != 0 { // from a generator that reports it
					add(t, "idle_rss_growth", r.Idle.RSSGrowth)
				}
				add(t, "idle_slab", r.Idle.SlabPerConn)
				add(t, "idle_tcpmem", r.Idle.TCPMemPerConn)
			}
		}
	}
	m := summarizeAll(samples)
	quiet.m = summarizeAll(quietSamples)
	out, err := json.MarshalIndent(map[string]any{"machine": machine, "summary": m, "summary_quiet": quiet.m, "quiet_steal_max": quietSteal, "quiet_background_max": quietBackground, "runs": raw}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), out, 0o644); err != nil {
		return err
	}
	if err := charts(dir, m); err != nil {
		return fmt.Errorf("charts: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(markdown(dir, m, quiet, machine)+wssMarkdown(dir, m)), 0o644)
}
