package limit

import (
	"net/netip"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTest(cfg Config) (*Limiter, *clock) {
	c := &clock{t: time.Unix(1000, 0)}
	l := New(cfg)
	l.now = c.now
	return l, c
}

var ip1, ip2 = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")

func TestMaxConns(t *testing.T) {
	l, _ := newTest(Config{MaxConns: 2})
	a, r := l.Admit(ip1)
	b, r2 := l.Admit(ip2)
	if r != OK || r2 != OK {
		t.Fatalf("first two refused: %q %q", r, r2)
	}
	if _, r := l.Admit(ip1); r != MaxConns {
		t.Fatalf("third: %q, want %q", r, MaxConns)
	}
	a.Release()
	a.Release() // twice is harmless
	if c, r := l.Admit(ip1); r != OK {
		t.Fatalf("after a release: %q", r)
	} else {
		c.Release()
	}
	b.Release()
	if s := l.Stats(); s.Conns != 0 || s.IPs != 0 {
		t.Fatalf("stats after all released: %+v", s)
	}
}

func TestConnRate(t *testing.T) {
	l, c := newTest(Config{ConnRate: 10})
	for i := range 10 {
		tk, r := l.Admit(ip1)
		if r != OK {
			t.Fatalf("connection %d of the burst refused: %q", i, r)
		}
		tk.Release()
	}
	if _, r := l.Admit(ip2); r != ConnRate {
		t.Fatalf("11th in the same instant: %q, want %q", r, ConnRate)
	}
	c.advance(100 * time.Millisecond) // one token
	if tk, r := l.Admit(ip2); r != OK {
		t.Fatalf("after 100ms: %q", r)
	} else {
		tk.Release()
	}
	if _, r := l.Admit(ip2); r != ConnRate {
		t.Fatalf("second after 100ms: %q", r)
	}
	c.advance(time.Hour) // refills to the burst, not beyond
	n := 0
	for {
		tk, r := l.Admit(ip1)
		if r != OK {
			break
		}
		tk.Release()
		n++
	}
	if n != 10 {
		t.Fatalf("after an hour %d admitted at once, want the burst of 10", n)
	}
}

func TestRefusedTakesNoToken(t *testing.T) {
	l, _ := newTest(Config{ConnRate: 2, MaxConns: 1})
	tk, _ := l.Admit(ip1)
	if _, r := l.Admit(ip1); r != MaxConns {
		t.Fatalf("got %q", r)
	}
	tk.Release()
	if _, r := l.Admit(ip1); r != OK {
		t.Fatalf("the refused connection took a token: %q", r)
	}
}

func TestPerIP(t *testing.T) {
	l, c := newTest(Config{MaxConnsPerIP: 2, ConnRatePerIP: 3})
	a, _ := l.Admit(ip1)
	b, _ := l.Admit(ip1)
	if _, r := l.Admit(ip1); r != MaxConnsPerIP {
		t.Fatalf("third from ip1: %q, want %q", r, MaxConnsPerIP)
	}
	if x, r := l.Admit(ip2); r != OK {
		t.Fatalf("ip2 refused: %q", r)
	} else {
		x.Release()
	}
	a.Release()
	if x, r := l.Admit(ip1); r != OK {
		t.Fatalf("ip1 after a release: %q", r)
	} else {
		x.Release()
	}
	// ip1 took 3 tokens: a fourth within the same second is over the rate.
	if _, r := l.Admit(ip1); r != ConnRatePerIP {
		t.Fatalf("fourth from ip1: %q, want %q", r, ConnRatePerIP)
	}
	b.Release()
	// Mapped IPv4 is the same source.
	if _, r := l.Admit(netip.MustParseAddr("::ffff:198.18.0.1")); r != ConnRatePerIP {
		t.Fatalf("4-in-6 form of ip1: %q, want %q", r, ConnRatePerIP)
	}
	c.advance(time.Second)
	if x, r := l.Admit(ip1); r != OK {
		t.Fatalf("ip1 a second later: %q", r)
	} else {
		x.Release()
	}
}

// TestPerIPMemoryBounded: a source with no connection and a full bucket
// is forgotten at once; sources kept only for their bucket are bounded.
func TestPerIPMemoryBounded(t *testing.T) {
	l, c := newTest(Config{MaxConnsPerIP: 5})
	for i := range 10000 {
		tk, r := l.Admit(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		if r != OK {
			t.Fatal(r)
		}
		tk.Release()
	}
	if s := l.Stats(); s.IPs != 0 {
		t.Fatalf("per-connection limit only: %d sources remembered after every connection ended, want 0", s.IPs)
	}

	l, c = newTest(Config{ConnRatePerIP: 1})
	l.maxIdle = 100
	var live []*Ticket
	for i := range 5000 {
		tk, r := l.Admit(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
		if r != OK {
			t.Fatal(r)
		}
		if i < 50 {
			live = append(live, tk) // these stay whatever the LRU does
		} else {
			tk.Release()
		}
	}
	if s := l.Stats(); s.Idle != 100 || s.IPs != 150 || s.Conns != 50 {
		t.Fatalf("stats %+v: want 100 idle + 50 live sources", s)
	}
	// A source still in the LRU is still limited.
	if _, r := l.Admit(netip.AddrFrom4([4]byte{10, 1, 19, 135})); r != ConnRatePerIP { // i = 4999
		t.Fatalf("recent source: %q, want %q", r, ConnRatePerIP)
	}
	for _, tk := range live {
		tk.Release()
	}
	c.advance(2 * time.Second)
	if s := l.Stats(); s.IPs > 100 {
		t.Fatalf("after releasing: %d sources remembered, bound is 100", s.IPs)
	}
	// Switching the per-IP rate off forgets every idle bucket.
	l.SetConfig(Config{})
	if s := l.Stats(); s.IPs != 0 {
		t.Fatalf("after SetConfig without per-IP limits: %+v", s)
	}
}

func BenchmarkAdmit(b *testing.B) {
	l := New(Config{MaxConns: 1 << 30, ConnRate: 1e12, MaxConnsPerIP: 1 << 30, ConnRatePerIP: 1e12})
	for i := 0; b.Loop(); i++ {
		tk, _ := l.Admit(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		tk.Release()
	}
}
