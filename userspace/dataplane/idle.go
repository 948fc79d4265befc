package dataplane

import "time"

// IdleWatch closes a spliced pair that moved no byte for its idle timeout.
// Both data paths use it; each says how long its pair has been idle.
type IdleWatch struct{ t *time.Timer }

// WatchIdle checks idleFor at the earliest moment the pair could have been
// idle for timeout: if it has, expire runs (once); if not, the check sleeps
// for the time left. So a pair costs one wake-up per timeout period at
// most, whatever the number of pairs. idleFor reports false once the pair
// is gone. A timeout <= 0 watches nothing (nil).
func WatchIdle(timeout time.Duration, idleFor func() (time.Duration, bool), expire func(idle time.Duration)) *IdleWatch {
	if timeout <= 0 {
		return nil
	}
	w := &IdleWatch{}
	// Created far in the future and armed once w.t is set, so the check
	// never runs before it can re-arm itself.
	w.t = time.AfterFunc(time.Hour, func() {
		idle, alive := idleFor()
		switch {
		case !alive:
		case idle < timeout:
			w.t.Reset(timeout - idle)
		default:
			expire(idle)
		}
	})
	w.t.Reset(timeout)
	return w
}

// Stop stops watching (the pair ended). A nil IdleWatch is fine.
func (w *IdleWatch) Stop() {
	if w != nil {
		w.t.Stop()
	}
}
