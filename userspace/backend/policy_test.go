package backend

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

func TestRoundRobinEqual(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:2", "c:3"}, nil)
	var got []string
	for range 6 {
		got = append(got, pick(t, p, nil))
	}
	want := []string{"a:1", "b:2", "c:3", "a:1", "b:2", "c:3"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("picks = %v, want %v", got, want)
	}
}

func TestRoundRobinWeightedIsSmooth(t *testing.T) {
	p := mustPool(t, []string{"a:1,weight=5", "b:1,weight=1", "c:1,weight=1"}, nil)
	var got []string
	for range 7 {
		got = append(got, pick(t, p, nil)[:1])
	}
	// nginx's smooth weighted round-robin: a a b a c a a.
	if s := fmt.Sprint(got); s != "[a a b a c a a]" {
		t.Errorf("picks = %s", s)
	}
}

func TestRoundRobinDistributionByWeight(t *testing.T) {
	p := mustPool(t, []string{"a:1,weight=1", "b:1,weight=2", "c:1,weight=3", "d:1,weight=4"}, nil)
	counts := map[string]int{}
	for range 10_000 {
		counts[pick(t, p, nil)]++
	}
	for addr, w := range map[string]int{"a:1": 1, "b:1": 2, "c:1": 3, "d:1": 4} {
		if counts[addr] != 1000*w {
			t.Errorf("%s got %d, want %d (%v)", addr, counts[addr], 1000*w, counts)
		}
	}
}

func TestRoundRobinConcurrentIsFair(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:2"}, nil)
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				l, err := p.Acquire(nil, nil)
				if err != nil {
					t.Error(err)
					return
				}
				l.Release()
				mu.Lock()
				counts[l.Backend().Addr()]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if counts["a:1"] != 4000 || counts["b:2"] != 4000 {
		t.Errorf("counts = %v", counts)
	}
}

func TestWeightChangeAtRuntime(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1"}, nil)
	if err := p.SetWeight("b:1", 3); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for range 400 {
		counts[pick(t, p, nil)]++
	}
	if counts["a:1"] != 100 || counts["b:1"] != 300 {
		t.Errorf("counts = %v", counts)
	}
	if err := p.SetWeight("b:1", 0); err == nil {
		t.Error("weight 0 accepted")
	}
	if err := p.SetWeight("z:1", 2); err == nil {
		t.Error("unknown backend accepted")
	}
}

