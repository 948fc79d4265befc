package main

import (
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var palette = []color.Color{
	color.RGBA{0x88, 0x88, 0x88, 0xff}, // direct
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, // sockmap
	color.RGBA{0x6b, 0xae, 0xd6, 0xff}, // userspace
	color.RGBA{0xbc, 0xbd, 0x22, 0xff}, // gofloor
	color.RGBA{0x8c, 0x56, 0x4b, 0xff}, // evfloor
	color.RGBA{0x94, 0x67, 0xbd, 0xff}, // smfloor
	color.RGBA{0xd6, 0x27, 0x28, 0xff}, // haproxy
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, // nginx
}

func targetColor(t string) color.Color {
	for i, x := range targets {
		if x == t {
			return palette[i]
		}
	}
	return color.Black
}

func nan0(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// grouped draws one bar per target in each group (groups: metric keys).
// It writes no file when no target ran any of them (a run limited by
// SCENARIOS or TARGETS); the report then leaves the chart out.
func grouped(m metrics, file, title, ylabel string, keys, groupNames []string, scale float64) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	var ts []string
	for _, t := range present(m) {
		if m.ran(t, keys...) {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return nil
	}
	w := vg.Points(float64(int(300 / max(1, len(ts)*len(keys)))))
	w = min(max(w, 8), 28)
	for i, t := range ts {
		vals := make(plotter.Values, len(keys))
		for j, k := range keys {
			vals[j] = nan0(m.med(t, k)) * scale
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = targetColor(t)
		bars.Offset = vg.Length(float64(i)-float64(len(ts)-1)/2) * w
		p.Add(bars)
		p.Legend.Add(targetNames[t], bars)
	}
	p.Legend.Top = true
	p.NominalX(groupNames...)
	return p.Save(7*vg.Inch, 4*vg.Inch, file)
}

// single draws one bar per target for one metric; no file when no target
// ran it.
func single(m metrics, file, title, ylabel, key string, scale float64, skipDirect bool) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	var names []string
	var i int
	for _, t := range present(m) {
		if skipDirect && t == "direct" {
			continue
		}
		if !m.ran(t, key) {
			continue
		}
		v := nan0(m.med(t, key)) * scale
		bars, err := plotter.NewBarChart(plotter.Values{v}, vg.Points(40))
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = targetColor(t)
		bars.XMin = float64(i)
		p.Add(bars)
		names = append(names, targetNames[t])
		i++
	}
	if len(names) == 0 {
		return nil
	}
	p.NominalX(names...)
	return p.Save(6*vg.Inch, 3.5*vg.Inch, file)
}

func charts(dir string, m metrics) error {
	if err := grouped(m, filepath.Join(dir, "latency.png"), "Open-loop latency (64 B, fixed rate), median of runs",
		"µs from scheduled send to echo", []string{"ol_p50", "ol_p90", "ol_p99", "ol_p999"},
		[]string{"p50", "p90", "p99", "p99.9"}, 1); err != nil {
		return err
	}
	if err := single(m, filepath.Join(dir, "throughput.png"), "Closed-loop echo throughput (64 B)", "msgs/s", "cl_msgs", 1, false); err != nil {
		return err
	}
	if err := grouped(m, filepath.Join(dir, "cpu.png"), "System-wide CPU per message (/proc/stat: CPUs x wall - idle - steal)",
		"µs CPU per echoed message", []string{"ol_cpu_sys_us", "cl_cpu_sys_us"},
		[]string{"open-loop (fixed rate)", "closed-loop (saturated)"}, 1); err != nil {
		return err
	}
	return grouped(m, filepath.Join(dir, "memory.png"), "Memory per idle WebSocket connection",
		"KiB per connection", []string{"idle_rss", "idle_slab"},
		[]string{"balancer RSS (direct: backend)", "kernel slab, system-wide"}, 1.0/1024)
}
