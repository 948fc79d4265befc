package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func (m metrics) get(t, k string) (stat, bool) {
	s, ok := m[t][k]
	return s, ok && s.N > 0
}

// ran reports whether target t has a value for any of keys: the floors and
// the TLS targets run a subset of the scenarios, and charts leave them out
// of the others.
func (m metrics) ran(t string, keys ...string) bool {
	for _, k := range keys {
		if _, ok := m.get(t, k); ok {
			return true
		}
	}
	return false
}

func (m metrics) med(t, k string) float64 {
	s, ok := m.get(t, k)
	if !ok {
		return math.NaN()
	}
	return s.Median
}

// cell formats a metric as "median (min–max)" with the given precision.
func (m metrics) cell(t, k string, scale float64, prec int) string {
	s, ok := m.get(t, k)
	if !ok {
		return "–"
	}
	f := func(v float64) string { return fmt.Sprintf("%.*f", prec, v*scale) }
	if s.N == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

// ovh is t's median of k over direct's: its overhead.
func (m metrics) ovh(t, k string) float64 { return m.med(t, k) - m.med("direct", k) }

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func present(m metrics) []string {
	var ts []string
	for _, t := range targets {
		if _, ok := m[t]; ok {
			ts = append(ts, t)
		}
	}
	return ts
}

// bestOf returns the better of HAProxy and nginx for a metric (higher or
// lower is better) and which one it was.
func bestOf(m metrics, k string, higher bool) (float64, string) {
	best, who := math.NaN(), ""
	for _, t := range []string{"haproxy", "nginx"} {
		v := m.med(t, k)
		if math.IsNaN(v) {
			continue
		}
		if math.IsNaN(best) || (higher && v > best) || (!higher && v < best) {
			best, who = v, t
		}
	}
	return best, who
}

// bestOvh returns the lower of HAProxy's and nginx's overheads over
// direct for a metric, and which one it was.
func bestOvh(m metrics, k string) (float64, string) {
	best, who := math.NaN(), ""
	for _, t := range []string{"haproxy", "nginx"} {
		if v := m.ovh(t, k); !math.IsNaN(v) && (math.IsNaN(best) || v < best) {
			best, who = v, t
		}
	}
	return best, who
}

func markdown(dir string, m metrics, quiet quietRuns, machine map[string]any) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	ts := present(m)
	str := func(k string) string { return fmt.Sprint(machine[k]) }

	p("# wsplice benchmark: %s\n\n", str("date"))
	p("Machine: %s, %s vCPUs, kernel %s, %s; %s; HAProxy %s, nginx %s; wsplice %s. ",
		str("cpu_model"), str("vcpus"), str("kernel"), str("os"), str("go"), str("haproxy"), str("nginx"), str("wsplice"))
	if str("topology") == "netns" {
		p("Network namespaces: generator 198.18.0.1 -> balancer 198.18.0.2/198.18.1.1 -> echo backend 198.18.1.2, over two veth pairs (direct: routed through the balancer's namespace, no proxy); all on one machine, unpinned. ")
	} else {
		p("Loopback; the generator, the proxy and the echo backend share the machine, unpinned. ")
	}
	p("Each scenario ran %s time(s) for %s after %s of warm-up; cells are **median (min–max)**. ",
		str("reps"), str("duration"), str("warmup"))
	p("Load average at start: %s. Process fd limit: %s (so idle scale stops at %s connections: the balancer holds two fds per connection).\n\n",
		str("loadavg_start"), str("fd_limit"), str("idle_conns"))
	if str("smoke") == "1" {
		p("**Smoke run** (CI): seconds per scenario, one repetition; the numbers are not meaningful.\n\n")
	}

	p("## Summary\n\n")
	p("| target | closed-loop msgs/s | open-loop p50 µs | open-loop p99 µs | CPU µs/msg (open-loop) | CPU overhead µs/msg over direct | bulk MB/s | handshakes/s | balancer RSS per idle conn (B) | kernel slab per conn (B) |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	dcpu := m.med("direct", "ol_cpu_us")
	for _, t := range ts {
		ovh := "–"
		if v := m.med(t, "ol_cpu_us"); t != "direct" && !math.IsNaN(dcpu) && !math.IsNaN(v) {
			ovh = fmt.Sprintf("%.1f", v-dcpu)
		}
		rss := m.cell(t, "idle_rss", 1, 0)
		if t == "direct" {
			rss = "(backend) " + rss
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", targetNames[t],
			m.cell(t, "cl_msgs", 1, 0), m.cell(t, "ol_p50", 1, 0), m.cell(t, "ol_p99", 1, 0),
			m.cell(t, "ol_cpu_us", 1, 1), ovh, m.cell(t, "bulk_mbs", 1, 0), m.cell(t, "hs_rate", 1, 0),
			rss, m.cell(t, "idle_slab", 1, 0))
	}
	p("\nMessages are 64 B WebSocket binary frames, echoed; a msg/s is one message sent and its echo received. ")
	p("Open-loop runs at %s msgs/s over %s connections; latency runs from each message's *scheduled* send time. ", str("rate"), str("open_conns"))
	p("CPU per message is *attributed* CPU: utime+stime of the generator, the echo backend and the proxy, plus every kernel thread (kworkers, ksoftirqd: where the sockmap redirect runs); ")
	p("this kernel has no IRQ time accounting, so softirq time is charged to the task a tick interrupts, on loopback mostly ours. ")
	p("System-wide CPU from /proc/stat (CPUs × wall time − idle − steal, which counts every task, kworker and softirq on the machine, other tenants' work too) is in the details table and in a second CPU target row; not its busy fields, which are sampled at the timer tick and miss time a CPU spends busy between idle periods (NO_HZ): on the 2-vCPU VMs measured here they summed with idle and steal to as little as 60%% of the CPU time at the open-loop rate. ")
	p("The overhead column subtracts the direct run. ")
	p("Kernel slab per connection is system-wide, for every socket on the path (direct: 2 sockets per connection, a proxy: 4).\n\n")

	p("## Ratios\n\n")
	p("| target | closed-loop msgs/s vs direct | vs wsplice sockmap | bulk MB/s vs direct | vs sockmap | handshakes/s vs direct | vs sockmap | open-loop p50 vs direct | vs sockmap |\n")
	p("|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range ts {
		if t == "direct" {
			continue
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", targetNames[t],
			ratio(m.med(t, "cl_msgs"), m.med("direct", "cl_msgs")), ratio(m.med(t, "cl_msgs"), m.med("sockmap", "cl_msgs")),
			ratio(m.med(t, "bulk_mbs"), m.med("direct", "bulk_mbs")), ratio(m.med(t, "bulk_mbs"), m.med("sockmap", "bulk_mbs")),
			ratio(m.med(t, "hs_rate"), m.med("direct", "hs_rate")), ratio(m.med(t, "hs_rate"), m.med("sockmap", "hs_rate")),
			ratio(m.med(t, "ol_p50"), m.med("direct", "ol_p50")), ratio(m.med(t, "ol_p50"), m.med("sockmap", "ol_p50")))
	}

	p("\n## Targets for the kernel path (issue 5)\n\n")
	p("%s", targetsHeader(m, "measured"))
	targetRows(p, m)
	p("\nA negative overhead means the proxy measured below direct: within the noise of this shared machine.\n\n")
	if kept, all := quiet.runs, quiet.of; kept > 0 && kept < all {
		p("The same targets from the quiet runs only (%d of %d runs: those with at most %.0f%% steal and at most %.2f background busy CPUs; a target whose runs of a scenario were all noisy has none here): ",
			kept, all, 100*quietSteal, quietBackground)
		p("on a shared VM, time stolen by other guests, and other work, slow whatever runs then, so a median over noisy and quiet runs mixes two machines.\n\n")
		p("%s", targetsHeader(quiet.m, "measured (quiet runs)"))
		targetRows(p, quiet.m)
		p("\n")
	}
	hs := m.med("sockmap", "hs_rate")
	bh, bhw := bestOf(m, "hs_rate", true)
	// CPU per handshake is steadier on a shared machine than the rate.
	if hc := m.ovh("sockmap", "hs_cpu_us"); !math.IsNaN(hc) {
		bc, bcw := bestOvh(m, "hs_cpu_us")
		p("CPU per handshake over direct (attributed, median): wsplice sockmap %.0f µs, %s %.0f µs (%s)", hc, bcw, bc, ratio(hc, bc))
		if u := m.ovh("userspace", "hs_cpu_us"); !math.IsNaN(u) {
			p("; userspace path %.0f µs", u)
		}
		p(".\n\n")
	}
	// The reference floors: one sentence each, the same figures.
	for _, f := range []struct{ t, what, then string }{
		{"gofloor", "The Go floor (bench/gofloor: a proxy on Go's net package that parses nothing and copies with io.Copy)",
			fmt.Sprintf("what any design on Go's net package starts from. wsplice sockmap made %s of the floor's rate.", ratio(hs, m.med("gofloor", "hs_rate")))},
		{"evfloor", "The event-loop floor (bench/evfloor: the same least work, in an epoll loop per core on raw non-blocking sockets, outside Go's net package)",
			"where a Go handshake layer of nginx's design would start, before any parsing and before the kernel path's own set-up and teardown of each connection."},
		{"smfloor", "The sockmap floor (bench/evfloor -sockmap: the event-loop floor splicing each pair with the least sk_skb verdict, bpf/floor.c)",
			fmt.Sprintf("the kernel mechanism's own cost on the leanest handshake layer, without any of wsplice's bookkeeping. wsplice sockmap made %s of its handshake rate and %s of its closed-loop rate.",
				ratio(hs, m.med("smfloor", "hs_rate")), ratio(m.med("sockmap", "cl_msgs"), m.med("smfloor", "cl_msgs")))},
	} {
		r := m.med(f.t, "hs_rate")
		if math.IsNaN(r) {
			continue
		}
		vsBest := ""
		if !math.IsNaN(bh) {
			vsBest = fmt.Sprintf(" (%s %s)", ratio(r, bh), bhw)
		}
		cpu := "" // no direct run: no overhead to give
		if o := m.ovh(f.t, "hs_cpu_us"); !math.IsNaN(o) {
			cpu = fmt.Sprintf(", with %.0f µs of CPU per handshake over direct", o)
		}
		p("%s made %.0f handshakes/s%s%s: %s\n\n", f.what, r, vsBest, cpu, f.then)
	}

	heading := "## Charts\n\n" // only above a chart: a partial run may have none
	for _, c := range []struct{ f, t string }{
		{"latency.png", "Open-loop latency percentiles"}, {"throughput.png", "Closed-loop echo throughput"},
		{"cpu.png", "CPU per message"}, {"memory.png", "Memory per idle connection"},
	} {
		if _, err := os.Stat(filepath.Join(dir, c.f)); err == nil {
			p("%s![%s](%s)\n\n", heading, c.t, c.f)
			heading = ""
		}
	}

	p("## Details\n\n")
	p("| target | open-loop p90 µs | p99.9 µs | achieved rate | system-wide CPU µs/msg (open-loop) | same less background | closed-loop p50 µs | p99 µs | attributed CPU µs/msg closed-loop | softirq share of busy CPU (closed-loop) | bulk CPU s/GB | handshake p50 µs | p99 µs | attributed CPU µs per handshake | idle conns | balancer RSS growth per idle conn from start (B) | kernel TCP buffer per conn (B) | steal | background busy CPUs |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range ts {
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", targetNames[t],
			m.cell(t, "ol_p90", 1, 0), m.cell(t, "ol_p999", 1, 0), m.cell(t, "ol_rate", 1, 0), m.cell(t, "ol_cpu_sys_us", 1, 1), m.cell(t, "ol_cpu_net_us", 1, 1),
			m.cell(t, "cl_p50", 1, 0), m.cell(t, "cl_p99", 1, 0), m.cell(t, "cl_cpu_us", 1, 1), m.cell(t, "cl_softirq_share", 100, 0)+"%",
			m.cell(t, "bulk_cpu_gb", 1, 2), m.cell(t, "hs_p50", 1, 0), m.cell(t, "hs_p99", 1, 0), m.cell(t, "hs_cpu_us", 1, 0), m.cell(t, "idle_conns", 1, 0), m.cell(t, "idle_rss_growth", 1, 0),
			m.cell(t, "idle_tcpmem", 1, 0), m.cell(t, "steal", 100, 1)+"%", m.cell(t, "background", 1, 2))
	}
	p("\nBalancer RSS per idle connection (summary) is the slope from half of the idle connections open to all of them; the growth from before the first is beside it here: it also counts whatever the process had freed or not yet touched before, which depends on its history. \"Background busy CPUs\" is the system-wide CPU (non-idle, as above; the tick-sampled busy fields in results written before 2026-12-07T16) measured for one second before each run with no load: other work on this shared VM. ")
	p("It inflates every CPU-per-message figure; the \"less background\" column subtracts it (an estimate: the background yields when the run saturates the machine).\n\n")

	perfs, _ := filepath.Glob(filepath.Join(dir, "perf-*.txt"))
	sort.Strings(perfs)
	if len(perfs) > 0 {
		p("## Where the time goes (perf)\n\n")
		for _, f := range perfs {
			b2, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			p("### %s\n\n```\n%s```\n\n", strings.TrimSuffix(filepath.Base(f), ".txt"), string(b2))
		}
	}
	if f, err := os.ReadFile(filepath.Join(dir, "failures.txt")); err == nil && len(f) > 0 {
		p("## Failed runs\n\n```\n%s```\n\n", string(f))
	}
	p("Reproduce: `sudo make bench` (environment variables in `scripts/bench.sh`); raw results in `results.json`.\n")
	return b.String()
}

