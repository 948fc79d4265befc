package proxy

import (
	"context"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// Memory after a burst of connections.
//
// Once spliced, a connection costs the daemon a few hundred bytes of live
// heap (the data plane's pair and the proxy's tracked), but opening it
// cost ~10 kB of short-lived garbage (request parsing, buffers, dialing).
// During a burst the heap grows to twice what is live plus that garbage;
// when the burst ends nothing allocates any more, so no GC runs and Go
// keeps those pages (its periodic GC and scavenger return them minutes
// later). A daemon holding thousands of idle WebSockets would then sit on
// the burst's peak. trimAfterBursts returns it as soon as the burst is
// over: two GCs of a small heap and an madvise, at most once per quiet
// period after real allocation.
const (
	// trimTick: how often allocation is sampled; a burst's heap goes
	// back within about two ticks of its end, for a runtime/metrics read
	// per tick. (Against a one-second tick, the benchmark's idle
	// scenario measured no RSS difference within this VM's spread.)
	trimTick = 250 * time.Millisecond
	// trimBurst: allocation since the last trim that makes a trim
	// worthwhile once quiet.
	trimBurst = 8 << 20
	// trimQuiet: allocation within one tick that still counts as quiet
	// (512 KiB a second).
	trimQuiet = 128 << 10
)

// trimAfterBursts runs until ctx ends.
func (p *Proxy) trimAfterBursts(ctx context.Context) {
	sample := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	read := func() uint64 {
		rtmetrics.Read(sample)
		if sample[0].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	t := time.NewTicker(trimTick)
	defer t.Stop()
	lastTrim := read()
	prev := lastTrim
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := read()
		quiet := now-prev < trimQuiet
		prev = now
		if quiet && now-lastTrim >= trimBurst {
			start := time.Now()
			// Two collections: the first moves what sync.Pools hold
			// (the handshake's bufio readers and writers, up to
			// MaxHeaderBytes each, as many as handshakes ran at once)
			// to their victim caches, the second frees it; measured,
			// about 2 MB after a burst of 9,900 handshakes, 64 at a
			// time. FreeOSMemory's own collection is the second.
			runtime.GC()
			debug.FreeOSMemory()
			lastTrim = read()
			prev = lastTrim
			if p.log.Debug().Enabled() {
				p.log.Debug().Dur("took", time.Since(start)).Msg("burst over: heap returned to the OS")
			}
		}
	}
}
