package main

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Pacing: the open-loop sender sleeps until each scheduled send time with
// nanosleep(2), from a goroutine locked to its own thread with the
// thread's timer slack at 1 ns. Go's own timers wake late by up to a
// millisecond when the process is otherwise idle (the netpoller waits in
// epoll_pwait, whose timeout is in milliseconds): measured here, a 200 µs
// time.Sleep returned 880 µs late at the median, a nanosleep 22 µs late.
// An open-loop run whose sender wakes that late puts the lateness into
// every latency sample (latency runs from the scheduled send time), which
// drowns the differences between proxies at the median.

// lockForPacing locks the calling goroutine to its thread for the rest of
// its life and sets the thread's timer slack; call it before sleepUntil.
func lockForPacing() {
	runtime.LockOSThread()
	// Best effort: without it nanosleep still beats the netpoller's
	// millisecond timeouts (the default slack is 50 µs).
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
}

// sleepUntil returns at or after t.
func sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(int64(d))
		_ = unix.Nanosleep(&ts, nil) // EINTR: loop and sleep the rest
	}
}