// targetsHeader is the targets table's header: with a column for the
// sockmap floor when the run has one.
func targetsHeader(m metrics, measured string) string {
	if _, ok := m["smfloor"]; ok {
		return "| target | " + measured + " | needed | met | sockmap floor, same runs (met) |\n|---|---|---|---|---|\n"
	}
	return "| target | " + measured + " | needed | met |\n|---|---|---|---|\n"
}

// targetRows writes the rows of the targets table from m: the
// kernel path's figure, and the same figure for the sockmap floor (the
// least sk_skb splice, bench/evfloor -sockmap) where the run has it, to
// show whether the kernel mechanism itself could meet the target here.
func targetRows(p func(string, ...any), m metrics) {
	// A value or a name a noisy table may lack (no quiet run): "–".
	num := func(v float64, prec int) string {
		if math.IsNaN(v) {
			return "–"
		}
		return fmt.Sprintf("%.*f", prec, v)
	}
	name := func(who string) string {
		if who == "" {
			return "–"
		}
		return who
	}
	yes := func(ok bool, vals ...float64) string {
		for _, v := range vals {
			if math.IsNaN(v) {
				return "n/a"
			}
		}
		if ok {
			return "**yes**"
		}
		return "no"
	}
	// An overhead ratio means something only when the best of the others
	// measured above direct; at or below it, the run's noise is larger
	// than the overheads.
	ovhRatio := func(v, best float64) (string, string) {
		switch {
		case math.IsNaN(v) || math.IsNaN(best):
			return "n/a", "n/a"
		case best <= 0 && v <= 0:
			return "–", "n/a (both at or below direct: noise)"
		case best <= 0:
			return "–", "no"
		}
		return ratio(v, best), yes(v <= 0.5*best)
	}
	_, floor := m["smfloor"]
	// row writes one target: what(t) gives the measured text and whether
	// it is met, for the kernel path and for the floor.
	row := func(label, needed string, what func(t string) (string, string)) {
		v, ok := what("sockmap")
		if !floor {
			p("| %s | %s | %s | %s |\n", label, v, needed, ok)
			return
		}
		fv, fok := what("smfloor")
		if fok == "n/a" { // no value: the floor did not run this scenario
			fv = "–"
		} else {
			fv += " (" + strings.Trim(fok, "*") + ")"
		}
		p("| %s | %s | %s | %s | %s |\n", label, v, needed, ok, fv)
	}
	best, who := bestOf(m, "cl_msgs", true)
	row("closed-loop msgs/s ≥ 1.3× best of HAProxy/nginx", "1.30×", func(t string) (string, string) {
		v := m.med(t, "cl_msgs")
		return fmt.Sprintf("%s = %s %s (%s)", num(v, 0), ratio(v, best), name(who), num(best, 0)), yes(v >= 1.3*best, v, best)
	})
	d := m.med("direct", "cl_msgs")
	row("closed-loop msgs/s ≥ 0.8× direct", "0.80×", func(t string) (string, string) {
		v := m.med(t, "cl_msgs")
		return fmt.Sprintf("%s direct (%s)", ratio(v, d), num(d, 0)), yes(v >= 0.8*d, v, d)
	})
	ovhRow := func(label, k string, prec int) {
		bo, bw := bestOvh(m, k)
		row(label, "0.50×", func(t string) (string, string) {
			v := m.ovh(t, k)
			r, ok := ovhRatio(v, bo)
			return fmt.Sprintf("%s vs %s %s (%s)", num(v, prec), name(bw), num(bo, prec), r), ok
		})
	}
	ovhRow("CPU overhead per message over direct ≤ 0.5× best (open-loop, attributed, µs/msg)", "ol_cpu_us", 1)
	ovhRow("the same, system-wide (/proc/stat, less background)", "ol_cpu_net_us", 1)
	ovhRow("p50 latency overhead over direct ≤ 0.5× best (open-loop, µs)", "ol_p50", 0)
	row("balancer RSS per idle WebSocket ≤ 1 KiB", "1024 B", func(t string) (string, string) {
		v := m.med(t, "idle_rss")
		return fmt.Sprintf("%s B (HAProxy %s B, nginx %s B)", num(v, 0), num(m.med("haproxy", "idle_rss"), 0), num(m.med("nginx", "idle_rss"), 0)), yes(v <= 1024, v)
	})
	bh, bhw := bestOf(m, "hs_rate", true)
	row("handshakes/s ≥ best of HAProxy/nginx", "1.00×", func(t string) (string, string) {
		v := m.med(t, "hs_rate")
		return fmt.Sprintf("%s vs %s %s (%s)", num(v, 0), name(bhw), num(bh, 0), ratio(v, bh)), yes(v >= bh, v, bh)
	})
}
