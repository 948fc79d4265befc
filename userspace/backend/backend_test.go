package backend

import (
	"errors"
	"testing"
)

func mustPool(t *testing.T, specs []string, policy Policy) *Pool {
	t.Helper()
	var ss []Spec
	for _, s := range specs {
		sp, err := ParseSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		ss = append(ss, sp)
	}
	p, err := NewPool(ss, Options{Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// pick acquires and releases at once, returning the address.
func pick(t *testing.T, p *Pool, req *Request) string {
	t.Helper()
	l, err := p.Acquire(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	return l.Backend().Addr()
}

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]Spec{
		"a:1":                         {Addr: "a:1", Weight: 1},
		"a:1,weight=5":                {Addr: "a:1", Weight: 5},
		" 10.0.0.1:80 , max-conns=7 ": {Addr: "10.0.0.1:80", Weight: 1, MaxConns: 7},
		"[::1]:80,proxy-protocol=v2":  {Addr: "[::1]:80", Weight: 1, ProxyProtocol: 2},
		"h:9,proxy-protocol=v2,weight=3,max-conns=100": {Addr: "h:9", Weight: 3, MaxConns: 100, ProxyProtocol: 2},
	} {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if again, err := ParseSpec(got.String()); err != nil || again != got {
			t.Errorf("ParseSpec(%q.String() = %q) = %+v, %v", in, got.String(), again, err)
		}
	}
	for _, in := range []string{"", "nohost", ":80", "h:0", "h:70000", "h:http", "h:1,weight=0", "h:1,weight=-2",
		"h:1,weight=10001", "h:1,weight=x", "h:1,max-conns=-1", "h:1,proxy-protocol=v1", "h:1,foo=1", "h:1,weight",
		"h:1,weight=1,weight=2"} {
		if _, err := ParseSpec(in); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("ParseSpec(%q) err = %v, want ErrInvalidSpec", in, err)
		}
	}
}

func TestCanonicalAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:80":            "127.0.0.1:80",
		"127.0.0.1:080":           "127.0.0.1:80",
		"[::ffff:127.0.0.1]:80":   "127.0.0.1:80",
		"[0:0:0:0:0:0:0:1]:443":   "[::1]:443",
		"[fe80::1%eth0]:80":       "[fe80::1%eth0]:80",
		"Backend.Example.COM:900": "backend.example.com:900",
		"no-port":                 "no-port",
	} {
		if got := CanonicalAddr(in); got != want {
			t.Errorf("CanonicalAddr(%q) = %q, want %q", in, got, want)
		}
	}
	p := mustPool(t, []string{"127.0.0.1:80"}, nil)
	if _, err := p.Add(Spec{Addr: "[::ffff:127.0.0.1]:0080"}); !errors.Is(err, ErrExists) {
		t.Errorf("the same backend spelled otherwise: %v, want ErrExists", err)
	}
	if p.Backend("127.0.0.1:0080") == nil || p.Remove("[::ffff:127.0.0.1]:80") != nil {
		t.Error("a backend not found under another spelling of its address")
	}
}

func TestEmptyPool(t *testing.T) {
	p := mustPool(t, nil, nil)
	if _, err := p.Acquire(nil, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("err = %v, want ErrNoBackend", err)
	}
}

func TestDuplicateBackend(t *testing.T) {
	if _, err := NewPool([]Spec{{Addr: "a:1"}, {Addr: "a:1", Weight: 2}}, Options{}); err == nil {
		t.Error("duplicate accepted")
	}
}

func TestParsePolicy(t *testing.T) {
	for _, ok := range []string{"", "round-robin", "least-conn", "hash-source", "hash-header:X-User", "hash-cookie:sid"} {
		if _, err := ParsePolicy(ok); err != nil {
			t.Errorf("ParsePolicy(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"random", "hash-header:", "hash-cookie:", "hash-header:a b", "hash-cookie:a;b", "least"} {
		if _, err := ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
}
