package loader

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkIdleCheck measures what idle tracking costs per pair and per
// timeout period: one timer wake-up, two stats_map lookups and a re-arm,
// with the maps holding 10,000 and 100,000 pairs (20,000 and 200,000
// sockets; more sockets than this host lets one process open, so the
// entries are synthetic). The report turns ns/op into the CPU share at
// the default 60 s timeout: pairs / 60 s × ns/op.
//
//	sudo go test -run '^$' -bench IdleCheck ./loader/
func BenchmarkIdleCheck(b *testing.B) {
	for _, pairs := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("pairs=%d", pairs), func(b *testing.B) {
			s := newSplicer(b)
			now := uint64(monoNow())
			ps := make([]*pair, pairs)
			timers := make([]*time.Timer, pairs)
			for i := range ps {
				p := &pair{}
				for j := range p.socks {
					cookie := uint64(1<<40 + 2*i + j)
					if err := s.objs.StatsMap.Put(cookie, wspliceConnStats{LastNs: now}); err != nil {
						b.Fatalf("fill stats_map: %v", err)
					}
					p.socks[j] = &sock{cookie: cookie, pair: p}
				}
				timers[i] = time.AfterFunc(time.Hour, func() {})
				ps[i] = p
			}
			b.Cleanup(func() {
				for _, t := range timers {
					t.Stop()
				}
			})
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p, t := ps[i%pairs], timers[i%pairs]
				// What a wake-up of an active pair does.
				if p.isClosed() {
					b.Fatal("closed")
				}
				idle := s.idleFor(p, 0)
				t.Reset(time.Hour - idle)
			}
			b.StopTimer()
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(float64(pairs)/60*perOp/1e9*100, "%cpu@60s")
		})
	}
}
