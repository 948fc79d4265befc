package dataplane

import "testing"

// TestMeter: userspace and kernel counts add up; Done freezes the kernel's
// and reports once; a nil Meter is inert.
func TestMeter(t *testing.T) {
	var got []PairCounts
	m := NewMeter(func(c PairCounts) { got = append(got, c) })
	m.SetPath("sockmap")
	k := PairCounts{ToBackend: 100, ToClient: 7}
	m.SetKernel(func() PairCounts { return k })
	m.Add(true, 5)
	m.Add(false, 3)
	if c := m.Counts(); c != (PairCounts{105, 10}) {
		t.Fatalf("live counts %+v", c)
	}
	k.ToBackend = 200
	m.Done()
	k = PairCounts{} // the kernel's counters are gone after Done
	m.Done()
	if len(got) != 1 || got[0] != (PairCounts{205, 10}) || m.Counts() != got[0] || m.Path() != "sockmap" {
		t.Fatalf("done %v, counts after %+v", got, m.Counts())
	}
	var nilMeter *Meter
	nilMeter.Add(true, 1)
	nilMeter.SetPath("x")
	nilMeter.Done()
	if nilMeter.Counts() != (PairCounts{}) {
		t.Fatal("nil meter counted")
	}
}