// hold acquires n leases and keeps them.
func hold(t *testing.T, p *Pool, n int, req *Request) []*Lease {
	t.Helper()
	var ls []*Lease
	for range n {
		l, err := p.Acquire(req, nil)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

func actives(p *Pool) map[string]int64 {
	m := map[string]int64{}
	for _, b := range p.Backends() {
		m[b.Addr()] = b.Active()
	}
	return m
}

func TestLeastConnEven(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1", "d:1"}, &LeastConn{})
	ls := hold(t, p, 1000, nil)
	for addr, n := range actives(p) {
		if n != 250 {
			t.Errorf("%s has %d, want 250 (%v)", addr, n, actives(p))
		}
	}
	// Connections end on one backend: new ones fill it up again first.
	for _, l := range ls {
		if l.Backend().Addr() == "b:1" {
			l.Release()
		}
	}
	more := hold(t, p, 250, nil)
	for _, l := range more {
		if l.Backend().Addr() != "b:1" {
			t.Fatalf("new connection went to %s, want b:1 (%v)", l.Backend().Addr(), actives(p))
		}
	}
}

func TestLeastConnWeighted(t *testing.T) {
	p := mustPool(t, []string{"a:1,weight=1", "b:1,weight=3"}, &LeastConn{})
	hold(t, p, 400, nil)
	if m := actives(p); m["a:1"] != 100 || m["b:1"] != 300 {
		t.Errorf("actives = %v", m)
	}
}

func TestLeastConnConcurrent(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1"}, &LeastConn{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []*Lease
	for range 6 {
		wg.Go(func() {
			for range 500 {
				l, err := p.Acquire(nil, nil)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, l)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for addr, n := range actives(p) {
		if n < 990 || n > 1010 {
			t.Errorf("%s has %d, want about 1000 (%v)", addr, n, actives(p))
		}
	}
	for _, l := range all {
		l.Release()
		l.Release() // a second release changes nothing
	}
	for addr, n := range actives(p) {
		if n != 0 {
			t.Errorf("%s has %d after release", addr, n)
		}
	}
}

func TestMaxConns(t *testing.T) {
	p := mustPool(t, []string{"a:1,max-conns=2", "b:1,max-conns=1"}, &LeastConn{})
	ls := hold(t, p, 3, nil)
	if _, err := p.Acquire(nil, nil); err != ErrNoBackend {
		t.Fatalf("fourth acquire: %v, want ErrNoBackend", err)
	}
	ls[0].Release()
	if _, err := p.Acquire(nil, nil); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func keysOf(n int) []*Request {
	var rs []*Request
	for i := range n {
		rs = append(rs, &Request{SourceIP: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)})
	}
	return rs
}

func assign(t *testing.T, p *Pool, reqs []*Request) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = pick(t, p, r)
	}
	return out
}

func TestHashSameKeySameBackend(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1"}, &Hash{Key: SourceKey})
	for _, r := range keysOf(100) {
		first := pick(t, p, r)
		for range 5 {
			if got := pick(t, p, r); got != first {
				t.Fatalf("key %s: %s then %s", r.SourceIP, first, got)
			}
		}
	}
}

func TestHashDistributionByWeight(t *testing.T) {
	p := mustPool(t, []string{"a:1,weight=1", "b:1,weight=2", "c:1,weight=1"}, &Hash{Key: SourceKey})
	counts := map[string]int{}
	for _, a := range assign(t, p, keysOf(40_000)) {
		counts[a]++
	}
	for addr, want := range map[string]float64{"a:1": 10_000, "b:1": 20_000, "c:1": 10_000} {
		if math.Abs(float64(counts[addr])-want)/want > 0.05 {
			t.Errorf("%s got %d keys, want about %.0f (%v)", addr, counts[addr], want, counts)
		}
	}
}

func TestHashMinimalMovement(t *testing.T) {
	reqs := keysOf(20_000)
	p := mustPool(t, []string{"a:1", "b:1", "c:1", "d:1"}, &Hash{Key: SourceKey})
	before := assign(t, p, reqs)

	// Adding a fifth backend moves only keys to it, about a fifth.
	if _, err := p.Add(Spec{Addr: "e:1"}); err != nil {
		t.Fatal(err)
	}
	after := assign(t, p, reqs)
	moved := 0
	for i := range reqs {
		if before[i] != after[i] {
			moved++
			if after[i] != "e:1" {
				t.Fatalf("key %d moved %s -> %s, not to the new backend", i, before[i], after[i])
			}
		}
	}
	if f := float64(moved) / float64(len(reqs)); f < 0.17 || f > 0.23 {
		t.Errorf("adding moved %.3f of the keys, want about 0.2", f)
	}

	// Removing one moves only its keys; the rest stay.
	if err := p.Remove("b:1"); err != nil {
		t.Fatal(err)
	}
	removed := assign(t, p, reqs)
	for i := range reqs {
		if after[i] != "b:1" && removed[i] != after[i] {
			t.Fatalf("key %d on %s moved to %s when b:1 was removed", i, after[i], removed[i])
		}
		if removed[i] == "b:1" {
			t.Fatal("key still on the removed backend")
		}
	}
}

func TestHashFallsBackWhenDownAndReturns(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1"}, &Hash{Key: SourceKey})
	reqs := keysOf(3000)
	before := assign(t, p, reqs)
	b := p.Backend("a:1")
	for range DefaultHealthFall {
		p.ReportConnect(b, fmt.Errorf("refused"))
	}
	if b.State() != StateDown {
		t.Fatalf("state %v after %d failures", b.State(), DefaultHealthFall)
	}
	during := assign(t, p, reqs)
	for i := range reqs {
		switch {
		case during[i] == "a:1":
			t.Fatal("key sent to a down backend")
		case before[i] != "a:1" && during[i] != before[i]:
			t.Fatalf("key %d on %s moved to %s while another backend was down", i, before[i], during[i])
		}
	}
	for range DefaultHealthRise {
		p.observe(b, nil, "test")
	}
	if got := assign(t, p, reqs); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Error("keys did not come back when the backend rose")
	}
}

func TestHashFallsBackWhenFull(t *testing.T) {
	p := mustPool(t, []string{"a:1,max-conns=1", "b:1", "c:1"}, &Hash{Key: SourceKey})
	var key *Request
	for _, r := range keysOf(100) {
		if pick(t, p, r) == "a:1" {
			key = r
			break
		}
	}
	l, _ := p.Acquire(key, nil)
	if got := pick(t, p, key); got == "a:1" {
		t.Errorf("full backend picked")
	}
	l.Release()
	if got := pick(t, p, key); got != "a:1" {
		t.Errorf("after release: %s", got)
	}
}

func TestHashHeaderAndCookie(t *testing.T) {
	for _, pol := range []Policy{&Hash{Key: HeaderKey("X-User")}, &Hash{Key: CookieKey("sid")}} {
		p := mustPool(t, []string{"a:1", "b:1", "c:1", "d:1"}, pol)
		seen := map[string]bool{}
		for i := range 200 {
			v := fmt.Sprint("user-", i)
			req := &Request{
				Header: func(n string) string {
					if n == "X-User" {
						return v
					}
					return ""
				},
				Cookie: func(n string) string {
					if n == "sid" {
						return v
					}
					return ""
				},
			}
			first := pick(t, p, req)
			seen[first] = true
			if pick(t, p, req) != first {
				t.Fatalf("%T: same key, different backends", pol)
			}
		}
		if len(seen) != 4 {
			t.Errorf("keys reached %d of 4 backends", len(seen))
		}
		// No key: placed round-robin over every backend.
		counts := map[string]int{}
		for range 8 {
			counts[pick(t, p, &Request{})]++
		}
		if len(counts) != 4 {
			t.Errorf("keyless requests: %v", counts)
		}
	}
}

func TestStickyBackend(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1"}, nil)
	id := p.Backend("c:1").ID()
	if len(id) != 16 || id == "c:1" {
		t.Fatalf("id %q", id)
	}
	for range 10 {
		if got := pick(t, p, &Request{Sticky: id}); got != "c:1" {
			t.Fatalf("sticky pick = %s", got)
		}
	}
	if err := p.Drain("c:1", 0); err != nil {
		t.Fatal(err)
	}
	if got := pick(t, p, &Request{Sticky: id}); got == "c:1" {
		t.Error("sticky request went to a draining backend")
	}
	if got := pick(t, p, &Request{Sticky: "unknown"}); got == "" {
		t.Error("unknown sticky id")
	}
}

func TestTriedSkipped(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1"}, nil)
	a := p.Backend("a:1")
	for range 10 {
		l, err := p.Acquire(nil, []*Backend{a})
		if err != nil {
			t.Fatal(err)
		}
		if l.Backend() == a {
			t.Fatal("tried backend picked again")
		}
		l.Release()
	}
	if _, err := p.Acquire(nil, p.Backends()); err != ErrNoBackend {
		t.Errorf("all tried: %v", err)
	}
}

func TestDrainDeadlineClosesLeases(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1"}, &LeastConn{})
	ls := hold(t, p, 10, nil)
	var mu sync.Mutex
	closed := map[*Lease]bool{}
	for _, l := range ls {
		l.SetCloser(func() {
			mu.Lock()
			closed[l] = true
			mu.Unlock()
			l.Release()
		})
	}
	if err := p.Drain("a:1", 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if st := p.Backend("a:1").State(); st != StateDraining {
		t.Errorf("state %v", st)
	}
	// No new connection on the drained backend.
	for _, l := range hold(t, p, 5, nil) {
		if l.Backend().Addr() == "a:1" {
			t.Fatal("new connection on a draining backend")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Backend("a:1").Active() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range ls {
		if want := l.Backend().Addr() == "a:1"; closed[l] != want {
			t.Errorf("lease on %s closed = %v", l.Backend().Addr(), closed[l])
		}
	}
	if err := p.Drain("z:1", 0); err == nil {
		t.Error("drain of unknown backend accepted")
	}
}

func TestRemoveLeavesConnections(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1"}, nil)
	ls := hold(t, p, 4, nil)
	b := p.Backend("a:1")
	if err := p.Remove("a:1"); err != nil {
		t.Fatal(err)
	}
	if b.Active() != 2 {
		t.Errorf("removed backend has %d connections, want 2", b.Active())
	}
	for range 10 {
		if pick(t, p, nil) != "b:1" {
			t.Fatal("removed backend picked")
		}
	}
	for _, l := range ls {
		l.Release()
	}
	if b.Active() != 0 {
		t.Errorf("active %d", b.Active())
	}
	if err := p.Remove("a:1"); err == nil {
		t.Error("second remove accepted")
	}
	if _, err := p.Add(Spec{Addr: "b:1"}); err == nil {
		t.Error("duplicate add accepted")
	}
	if _, err := p.Add(Spec{Addr: "a:1", Weight: 2}); err != nil {
		t.Errorf("re-adding a removed backend: %v", err)
	}
}

func TestPoolConcurrentChanges(t *testing.T) {
	p := mustPool(t, []string{"a:1", "b:1", "c:1"}, &LeastConn{})
	p.Start()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, err := p.Acquire(&Request{SourceIP: "1.2.3.4"}, nil)
				if err == nil {
					l.Release()
				}
				_ = p.Status()
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			addr := fmt.Sprintf("x%d:1", i%5)
			_, _ = p.Add(Spec{Addr: addr})
			_ = p.SetWeight(addr, 1+i%7)
			_ = p.Drain(addr, time.Millisecond)
			_ = p.Remove(addr)
		}
	})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
}
