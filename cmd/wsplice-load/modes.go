package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Phases of a timed run: workers count only while measuring.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// firstErr keeps the first error reported by any goroutine.
type firstErr struct {
	mu  sync.Mutex
	err error
	n   atomic.Uint64
}

func (f *firstErr) set(err error) {
	f.n.Add(1)
	f.mu.Lock()
	if f.err == nil || (errors.Is(err, errIntegrity) && !errors.Is(f.err, errIntegrity)) {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstErr) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// dialAll opens n connections, 64 at a time.
func dialAll(ctx context.Context, cfg config, n int) ([]*wsConn, error) {
	conns := make([]*wsConn, n)
	sem := make(chan struct{}, 64)
	var fe firstErr
	var wg sync.WaitGroup
	for i := range conns {
		if ctx.Err() != nil || fe.get() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dialWS(cfg.Addr, cfg.Path, cfg.DialTimeout, cfg.tlsConfig())
			if err != nil {
				fe.set(fmt.Errorf("connection %d: %w", i, err))
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	err := fe.get()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []*wsConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// timeline runs warmup then the measured interval, switching phase and
// sampling /proc/stat at the boundaries. It returns the measured duration
// and the CPU used in it.
func timeline(ctx context.Context, cfg config, phase *atomic.Int32, failed func() bool) (time.Duration, cpuUsage, error) {
	wait := func(d time.Duration) {
		t := time.NewTimer(d)
		defer t.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-t.C:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				if failed() {
					return
				}
			}
		}
	}
	wait(cfg.Warmup)
	c0, err := readCPU()
	if err != nil {
		return 0, cpuUsage{}, err
	}
	a0 := attributedTicks(cfg.CPUPids)
	t0 := time.Now()
	phase.Store(phaseMeasure)
	wait(cfg.Duration)
	phase.Store(phaseStop)
	el := time.Since(t0)
	c1, err := readCPU()
	if err != nil {
		return 0, cpuUsage{}, err
	}
	u := cpuDelta(c0, c1)
	u.Attributed = float64(ticksSince(a0, attributedTicks(cfg.CPUPids))) / userHZ
	return el, u, nil
}

func runClosedLoop(ctx context.Context, cfg config) (*result, error) {
	conns, err := dialAll(ctx, cfg, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	var phase atomic.Int32
	var fe firstErr
	hists := make([]histogram, len(conns))
	counts := make([]uint64, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := verifier{conn: uint32(i)}
			msg := make([]byte, cfg.Size)
			buf := make([]byte, cfg.Size)
			h := &hists[i]
			for seq := uint64(0); ; seq++ {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				fillPayload(msg, uint32(i), seq)
				t := time.Now()
				if err := c.writeBinary(msg); err != nil {
					fe.set(fmt.Errorf("conn %d write: %w", i, err))
					return
				}
				got, err := c.readMessage(buf)
				if err != nil {
					fe.set(fmt.Errorf("conn %d read: %w", i, err))
					return
				}
				if err := v.check(got, cfg.Size, seq); err != nil {
					fe.set(err)
					return
				}
				if p == phaseMeasure {
					h.record(time.Since(t))
					counts[i]++
				}
			}
		}()
	}
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return fe.get() != nil })
	phase.Store(phaseStop)
	if err != nil {
		return nil, err
	}
	for _, c := range conns { // unblock readers stuck on a dead proxy
		c.c.SetDeadline(drainDeadline(&fe, 5*time.Second))
	}
	wg.Wait()
	var h histogram
	var n uint64
	for i := range hists {
		h.merge(&hists[i])
		n += counts[i]
	}
	res := &result{DurationS: el.Seconds(), Messages: n, CPU: cpu}
	res.MsgsPerS = float64(n) / el.Seconds()
	s := h.summary()
	res.Latency = &s
	if n > 0 {
		res.CPUPerMillion = cpu.NonIdle / float64(n) * 1e6
	}
	return res, finish(res, &fe)
}

// drainDeadline is how long readers may still wait for the echoes of
// what was sent, once a run stops: grace, or nothing once the run has
// failed (the other connections' senders stopped at the failure, so
// their readers would wait for echoes that never come).
func drainDeadline(fe *firstErr, grace time.Duration) time.Time {
	if fe.get() != nil {
		return time.Now()
	}
	return time.Now().Add(grace)
}

