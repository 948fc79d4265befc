package dataplane

import (
	"sync/atomic"
	"testing"
	"time"
)

// WatchIdle expires a pair that stays idle, not one whose activity keeps
// moving, and not one that is gone.
func TestWatchIdle(t *testing.T) {
	const timeout = 100 * time.Millisecond
	start := time.Now()
	var last atomic.Int64 // ns since start
	expired := make(chan time.Duration, 1)
	w := WatchIdle(timeout, func() (time.Duration, bool) {
		return time.Since(start) - time.Duration(last.Load()), true
	}, func(idle time.Duration) { expired <- idle })
	defer w.Stop()
	// Active for 3 timeouts: no expiry.
	for i := 0; i < 6; i++ {
		time.Sleep(timeout / 2)
		last.Store(int64(time.Since(start)))
	}
	select {
	case idle := <-expired:
		t.Fatalf("expired while active (idle %v)", idle)
	default:
	}
	select {
	case idle := <-expired:
		if idle < timeout {
			t.Fatalf("expired after %v idle, timeout %v", idle, timeout)
		}
	case <-time.After(10 * timeout):
		t.Fatal("an idle pair never expired")
	}

	gone := WatchIdle(timeout, func() (time.Duration, bool) { return time.Hour, false }, func(time.Duration) { expired <- 0 })
	defer gone.Stop()
	select {
	case <-expired:
		t.Fatal("a pair already gone expired")
	case <-time.After(3 * timeout):
	}
	if WatchIdle(0, nil, nil) != nil {
		t.Fatal("timeout 0 watches something")
	}
}
