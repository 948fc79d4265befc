// Command wsplice-load is the load generator of wsplice's benchmarks
// (scripts/bench.sh). It drives a WebSocket echo server, directly or through
// a proxy, in one of five modes, verifies every echoed byte and prints one
// JSON object with the results on stdout.
//
//	open-loop    fixed aggregate rate of small messages over many connections;
//	             latency from each message's scheduled send time, so a stall
//	             delays every message scheduled behind it (no coordinated
//	             omission); every message scheduled in the measured window
//	             is sent and timed, past the window's end if a stall made
//	             the sender late
//	closed-loop  as many small-message echoes as N connections can do
//	bulk         large frames (1 MiB by default), MB/s
//	handshake    new connections per second: dial, handshake, one echo, close
//	idle         open --conns idle connections, report the memory per
//	             connection of the processes in --pids and of the kernel
//	             (the slope from half of them open to all)
//
// CPU is measured system-wide from /proc/stat over the measured interval.
// An integrity error (an echo that is not exactly what was sent) makes the
// exit status 1.
//
// With --tls every mode speaks wss:// (TLS 1.3 unless the server offers
// only 1.2); handshake mode's latency then includes the TLS handshake.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	// SIGINT and SIGTERM cancel the run: it stops early, still prints its
	// result (marked interrupted) and exits 1.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "wsplice-load:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

type config struct {
	Mode        string        `json:"mode"`
	Addr        string        `json:"addr"`
	Path        string        `json:"path"`
	Conns       int           `json:"conns"`
	Duration    time.Duration `json:"-"`
	Warmup      time.Duration `json:"-"`
	Rate        float64       `json:"rate,omitempty"`
	Size        int           `json:"size"`
	Window      int           `json:"window,omitempty"`
	Concurrency int           `json:"concurrency,omitempty"`
	Pids        []int         `json:"pids,omitempty"`
	Label       string        `json:"label,omitempty"`
	DialTimeout time.Duration `json:"-"`
	Baseline    time.Duration `json:"-"`
	CPUPids     []int         `json:"cpu_pids,omitempty"`
	// TLS: wss://, each connection a full TLS handshake (no session
	// resumption) that verifies nothing (InsecureSkipVerify: a benchmark
	// measures the proxy, not the client's trust store).
	TLS bool `json:"tls,omitempty"`
}

// tlsConfig is the client's TLS configuration with --tls, else nil.
func (c config) tlsConfig() *tls.Config {
	if !c.TLS {
		return nil
	}
	return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
}

