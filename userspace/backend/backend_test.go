package backend

import (
	"errors"
	"sync"
	"testing"
)

func TestRoundRobin(t *testing.T) {
	p, err := NewPool([]string{"a:1", "b:2", "c:3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 6 {
		b, err := p.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Addr)
	}
	want := []string{"a:1", "b:2", "c:3", "a:1", "b:2", "c:3"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks = %v, want %v", got, want)
		}
	}
}

func TestRoundRobinConcurrentIsFair(t *testing.T) {
	p, _ := NewPool([]string{"a:1", "b:2"}, nil)
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				b, _ := p.Next()
				mu.Lock()
				counts[b.Addr]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if counts["a:1"] != 4000 || counts["b:2"] != 4000 {
		t.Errorf("counts = %v", counts)
	}
}

func TestEmptyPool(t *testing.T) {
	p, err := NewPool(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Next(); !errors.Is(err, ErrNoBackend) {
		t.Errorf("err = %v, want ErrNoBackend", err)
	}
}

func TestBadAddr(t *testing.T) {
	for _, a := range []string{"nohost", ":80", "h:0", "h:70000", "h:http"} {
		if _, err := NewPool([]string{a}, nil); err == nil {
			t.Errorf("%q accepted", a)
		}
	}
}

func TestSetBackends(t *testing.T) {
	p, err := NewPool([]string{"10.0.0.1:80"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetBackends([]string{"10.0.0.2:80", "bad"}); err == nil {
		t.Fatal("bad address accepted")
	}
	if b, _ := p.Next(); b.Addr != "10.0.0.1:80" {
		t.Fatalf("pool changed by a refused SetBackends: %s", b.Addr)
	}
	if err := p.SetBackends([]string{"10.0.0.2:80", "10.0.0.3:80"}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 4 {
		b, _ := p.Next()
		seen[b.Addr] = true
	}
	if len(seen) != 2 || !seen["10.0.0.2:80"] || !seen["10.0.0.3:80"] {
		t.Fatalf("after SetBackends picked %v", seen)
	}
	if err := p.SetBackends(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Next(); err != ErrNoBackend {
		t.Fatalf("empty pool: %v", err)
	}
}
