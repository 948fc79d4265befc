package loader

import (
	"time"

	"github.com/wsplice/wsplice/userspace/dataplane"

	"golang.org/x/sys/unix"
)

// SetIdleTimeout implements dataplane.Dataplane.
// Pairs the fallback serves get the same timeout.
func (s *Splicer) SetIdleTimeout(d time.Duration) {
	s.idleTimeout.Store(int64(d))
	if s.fallback != nil {
		s.fallback.SetIdleTimeout(d)
	}
}

// watchIdle closes p once neither socket has received a byte for the
// pair's idle timeout. The bytes never reach userspace, so activity comes
// from the verdict: conn_stats.last_ns, stamped with bpf_ktime_get_ns on
// every segment (the slow path's too, which the verdict passes); a check
// reads the two map entries.
func (s *Splicer) watchIdle(p *pair) {
	start := monoNow()
	w := dataplane.WatchIdle(time.Duration(s.idleTimeout.Load()), func() (time.Duration, bool) {
		if p.isClosed() {
			return 0, false
		}
		return s.idleFor(p, start), true
	}, func(idle time.Duration) {
		if s.log.Debug().Enabled() {
			s.log.Debug().Dur("idle", idle).Msg("idle timeout: closing spliced pair")
		}
		s.idleClosed.Add(1)
		s.closePair(p, false)
	})
	p.mu.Lock()
	p.idle = w
	closed := p.closed
	p.mu.Unlock()
	if closed {
		w.Stop()
	}
}

// idleFor is how long neither socket of p has received a byte (or, if
// none has since, how long ago start was): two map lookups.
func (s *Splicer) idleFor(p *pair, start int64) time.Duration {
	last := start
	for _, sk := range p.socks {
		if st, err := s.stats(sk.cookie); err == nil && int64(st.LastNs) > last {
			last = int64(st.LastNs)
		}
	}
	return time.Duration(monoNow() - last)
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
