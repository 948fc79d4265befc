package dataplane

import (
	"io"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestPairHooks: the proxy hears when a spliced pair ends, and can close
// one (a drain deadline): both ends see the close, then PairDone runs once.
func TestPairHooks(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	for _, how := range []string{"peer closes", "ClosePair"} {
		t.Run(how, func(t *testing.T) {
			client, pc := tcpPair(t)
			pb, backend := tcpPair(t)
			cc, _ := dp.Adopt(pc)
			bc, _ := dp.Adopt(pb)
			done := make(chan struct{}, 2)
			cc.OnPairDone(func() { done <- struct{}{} })
			if cc.ClosePair() {
				t.Fatal("ClosePair before Splice reported a pair")
			}
			if err := dp.Splice(cc, bc, nil); err != nil {
				t.Fatal(err)
			}
			if how == "ClosePair" {
				if !cc.ClosePair() {
					t.Fatal("ClosePair found no pair")
				}
				for _, c := range []io.Reader{client, backend} {
					_ = c.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Read(make([]byte, 1)); err == nil {
						t.Fatal("an end still open after ClosePair")
					}
				}
			} else {
				_ = client.Close()
				_ = backend.Close()
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("PairDone not called")
			}
			cc.PairDone() // a second call runs nothing
			if len(done) != 0 || cc.ClosePair() {
				t.Error("hooks ran again after the pair ended")
			}
		})
	}
}