func finish(res *result, fe *firstErr) error {
	err := fe.get()
	res.Errors = fe.n.Load()
	if err != nil {
		res.FirstError = err.Error()
	}
	return err
}

// runOpenLoop sends at a fixed aggregate rate, each connection on its own
// fixed schedule, whatever the echoes do. A message's latency runs from its
// scheduled send time to its echo: if a send is late because the socket or
// the proxy stalled, that lateness is part of the latency.
//
// Every message scheduled in the measured window is sent and timed, however
// late: when a stall outlasts the window, the sender goes on past its end
// until it has sent the last of them (a write blocked 10 s past the end
// fails the run), then the receivers wait up to 5 s for the last echoes. A
// message dropped instead would take its long latency out of the
// histogram, the coordinated omission the schedule is there to avoid; so
// without an error the histogram counts every message of the window.
func runOpenLoop(ctx context.Context, cfg config) (*result, error) {
	conns, err := dialAll(ctx, cfg, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	var phase atomic.Int32
	var fe firstErr
	interval := time.Duration(float64(cfg.Conns) / cfg.Rate * float64(time.Second))
	total := cfg.Warmup + cfg.Duration
	start := time.Now().Add(20 * time.Millisecond)
	mStart, mEnd := start.Add(cfg.Warmup), start.Add(total)
	hists := make([]histogram, len(conns))
	inTime := make([]uint64, len(conns))
	nMsgs := uint64(total / interval) // per connection
	scheds := make([]chan time.Time, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		// A write blocked for good would stop the pacer: bound it.
		_ = c.c.SetWriteDeadline(mEnd.Add(10 * time.Second))
		// Echoes come back in order: the receiver pops scheduled times.
		sched := make(chan time.Time, 1<<14)
		scheds[i] = sched
		wg.Add(1)
		go func() { // receiver
			defer wg.Done()
			v := verifier{conn: uint32(i)}
			buf := make([]byte, cfg.Size)
			h := &hists[i]
			for seq := uint64(0); ; seq++ {
				at, ok := <-sched
				if !ok {
					return
				}
				got, err := c.readMessage(buf)
				now := time.Now()
				if err != nil {
					fe.set(fmt.Errorf("conn %d read: %w", i, err))
					return
				}
				if err := v.check(got, cfg.Size, seq); err != nil {
					fe.set(err)
					return
				}
				if !at.Before(mStart) && at.Before(mEnd) {
					h.record(now.Sub(at))
				}
			}
		}()
	}
	// The sender's thread sleeps in a system call, where it keeps its P
	// (scheduler slot) until sysmon takes it back: one more P than CPUs
	// leaves the receivers as many as without the pacing thread. (At
	// 5,000 msgs/s over 100 connections, three runs each way, p50 was
	// 82–95 µs with it and 92–96 µs without: within noise; the published
	// runs used it.)
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(procs + 1)
	defer runtime.GOMAXPROCS(procs)
	// One sender for every connection, on its own thread (pacer.go):
	// connection i sends its seq-th message at start + offset(i) +
	// seq*interval, offsets spread evenly over an interval, so the
	// aggregate schedule is one message every interval/len(conns). A
	// late wake-up or a slow write delays the messages behind it, and
	// their latency counts from their scheduled time all the same.
	//
	// The schedule ends with the measured window, and the sender runs
	// through all of it even if the window has ended (see above); only a
	// failure or an interruption stops it early.
	sent := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(sent)
		defer func() {
			for _, s := range scheds {
				close(s)
			}
		}()
		lockForPacing()
		msg := make([]byte, cfg.Size)
		n := uint64(len(conns))
		for k := uint64(0); k < nMsgs*n; k++ {
			i, seq := k%n, k/n
			at := start.Add(time.Duration(int64(interval)*int64(i)/int64(n)) + time.Duration(seq)*interval)
			sleepUntil(at)
			if fe.get() != nil || ctx.Err() != nil {
				return
			}
			fillPayload(msg, uint32(i), seq)
			scheds[i] <- at
			if err := conns[i].writeBinary(msg); err != nil {
				fe.set(fmt.Errorf("conn %d write: %w", i, err))
				return // the run has failed: nothing more is sent
			}
			// The achieved rate counts what went out in time: a message
			// of the window sent after its end is timed, not counted.
			if !at.Before(mStart) && at.Before(mEnd) && time.Now().Before(mEnd) {
				inTime[i]++
			}
		}
	}()
	time.Sleep(time.Until(start))
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return fe.get() != nil })
	if err != nil {
		return nil, err
	}
	// Let the sender finish the schedule, however late, then give the
	// last echoes a few seconds: a missing echo is an error, not a
	// dropped sample.
	<-sent
	for _, c := range conns {
		c.c.SetReadDeadline(drainDeadline(&fe, 5*time.Second))
	}
	wg.Wait()
	var h histogram
	var n uint64
	for i := range hists {
		h.merge(&hists[i])
		n += inTime[i]
	}
	res := &result{DurationS: el.Seconds(), Messages: h.n, CPU: cpu}
	res.MsgsPerS = float64(h.n) / el.Seconds()
	res.AchievedRate = float64(n) / cfg.Duration.Seconds()
	s := h.summary()
	res.Latency = &s
	if h.n > 0 {
		res.CPUPerMillion = cpu.NonIdle / float64(h.n) * 1e6
	}
	return res, finish(res, &fe)
}

