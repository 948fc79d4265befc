package loader

import (
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// BenchmarkIdleCheck measures what idle tracking costs per pair and per
// timeout period: two stats_map lookups and a move in the idle queue's
// heap, with the maps and the queue holding 10,000 and 100,000 pairs
// (20,000 and 200,000 sockets; more sockets than this host lets one
// process open, so the entries are synthetic). The report turns ns/op
// into the CPU share at the default 60 s timeout: pairs / 60 s × ns/op.
//
//	sudo go test -run '^$' -bench IdleCheck ./loader/
func BenchmarkIdleCheck(b *testing.B) {
	for _, pairs := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("pairs=%d", pairs), func(b *testing.B) {
			s := newSplicer(b)
			now := uint64(monoNow())
			ps := make([]*pair, pairs)
			for i := range ps {
				p := &pair{s: s}
				for j := range p.socks {
					cookie := uint64(1<<40 + 2*i + j)
					if err := s.objs.StatsMap.Put(cookie, wspliceConnStats{LastNs: now}); err != nil {
						b.Fatalf("fill stats_map: %v", err)
					}
					p.socks[j] = &sock{cookie: cookie, pair: p}
				}
				s.idle.Add(p, time.Hour)
				ps[i] = p
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p := ps[i%pairs]
				// What the check of an active pair does.
				if _, alive := p.IdleFor(); !alive {
					b.Fatal("closed")
				}
				s.idle.Remove(p)
				p.idle = dataplane.IdleEntry{}
				s.idle.Add(p, time.Hour)
			}
			b.StopTimer()
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(float64(pairs)/60*perOp/1e9*100, "%cpu@60s")
		})
	}
}

// What the daemon keeps per spliced connection is its memory per idle
// WebSocket (issue 5: at most 1 KiB of RSS): the pair must stay in the
// 128-byte allocation class and each sock in the 80-byte one.
func TestPairAllocationClass(t *testing.T) {
	if n := unsafe.Sizeof(pair{}); n > 128 {
		t.Errorf("pair is %d bytes, over the 128-byte allocation class: reorder or trim its fields", n)
	}
	if n := unsafe.Sizeof(sock{}); n > 80 {
		t.Errorf("sock is %d bytes, over the 80-byte allocation class", n)
	}
}
