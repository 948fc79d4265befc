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
	sent := make([]uint64, len(conns))
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
	wg.Add(1)
	go func() {
		defer wg.Done()
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
			if phase.Load() == phaseStop || fe.get() != nil {
				return
			}
			fillPayload(msg, uint32(i), seq)
			scheds[i] <- at
			if err := conns[i].writeBinary(msg); err != nil {
				fe.set(fmt.Errorf("conn %d write: %w", i, err))
				return // the run has failed: nothing more is sent
			}
			if !at.Before(mStart) && at.Before(mEnd) {
				sent[i]++
			}
		}
	}()
	time.Sleep(time.Until(start))
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return fe.get() != nil })
	if err != nil {
		return nil, err
	}
	// Let the senders finish their schedule's tail, then give the last
	// echoes a few seconds: a missing echo is an error, not a dropped sample.
	time.Sleep(time.Until(mEnd))
	phase.Store(phaseStop)
	for _, c := range conns {
		c.c.SetReadDeadline(drainDeadline(&fe, 5*time.Second))
	}
	wg.Wait()
	var h histogram
	var n uint64
	for i := range hists {
		h.merge(&hists[i])
		n += sent[i]
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
func runHandshake(ctx context.Context, cfg config) (*result, error) {
	var phase atomic.Int32
	var fe firstErr
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
				if p == phaseStop {
					return
				}
				attempts.Add(1)
				t := time.Now()
				c, err := dialWS(cfg.Addr, cfg.Path, cfg.DialTimeout, cfg.tlsConfig())
				if err != nil {
					fe.set(fmt.Errorf("worker %d: %w", w, err))
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
					continue
				}
				if p == phaseMeasure {
					hists[w].record(lat)
					counts[w]++
				}
			}
		}()
	}
	// Connection errors are counted, not fatal, unless they exceed 1%;
	// integrity errors stop the run.
	el, cpu, err := timeline(ctx, cfg, &phase, func() bool { return errors.Is(fe.get(), errIntegrity) })
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
	err = finish(res, &fe)
	if err != nil && !errors.Is(err, errIntegrity) && float64(res.Errors) <= 0.01*float64(attempts.Load()) {
		err = nil // a few refused or reset connections under load: reported, not fatal
	}
	return res, err
}

type idleResult struct {
	Conns int `json:"conns"`
	// Balancer: summed VmRSS of --pids.
	RSSBefore    int64     `json:"rss_before_bytes"`
	RSSAfter     int64     `json:"rss_after_bytes"`
	RSSPerConn   float64   `json:"rss_per_conn_bytes"`
	KernelBefore kernelMem `json:"kernel_before"`
	KernelAfter  kernelMem `json:"kernel_after"`
	// Whole-system kernel memory per client connection: every socket of
	// the path (client, proxy both sides, backend).
	SlabPerConn   float64 `json:"slab_per_conn_bytes"`
	TCPMemPerConn float64 `json:"tcp_mem_per_conn_bytes"`
	OpenS         float64 `json:"open_s"`
	FDLimit       uint64  `json:"client_fd_limit"`
}

// runIdle opens Conns connections, does one verified echo on each (so a
// spliced pair is fully set up), waits, samples memory, checks every
// connection again and closes them.
func runIdle(ctx context.Context, cfg config) (*result, error) {
	settle := func() { time.Sleep(2 * time.Second) }
	settle()
	rss0, err := rssBytes(cfg.Pids)
	if err != nil {
		return nil, err
	}
	k0, err := readKernelMem()
	if err != nil {
		return nil, err
	}
	c0, err := readCPU()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	conns, err := dialAll(ctx, cfg, cfg.Conns)
	if err != nil {
		return nil, fmt.Errorf("open %d idle connections: %w", cfg.Conns, err)
	}
	defer closeAll(conns)
	open := time.Since(t0)
	echoAll := func(round uint64) error {
		var fe firstErr
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		for i, c := range conns {
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
	if err := echoAll(0); err != nil {
		return nil, err
	}
	settle()
	rss1, err := rssBytes(cfg.Pids)
	if err != nil {
		return nil, err
	}
	k1, err := readKernelMem()
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
	n := float64(len(conns))
	res.Idle = &idleResult{
		Conns: len(conns), RSSBefore: rss0, RSSAfter: rss1,
		RSSPerConn:   float64(rss1-rss0) / n,
		KernelBefore: k0, KernelAfter: k1,
		SlabPerConn:   float64(k1.SlabBytes-k0.SlabBytes) / n,
		TCPMemPerConn: float64(k1.TCPMemBytes-k0.TCPMemBytes) / n,
		OpenS:         open.Seconds(),
		FDLimit:       lim.Cur,
	}
	// Still alive and intact after the wait.
	return res, echoAll(1)
}