// runBulk echoes large frames, Window in flight per connection.
func runBulk(ctx context.Context, cfg config) (*result, error) {
	conns, err := dialAll(ctx, cfg, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	var phase atomic.Int32
	var fe firstErr
	counts := make([]uint64, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		credits := make(chan struct{}, cfg.Window)
		for range cfg.Window {
			credits <- struct{}{}
		}
		wg.Add(2)
		var wrote atomic.Uint64
		go func() {
			defer wg.Done()
			msg := make([]byte, cfg.Size)
			for seq := uint64(0); ; seq++ {
				<-credits
				if phase.Load() == phaseStop || fe.get() != nil {
					return
				}
				fillPayload(msg, uint32(i), seq)
				wrote.Store(seq + 1)
				if err := c.writeBinary(msg); err != nil {
					fe.set(fmt.Errorf("conn %d write: %w", i, err))
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			v := verifier{conn: uint32(i)}
			buf := make([]byte, cfg.Size)
			for seq := uint64(0); ; seq++ {
				if phase.Load() == phaseStop && seq >= wrote.Load() {
					credits <- struct{}{} // release a sender waiting for credit
					return
				}
				got, err := c.readMessage(buf)
				if err != nil {
					// The run may have stopped while this read waited for
					// an echo of a message the writer then never sent
					// (it saw the stop first): that is the end, not an
					// error.
					if phase.Load() == phaseStop && seq >= wrote.Load() {
						credits <- struct{}{}
						return
					}
					fe.set(fmt.Errorf("conn %d read: %w", i, err))
					credits <- struct{}{}
					return
				}
				if err := v.check(got, cfg.Size, seq); err != nil {
					fe.set(err)
					credits <- struct{}{}
					return
				}
				if phase.Load() == phaseMeasure {
					counts[i]++
				}
				credits <- struct{}{}
			}
		}()
	}
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return fe.get() != nil })
	phase.Store(phaseStop)
	if err != nil {
		return nil, err
	}
	for _, c := range conns {
		c.c.SetReadDeadline(drainDeadline(&fe, 10*time.Second))
	}
	wg.Wait()
	var n uint64
	for _, x := range counts {
		n += x
	}
	res := &result{DurationS: el.Seconds(), Messages: n, CPU: cpu}
	res.BytesEcho = n * uint64(cfg.Size)
	res.MBPerS = float64(res.BytesEcho) / 1e6 / el.Seconds()
	res.MsgsPerS = float64(n) / el.Seconds()
	if res.BytesEcho > 0 {
		res.CPUPerGB = cpu.NonIdle / (float64(res.BytesEcho) / 1e9)
	}
	return res, finish(res, &fe)
}

// runHandshake opens connections as fast as Concurrency workers can: dial,
// handshake, one verified echo, close. Handshake latency runs from the
// dial to the 101.
//
// A failed dial or handshake (a connect refused under load) is counted in
// errors and fails the run only above 1% of the attempts. Anything that
// goes wrong after the 101 (write, read, verification of the echo) fails
// it outright: the connection was accepted, so its echo is data the proxy
// lost.
func runHandshake(ctx context.Context, cfg config) (*result, error) {
	var phase atomic.Int32
	var fe firstErr       // after the 101: fatal
	var dialErrs firstErr // before it: tolerated up to 1%
	var attempts atomic.Uint64
	hists := make([]histogram, cfg.Concurrency)
	counts := make([]uint64, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, cfg.Size)
			buf := make([]byte, cfg.Size)
			for seq := uint64(0); ; seq++ {
				p := phase.Load()
				if p == phaseStop || fe.get() != nil {
					return
				}
				attempts.Add(1)
				t := time.Now()
				c, err := dialWS(cfg.Addr, cfg.Path, cfg.DialTimeout, cfg.tlsConfig())
				if err != nil {
					dialErrs.set(fmt.Errorf("worker %d: %w", w, err))
					continue
				}
				lat := time.Since(t)
				id := uint32(w)<<20 | uint32(seq&0xfffff)
				fillPayload(msg, id, seq)
				c.c.SetDeadline(time.Now().Add(cfg.DialTimeout))
				err = c.writeBinary(msg)
				var got []byte
				if err == nil {
					got, err = c.readMessage(buf)
				}
				if err == nil {
					err = (&verifier{conn: id}).check(got, cfg.Size, seq)
				}
				c.Close()
				if err != nil {
					fe.set(fmt.Errorf("worker %d echo: %w", w, err))
					return
				}
				if p == phaseMeasure {
					hists[w].record(lat)
					counts[w]++
				}
			}
		}()
	}
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return fe.get() != nil })
	phase.Store(phaseStop)
	if err != nil {
		return nil, err
	}
	wg.Wait()
	var h histogram
	var n uint64
	for i := range hists {
		h.merge(&hists[i])
		n += counts[i]
	}
	res := &result{DurationS: el.Seconds(), Handshakes: n, CPU: cpu}
	res.HsPerS = float64(n) / el.Seconds()
	s := h.summary()
	res.HsLatency = &s
	if n > 0 {
		res.CPUPerMillion = cpu.NonIdle / float64(n) * 1e6
	}
	if err = finish(res, &fe); err != nil {
		res.Errors += dialErrs.n.Load()
		return res, err
	}
	// No echo failed: the failed dials, if any, are the run's errors.
	err = finish(res, &dialErrs)
	if float64(res.Errors) <= 0.01*float64(attempts.Load()) {
		err = nil // a few refused connects under load: reported, not fatal
	}
	return res, err
}