// result is the JSON printed on stdout. Fields that do not apply to a mode
// are left out.
type result struct {
	config
	DurationS float64 `json:"duration_s"`
	Messages  uint64  `json:"messages,omitempty"`
	// MsgsPerS counts echoes: one message sent and its echo received.
	MsgsPerS   float64         `json:"msgs_per_s,omitempty"`
	BytesEcho  uint64          `json:"bytes_echoed,omitempty"`
	MBPerS     float64         `json:"mb_per_s,omitempty"`
	Latency    *latencySummary `json:"latency,omitempty"`
	Handshakes uint64          `json:"handshakes,omitempty"`
	HsPerS     float64         `json:"handshakes_per_s,omitempty"`
	HsLatency  *latencySummary `json:"handshake_latency,omitempty"`
	// AchievedRate is the open-loop rate actually sent: the messages of
	// the measured window sent before its end, per second. Below Rate the
	// system (or the generator) could not keep up; the late messages are
	// still sent and timed after the window.
	AchievedRate float64  `json:"achieved_rate,omitempty"`
	CPU          cpuUsage `json:"cpu"`
	// CPUPerMillion is CPU seconds system-wide (cpu.nonidle_s) per million echoes (or
	// per million handshakes in handshake mode, per GB echoed in bulk).
	CPUPerMillion float64 `json:"cpu_s_per_million,omitempty"`
	CPUPerGB      float64 `json:"cpu_s_per_gb,omitempty"`
	StealFraction float64 `json:"steal_fraction"`
	// BackgroundCPUs is the busy CPUs measured system-wide for --baseline
	// before the run, with no load: other tenants of a shared machine.
	BackgroundCPUs float64 `json:"background_cpus"`
	// CPUPerMillionNet is CPUPerMillion less the background's share of the
	// measured interval: an estimate, since the background is squeezed
	// when the run saturates the machine.
	CPUPerMillionNet float64 `json:"cpu_s_per_million_net,omitempty"`
	// CPUPerMillionAttr counts only the processes under test and kernel
	// threads (cpu.attributed_s): robust to other tenants' load.
	CPUPerMillionAttr float64     `json:"cpu_s_per_million_attributed,omitempty"`
	Idle              *idleResult `json:"idle,omitempty"`
	Errors            uint64      `json:"errors"`
	FirstError        string      `json:"first_error,omitempty"`
	Integrity         bool        `json:"integrity_ok"`
	// Interrupted: a signal cut the run short, the figures cover only
	// part of it (the exit status is 1).
	Interrupted bool `json:"interrupted,omitempty"`
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("wsplice-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var pids, cpuPids string
	fs.StringVar(&c.Mode, "mode", "closed-loop", "open-loop, closed-loop, bulk, handshake or idle")
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:9000", "host:port of the WebSocket server or proxy")
	fs.StringVar(&c.Path, "path", "/", "request path of the WebSocket URL")
	fs.IntVar(&c.Conns, "conns", 0, "connections (default: open-loop 100, closed-loop 64, bulk 2, handshake 16 workers, idle 9800)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured time")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured time before it")
	fs.Float64Var(&c.Rate, "rate", 10000, "open-loop: aggregate messages per second; all those scheduled in --duration are sent and timed, past its end if the sender fell behind")
	fs.IntVar(&c.Size, "size", 0, "message size in bytes (default 64; bulk 1 MiB)")
	fs.IntVar(&c.Window, "window", 2, "bulk: messages in flight per connection")
	fs.StringVar(&pids, "pids", "", "idle: comma-separated PIDs whose summed RSS is the balancer's memory")
	fs.StringVar(&cpuPids, "cpu-pids", "", "comma-separated PIDs of the processes under test (proxy, backend) for attributed CPU")
	fs.StringVar(&c.Label, "label", "", "free text copied into the output")
	fs.DurationVar(&c.Baseline, "baseline", time.Second, "idle time sampled before the run to measure background CPU (0: none)")
	fs.BoolVar(&c.TLS, "tls", false, "connect with TLS (wss://): a full handshake per connection, certificate not verified")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", 10*time.Second, "timeout of connect + handshake")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	defConns := map[string]int{"open-loop": 100, "closed-loop": 64, "bulk": 2, "handshake": 16, "idle": 9800}
	d, ok := defConns[c.Mode]
	if !ok {
		return c, fmt.Errorf("%w: unknown --mode %q", errUsage, c.Mode)
	}
	if c.Conns == 0 {
		c.Conns = d
	}
	if c.Size == 0 {
		c.Size = 64
		if c.Mode == "bulk" {
			c.Size = 1 << 20
		}
	}
	switch {
	case c.Conns < 1:
		return c, fmt.Errorf("%w: --conns must be positive", errUsage)
	case c.Size < payloadHeader:
		return c, fmt.Errorf("%w: --size must be at least %d", errUsage, payloadHeader)
	case c.Rate <= 0:
		return c, fmt.Errorf("%w: --rate must be positive", errUsage)
	case c.Window < 1:
		return c, fmt.Errorf("%w: --window must be positive", errUsage)
	case c.Duration <= 0:
		return c, fmt.Errorf("%w: --duration must be positive", errUsage)
	case c.Mode == "idle" && c.Conns < 2:
		return c, fmt.Errorf("%w: idle --conns must be at least 2 (the memory per connection is a slope between two halves)", errUsage)
	}
	if c.Mode == "handshake" {
		c.Concurrency, c.Conns = c.Conns, 0
	}
	for _, p := range strings.FieldsFunc(cpuPids, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return c, fmt.Errorf("%w: --cpu-pids: %q is not a PID", errUsage, p)
		}
		c.CPUPids = append(c.CPUPids, n)
	}
	for _, p := range strings.FieldsFunc(pids, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return c, fmt.Errorf("%w: --pids: %q is not a PID", errUsage, p)
		}
		c.Pids = append(c.Pids, n)
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	t0 := time.Now()
	var bg float64
	if cfg.Baseline > 0 && cfg.Mode != "idle" {
		a, err := readCPU()
		if err != nil {
			return err
		}
		time.Sleep(cfg.Baseline)
		b, err := readCPU()
		if err != nil {
			return err
		}
		bg = cpuDelta(a, b).NonIdle / b.at.Sub(a.at).Seconds()
	}
	var res *result
	switch cfg.Mode {
	case "closed-loop":
		res, err = runClosedLoop(ctx, cfg)
	case "open-loop":
		res, err = runOpenLoop(ctx, cfg)
	case "bulk":
		res, err = runBulk(ctx, cfg)
	case "handshake":
		res, err = runHandshake(ctx, cfg)
	case "idle":
		res, err = runIdle(ctx, cfg)
	}
	integrity := !errors.Is(err, errIntegrity)
	interrupted := ctx.Err() != nil
	if interrupted {
		// The figures cover part of the run only: they must not pass for
		// a complete one, whatever else went wrong.
		msg := fmt.Sprintf("interrupted after %v", time.Since(t0).Round(time.Millisecond))
		if cfg.Mode != "idle" { // idle has no planned length
			msg += fmt.Sprintf(" of %v (baseline + warmup + duration)", cfg.Baseline+cfg.Warmup+cfg.Duration)
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", msg, err)
		} else {
			err = errors.New(msg)
		}
	}
	if res != nil {
		res.config = cfg
		res.Interrupted = interrupted
		if res.CPU.Capacity > 0 {
			res.StealFraction = res.CPU.Steal / res.CPU.Capacity
		}
		res.Integrity = integrity
		res.BackgroundCPUs = bg
		if n := float64(res.Messages + res.Handshakes); n > 0 {
			res.CPUPerMillionAttr = res.CPU.Attributed / n * 1e6
		}
		if n := float64(res.Messages + res.Handshakes); n > 0 && res.CPUPerMillion > 0 {
			res.CPUPerMillionNet = max(0, res.CPU.NonIdle-bg*res.DurationS) / n * 1e6
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if e := enc.Encode(res); e != nil && err == nil {
			err = fmt.Errorf("write result: %w", e)
		}
	}
	return err
}
