package loader

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// SetIdleTimeout implements dataplane.Dataplane.
// Pairs the fallback serves get the same timeout.
func (s *Splicer) SetIdleTimeout(d time.Duration) {
	s.idleTimeout.Store(int64(d))
	if s.fallback != nil {
		s.fallback.SetIdleTimeout(d)
	}
}

// IdleEntry implements dataplane.Idler: p is in the Splicer's idle queue,
// which closes it once neither socket has received a byte for the idle
// timeout it was spliced with.
func (p *pair) IdleEntry() *dataplane.IdleEntry { return &p.idle }

// IdleFor implements dataplane.Idler. The bytes never reach userspace, so
// activity comes from the verdict: conn_stats.last_ns, stamped with
// bpf_ktime_get_ns on every segment (the slow path's too, which the
// verdict passes); a check reads the two map entries.
func (p *pair) IdleFor() (time.Duration, bool) {
	if p.isClosed() {
		return 0, false
	}
	last := p.start
	for _, sk := range p.socks {
		if st, err := p.s.stats(sk.cookie); err == nil && int64(st.LastNs) > last {
			last = int64(st.LastNs)
		}
	}
	return time.Duration(monoNow() - last), true
}

// IdleExpire implements dataplane.Idler. A pair with bytes still on their
// way (the slow path holding or waiting on some, or redirected bytes the
// peer has not taken: the psock queue, which closing drops) is reset: a
// FIN after a cut stream would pass for a clean end.
func (p *pair) IdleExpire(idle time.Duration) {
	s := p.s
	s.idleClosed.Add(1)
	p.mu.Lock()
	lose := !p.closed && p.inFlight()
	if lose {
		for _, sk := range p.socks {
			resetOnClose(sk.fd)
		}
	}
	p.mu.Unlock()
	if s.log.Debug().Enabled() {
		s.log.Debug().Dur("idle", idle).Bool("reset", lose).Msg("idle timeout: closing spliced pair")
	}
	s.closePair(p, lose)
}

// Delivered implements dataplane.Idler: the sockets' TCP progress (bytes
// acknowledged by and received from their peers), 0 once p is closed.
func (p *pair) Delivered() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0
	}
	var n uint64
	for _, sk := range p.socks {
		d, _ := dataplane.TCPProgress(sk.fd)
		n += d
	}
	return n
}

// inFlight reports whether bytes are still on their way through p: a
// drain holds or waits on some, a direction has passed bytes userspace has
// not forwarded, or the peer has not taken every byte redirected to it.
// Under p.mu, p open: no drain runs when it looks at their counts.
func (p *pair) inFlight() bool {
	if p.users > 0 {
		return true
	}
	for _, src := range p.socks {
		dst := src.peer
		st, err := p.s.stats(src.cookie)
		if err != nil {
			return false
		}
		given, err := bytesGiven(dst.fd) // exact: a short sum would reset a clean pair
		if err == nil && (st.Passed != src.consumed || given < dst.givenBase+dst.written+st.Redirected) {
			return true
		}
	}
	return false
}

// monoNow reads CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns, without a syscall per call (x/sys/unix's ClockGettime
// is a real syscall, not the vDSO): Go's monotonic clock is
// CLOCK_MONOTONIC too, so the offset read once at start holds.
func monoNow() int64 {
	return monoBase + int64(time.Since(monoStart))
}

var monoStart, monoBase = func() (time.Time, int64) {
	var ts unix.Timespec
	start := time.Now()
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return start, ts.Nano()
}()
