package dataplane

import (
	"container/heap"
	"sync"
	"time"
)

// IdleQueue closes spliced pairs that moved no byte for their idle timeout.
// Both data paths use one. It holds every watched pair in a heap ordered by
// the pair's next check and runs one timer for all of them, so a pair
// costs an IdleEntry and a heap slot (tens of bytes), not a Go timer and
// closures of its own; at 10,000 idle pairs that difference is most of the
// daemon's memory per connection.
//
// A check runs at the earliest moment a pair could have been idle for its
// timeout: if it has, the pair is expired; if not, the check is queued
// again for the time left. So a pair costs one check per timeout period
// at most, however busy it is.
//
// Bytes taken in are not the only activity: a slow reader still draining
// what the balancer holds for it (in socket buffers, or the kernel path's
// queues) receives bytes while nothing new arrives. So each check also
// samples the pair's progress (Delivered: bytes its peers acknowledged),
// and a pair that looks idle but progressed since the last check is given
// another period. The first check comes at half the timeout, so that
// there is a sample to compare with when the pair first looks idle.
type IdleQueue struct {
	mu      sync.Mutex
	items   idleHeap
	timer   *time.Timer
	armedAt int64 // when the timer fires (monoNow), 0 when not armed
	stopped bool
}

// IdleEntry is embedded in (or held by) a pair an IdleQueue watches.
type IdleEntry struct {
	timeout   int64 // ns
	at        int64 // next check (monoNow)
	index     int32 // in the heap, when queued (Remove checks the slot holds it)
	removed   bool
	delivered uint64 // Delivered at the last check (0 before the first)
}

// Idler is a pair an IdleQueue watches.
type Idler interface {
	// IdleEntry is the pair's queue state.
	IdleEntry() *IdleEntry
	// IdleFor is how long the pair has moved no byte; false once it has
	// ended.
	IdleFor() (time.Duration, bool)
	// IdleExpire closes the pair, idle for idle.
	IdleExpire(idle time.Duration)
	// Delivered measures the pair's progress: bytes its sockets' peers
	// acknowledged and bytes they received, summed; it changes while a
	// slow reader drains what is queued for it.
	Delivered() uint64
}

// NewIdleQueue returns an empty queue.
func NewIdleQueue() *IdleQueue {
	q := &IdleQueue{}
	q.timer = time.AfterFunc(time.Hour, q.fire)
	q.timer.Stop()
	return q
}

// Add watches x with timeout (<= 0: not watched), from now on. Each pair
// is added once.
func (q *IdleQueue) Add(x Idler, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	e := x.IdleEntry()
	now := monoNow()
	q.mu.Lock()
	defer q.mu.Unlock()
	// Remove may have come first (the pair ended as it was spliced).
	if q.stopped || e.removed {
		return
	}
	e.timeout = int64(timeout)
	e.at = now + e.timeout/2
	heap.Push(&q.items, x)
	q.arm(now)
}

// Remove stops watching x (its pair ended). Safe to call more than once,
// and for a pair never added.
func (q *IdleQueue) Remove(x Idler) {
	e := x.IdleEntry()
	q.mu.Lock()
	e.removed = true
	if e.index >= 0 && int(e.index) < len(q.items) && q.items[e.index] == x {
		heap.Remove(&q.items, int(e.index))
	}
	q.mu.Unlock()
}

// Len is the number of pairs queued.
func (q *IdleQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Stop stops the timer and forgets every pair.
func (q *IdleQueue) Stop() {
	q.mu.Lock()
	q.stopped = true
	q.timer.Stop()
	for _, x := range q.items {
		x.IdleEntry().index = -1
	}
	q.items = nil
	q.mu.Unlock()
}

// arm sets the timer for the earliest check, unless it already fires
// earlier. Called with mu held.
func (q *IdleQueue) arm(now int64) {
	if len(q.items) == 0 || q.stopped {
		return
	}
	at := q.items[0].IdleEntry().at
	if q.armedAt != 0 && q.armedAt <= at {
		return
	}
	q.armedAt = at
	q.timer.Reset(time.Duration(max(at-now, 0)))
}

// fire runs the checks that are due. IdleFor and IdleExpire run outside
// the lock: they read the kernel's maps and close sockets.
func (q *IdleQueue) fire() {
	now := monoNow()
	q.mu.Lock()
	q.armedAt = 0
	var due []Idler
	for len(q.items) > 0 && q.items[0].IdleEntry().at <= now {
		due = append(due, heap.Pop(&q.items).(Idler))
	}
	q.mu.Unlock()
	for _, x := range due {
		e := x.IdleEntry()
		idle, alive := x.IdleFor()
		if !alive {
			continue
		}
		d := x.Delivered()
		wait := e.timeout - int64(idle)
		if idle >= time.Duration(e.timeout) {
			if d == e.delivered {
				x.IdleExpire(idle)
				continue
			}
			wait = e.timeout // progressed since the last check: still draining
		}
		e.delivered = d
		q.mu.Lock()
		if !e.removed && !q.stopped {
			e.at = monoNow() + wait
			heap.Push(&q.items, x)
		}
		q.mu.Unlock()
	}
	q.mu.Lock()
	q.arm(monoNow())
	q.mu.Unlock()
}

// idleHeap is a min-heap of pairs by next check.
type idleHeap []Idler

func (h idleHeap) Len() int           { return len(h) }
func (h idleHeap) Less(i, j int) bool { return h[i].IdleEntry().at < h[j].IdleEntry().at }
func (h idleHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].IdleEntry().index = int32(i)
	h[j].IdleEntry().index = int32(j)
}
func (h *idleHeap) Push(x any) {
	x.(Idler).IdleEntry().index = int32(len(*h))
	*h = append(*h, x.(Idler))
}
func (h *idleHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	x.IdleEntry().index = -1
	if cap(*h) > 64 && len(*h) < cap(*h)/4 {
		// Give memory back after a wave of connections has gone.
		*h = append(idleHeap(nil), *h...)
	}
	return x
}
