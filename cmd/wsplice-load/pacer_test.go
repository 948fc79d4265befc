package main

import (
	"testing"
	"time"
)

// sleepUntil never wakes before the scheduled time (a latency measured from
// the scheduled time would then read short), and a time already past
// returns at once.
func TestPacerNeverEarly(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		lockForPacing()
		for i := range 200 {
			at := time.Now().Add(time.Duration(i%7) * 50 * time.Microsecond)
			sleepUntil(at)
			if now := time.Now(); now.Before(at) {
				t.Errorf("woke %v early", at.Sub(now))
				return
			}
		}
		past := time.Now().Add(-time.Second)
		t0 := time.Now()
		sleepUntil(past)
		if d := time.Since(t0); d > 100*time.Millisecond {
			t.Errorf("sleepUntil(past) took %v", d)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("sleepUntil did not return")
	}
}
