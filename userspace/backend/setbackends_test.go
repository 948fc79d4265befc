package backend

import (
	"slices"
	"testing"
)

// SetBackends (a reload) removes, adds and updates backends; a bad spec
// leaves the pool as it was.
func TestSetBackends(t *testing.T) {
	specs := []Spec{{Addr: "10.0.0.1:80", Weight: 1}, {Addr: "10.0.0.2:80", Weight: 1}}
	p, err := NewPool(specs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetBackends([]string{"10.0.0.2:80,weight=5", "10.0.0.3:80,max-conns=7"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range p.Backends() {
		got = append(got, b.Spec().String())
	}
	want := []string{"10.0.0.2:80,weight=5", "10.0.0.3:80,max-conns=7"}
	if !slices.Equal(got, want) {
		t.Fatalf("after reload: %q, want %q", got, want)
	}
	if err := p.SetBackends([]string{"10.0.0.9:80", "nonsense"}); err == nil {
		t.Fatal("bad spec accepted")
	}
	if p.Len() != 2 || p.Backend("10.0.0.9:80") != nil {
		t.Fatalf("a rejected reload changed the pool: %d backends", p.Len())
	}
}
