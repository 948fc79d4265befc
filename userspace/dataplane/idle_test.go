package dataplane

import (
	"sync/atomic"
	"testing"
	"time"
)

// fakeIdler is a pair whose activity the test sets.
type fakeIdler struct {
	entry IdleEntry
	start time.Time
	last  atomic.Int64 // ns since start of the last activity
	gone  atomic.Bool
	// delivered stands for the bytes a slow reader took: progress with
	// no activity.
	delivered atomic.Uint64
	expired   chan time.Duration
}

func newFakeIdler() *fakeIdler {
	return &fakeIdler{start: time.Now(), expired: make(chan time.Duration, 1)}
}

func (f *fakeIdler) IdleEntry() *IdleEntry { return &f.entry }
func (f *fakeIdler) IdleFor() (time.Duration, bool) {
	return time.Since(f.start) - time.Duration(f.last.Load()), !f.gone.Load()
}
func (f *fakeIdler) IdleExpire(idle time.Duration) { f.expired <- idle }
func (f *fakeIdler) Delivered() uint64             { return f.delivered.Load() }
func (f *fakeIdler) active()                       { f.last.Store(int64(time.Since(f.start))) }

// TestIdleQueue: a pair that stays idle expires after its timeout, not
// before; one whose activity keeps moving does not; one that ended or was
// removed never does; timeouts of different lengths each hold.
func TestIdleQueue(t *testing.T) {
	const timeout = 100 * time.Millisecond
	q := NewIdleQueue()
	defer q.Stop()
	busy, idle, long, gone, removed := newFakeIdler(), newFakeIdler(), newFakeIdler(), newFakeIdler(), newFakeIdler()
	for _, f := range []*fakeIdler{busy, idle, gone, removed} {
		q.Add(f, timeout)
	}
	q.Add(long, 4*timeout)
	q.Add(newFakeIdler(), 0) // not watched
	if n := q.Len(); n != 5 {
		t.Fatalf("queue holds %d pairs, want 5", n)
	}
	gone.gone.Store(true)
	q.Remove(removed)
	q.Remove(removed) // twice is fine
	start := time.Now()
	for i := 0; i < 6; i++ { // active for 3 timeouts
		time.Sleep(timeout / 2)
		busy.active()
	}
	select {
	case d := <-idle.expired:
		if d < timeout {
			t.Fatalf("expired after %v idle, timeout %v", d, timeout)
		}
	case <-time.After(10 * timeout):
		t.Fatal("an idle pair never expired")
	}
	select {
	case d := <-busy.expired:
		t.Fatalf("an active pair expired (idle %v)", d)
	default:
	}
	select {
	case d := <-long.expired:
		if el := time.Since(start); el < 4*timeout-10*time.Millisecond || d < 4*timeout {
			t.Fatalf("4x timeout pair expired after %v (idle %v)", el, d)
		}
	case <-time.After(10 * timeout):
		t.Fatal("the long-timeout pair never expired")
	}
	select {
	case d := <-busy.expired:
		if d < timeout {
			t.Fatalf("expired after %v idle", d)
		}
	case <-time.After(10 * timeout):
		t.Fatal("the busy pair never expired once idle")
	}
	for _, f := range []*fakeIdler{gone, removed} {
		select {
		case <-f.expired:
			t.Fatal("a pair that ended or was removed expired")
		default:
		}
	}
	if n := q.Len(); n != 0 {
		t.Fatalf("queue holds %d pairs after all expired or ended, want 0", n)
	}
}

// TestIdleQueueDraining: a pair that takes nothing in but whose reader
// keeps taking what is queued for it (progress) is not idle; once the
// progress stops, it expires, within two timeouts.
func TestIdleQueueDraining(t *testing.T) {
	const timeout = 100 * time.Millisecond
	q := NewIdleQueue()
	defer q.Stop()
	f := newFakeIdler()
	q.Add(f, timeout)
	for range 40 { // 4 timeouts of a slow drain
		time.Sleep(timeout / 10)
		f.delivered.Add(1000)
	}
	select {
	case d := <-f.expired:
		t.Fatalf("a draining pair expired (no byte in for %v)", d)
	default:
	}
	stopped := time.Now()
	select {
	case <-f.expired:
		if el := time.Since(stopped); el > 2*timeout+50*time.Millisecond {
			t.Fatalf("expired %v after its progress stopped, timeout %v", el, timeout)
		}
	case <-time.After(10 * timeout):
		t.Fatal("a pair whose progress stopped never expired")
	}
}

// TestIdleQueueMany: thousands of pairs with spread deadlines all expire,
// each not before its timeout, and removed ones leave the heap at once.
func TestIdleQueueMany(t *testing.T) {
	q := NewIdleQueue()
	defer q.Stop()
	const n = 3000
	fs := make([]*fakeIdler, n)
	for i := range fs {
		fs[i] = newFakeIdler()
		// Long enough that no check (the first comes at half the
		// timeout) pops pairs while the heap is counted below.
		q.Add(fs[i], time.Duration(200+i%50)*time.Millisecond)
	}
	for i := 0; i < n; i += 2 {
		q.Remove(fs[i])
	}
	if got := q.Len(); got != n/2 {
		t.Fatalf("queue holds %d after removing half, want %d", got, n/2)
	}
	deadline := time.After(5 * time.Second)
	for i := 1; i < n; i += 2 {
		select {
		case d := <-fs[i].expired:
			if want := time.Duration(200+i%50) * time.Millisecond; d < want {
				t.Fatalf("pair %d expired after %v idle, timeout %v", i, d, want)
			}
		case <-deadline:
			t.Fatalf("pair %d never expired", i)
		}
	}
	for i := 0; i < n; i += 2 {
		if len(fs[i].expired) != 0 {
			t.Fatalf("removed pair %d expired", i)
		}
	}
}