type idleResult struct {
	Conns int `json:"conns"`
	// SlopeConns is the second half of the connections, the ones the
	// per-connection figures divide.
	SlopeConns int `json:"slope_conns"`
	// Balancer: summed VmRSS of --pids, before any connection, with the
	// first half open and with all open.
	RSSBefore int64 `json:"rss_before_bytes"`
	RSSHalf   int64 `json:"rss_half_bytes"`
	RSSAfter  int64 `json:"rss_after_bytes"`
	// RSSPerConn is the slope: (after - half) / SlopeConns.
	// RSSGrowthPerConn is (after - before) / Conns, which also counts
	// any growth that does not scale with the connections (memory the
	// processes had freed, or not yet used, before the run): it depends
	// on what they did before.
	RSSPerConn       float64   `json:"rss_per_conn_bytes"`
	RSSGrowthPerConn float64   `json:"rss_growth_per_conn_bytes"`
	KernelBefore     kernelMem `json:"kernel_before"`
	KernelHalf       kernelMem `json:"kernel_half"`
	KernelAfter      kernelMem `json:"kernel_after"`
	// Whole-system kernel memory per client connection: every socket of
	// the path (client, proxy both sides, backend). Slopes as RSSPerConn,
	// and growths from before.
	SlabPerConn         float64 `json:"slab_per_conn_bytes"`
	TCPMemPerConn       float64 `json:"tcp_mem_per_conn_bytes"`
	SlabGrowthPerConn   float64 `json:"slab_growth_per_conn_bytes"`
	TCPMemGrowthPerConn float64 `json:"tcp_mem_growth_per_conn_bytes"`
	// OpenS is the time spent opening the connections, both halves.
	OpenS   float64 `json:"open_s"`
	FDLimit uint64  `json:"client_fd_limit"`
}

// Idle mode's wait before each memory sample and its memory readers:
// variables so that a test can make them short and predictable.
var (
	idleSettle    = 2 * time.Second
	idleRSS       = rssBytes
	idleKernelMem = readKernelMem
)

