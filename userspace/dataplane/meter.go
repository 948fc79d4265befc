package dataplane

import (
	"sync"
	"sync/atomic"
)

// PairCounts are the bytes a spliced pair moved after Splice, each way
// (the 101 and anything the proxy wrote during the handshake excluded).
type PairCounts struct {
	ToBackend uint64
	ToClient  uint64
}

// Meter follows one spliced pair for metrics. The proxy sets it on the
// client Conn before Splice; the data plane that ends up carrying the pair
// says which it is (SetPath), counts the bytes it moves in userspace (Add),
// or gives a way to read the kernel's counts while the pair lives
// (SetKernel), and calls Done once when the pair has ended, before the
// kernel's counters are freed. Every method is safe on a nil Meter.
type Meter struct {
	toBackend, toClient atomic.Uint64

	mu     sync.Mutex
	path   string
	kernel func() PairCounts
	final  PairCounts // kernel counts, frozen by Done
	done   bool
	onDone func(PairCounts)
}

// NewMeter returns a Meter that calls onDone (if not nil) once, with the
// final counts, when the pair ends.
func NewMeter(onDone func(PairCounts)) *Meter { return &Meter{onDone: onDone} }

// SetPath records the data path carrying the pair: "sockmap" or
// "userspace".
func (m *Meter) SetPath(path string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.path = path
	m.mu.Unlock()
}

// Path is what SetPath recorded.
func (m *Meter) Path() string {
	if m == nil {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.path
}

// Add counts n bytes moved by userspace, towards the backend or not.
func (m *Meter) Add(toBackend bool, n int64) {
	if m == nil || n <= 0 {
		return
	}
	if toBackend {
		m.toBackend.Add(uint64(n))
	} else {
		m.toClient.Add(uint64(n))
	}
}

// SetKernel gives the function that reads the kernel's counts of the pair
// while it lives; Counts adds them to what userspace moved.
func (m *Meter) SetKernel(f func() PairCounts) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.kernel = f
	m.mu.Unlock()
}

// Counts returns the bytes moved so far.
func (m *Meter) Counts() PairCounts {
	if m == nil {
		return PairCounts{}
	}
	m.mu.Lock()
	k := m.final
	if !m.done && m.kernel != nil {
		k = m.kernel()
	}
	m.mu.Unlock()
	return PairCounts{ToBackend: m.toBackend.Load() + k.ToBackend, ToClient: m.toClient.Load() + k.ToClient}
}

// Done ends the pair: the kernel's counts are read one last time and kept,
// and onDone is called with the totals. Later calls do nothing.
func (m *Meter) Done() {
	if m == nil {
		return
	}
	m.mu.Lock()
	if m.done {
		m.mu.Unlock()
		return
	}
	if m.kernel != nil {
		m.final = m.kernel()
		m.kernel = nil
	}
	m.done = true
	m.mu.Unlock()
	if m.onDone != nil {
		m.onDone(m.Counts())
	}
}