// runIdle measures the memory an idle connection costs as a slope: it
// opens half the connections, does one verified echo on each (so a
// spliced pair is fully set up), waits, samples memory, does the same
// with the other half, and divides the second half's growth by its
// connections. The growth from before the first half would also count
// the processes' one-time growth, which depends on what they did before
// (the same daemon measured 382 or 695 B per connection after different
// scenarios); it is reported beside. Then it checks every connection
// again and closes them.
func runIdle(ctx context.Context, cfg config) (*result, error) {
	settle := func() {
		t := time.NewTimer(idleSettle)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done(): // interrupted: the result is marked so anyway
		}
	}
	var conns []*wsConn
	defer func() { closeAll(conns) }()
	var open time.Duration
	echo := func(first int, round uint64) error {
		var fe firstErr
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		for i := first; i < len(conns); i++ {
			c := conns[i]
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				msg := make([]byte, cfg.Size)
				fillPayload(msg, uint32(i), round)
				c.c.SetDeadline(time.Now().Add(cfg.DialTimeout))
				defer c.c.SetDeadline(time.Time{})
				if err := c.writeBinary(msg); err != nil {
					fe.set(fmt.Errorf("conn %d write: %w", i, err))
					return
				}
				got, err := c.readMessage(nil)
				if err != nil {
					if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
						err = fmt.Errorf("idle connection lost its echo: %w", err)
					}
					fe.set(fmt.Errorf("conn %d read: %w", i, err))
					return
				}
				if err := (&verifier{conn: uint32(i)}).check(got, cfg.Size, round); err != nil {
					fe.set(err)
				}
			}()
		}
		wg.Wait()
		return fe.get()
	}
	type sample struct {
		rss int64
		k   kernelMem
	}
	measure := func() (sample, error) {
		settle()
		rss, err := idleRSS(cfg.Pids)
		if err != nil {
			return sample{}, err
		}
		k, err := idleKernelMem()
		return sample{rss, k}, err
	}
	// openMore opens n more connections and echoes once on each.
	openMore := func(n int) error {
		t := time.Now()
		cs, err := dialAll(ctx, cfg, n)
		if err != nil {
			return fmt.Errorf("open %d idle connections: %w", n, err)
		}
		open += time.Since(t)
		first := len(conns)
		conns = append(conns, cs...)
		return echo(first, 0)
	}
	m0, err := measure()
	if err != nil {
		return nil, err
	}
	c0, err := readCPU()
	if err != nil {
		return nil, err
	}
	half := cfg.Conns / 2
	if err := openMore(half); err != nil {
		return nil, err
	}
	m1, err := measure()
	if err != nil {
		return nil, err
	}
	if err := openMore(cfg.Conns - half); err != nil {
		return nil, err
	}
	m2, err := measure()
	if err != nil {
		return nil, err
	}
	c1, err := readCPU()
	if err != nil {
		return nil, err
	}
	res := &result{DurationS: open.Seconds(), CPU: cpuDelta(c0, c1)}
	var lim syscallRlimit
	getNofile(&lim)
	n, slope := float64(len(conns)), float64(len(conns)-half)
	res.Idle = &idleResult{
		Conns: len(conns), SlopeConns: len(conns) - half,
		RSSBefore: m0.rss, RSSHalf: m1.rss, RSSAfter: m2.rss,
		RSSPerConn:       float64(m2.rss-m1.rss) / slope,
		RSSGrowthPerConn: float64(m2.rss-m0.rss) / n,
		KernelBefore:     m0.k, KernelHalf: m1.k, KernelAfter: m2.k,
		SlabPerConn:         float64(m2.k.SlabBytes-m1.k.SlabBytes) / slope,
		TCPMemPerConn:       float64(m2.k.TCPMemBytes-m1.k.TCPMemBytes) / slope,
		SlabGrowthPerConn:   float64(m2.k.SlabBytes-m0.k.SlabBytes) / n,
		TCPMemGrowthPerConn: float64(m2.k.TCPMemBytes-m0.k.TCPMemBytes) / n,
		OpenS:               open.Seconds(),
		FDLimit:             lim.Cur,
	}
	// Still alive and intact after the waits.
	return res, echo(0, 1)
}
