package dataplane

import (
	"io"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// recOwner records what the data plane tells an Owner.
type recOwner struct {
	started chan Pair
	path    string
	ended   chan PairCounts
}

func (o *recOwner) PairStarted(path string, p Pair) { o.path = path; o.started <- p }
func (o *recOwner) PairEnded(c PairCounts)          { o.ended <- c }

// TestOwner: the proxy hears when a spliced pair starts (with a handle
// that counts its bytes and closes it: a drain deadline) and when it ends,
// once, with the bytes it moved each way.
func TestOwner(t *testing.T) {
	dp := NewUserspace(zerolog.Nop())
	defer dp.Close()
	for _, how := range []string{"peers close", "handle closes"} {
		t.Run(how, func(t *testing.T) {
			client, pc := tcpPair(t)
			pb, backend := tcpPair(t)
			cc, _ := dp.Adopt(pc)
			bc, _ := dp.Adopt(pb)
			o := &recOwner{started: make(chan Pair, 2), ended: make(chan PairCounts, 2)}
			cc.Owner = o
			if err := dp.Splice(cc, bc, nil); err != nil {
				t.Fatal(err)
			}
			var h Pair
			select {
			case h = <-o.started:
			default:
				t.Fatal("PairStarted not called before Splice returned")
			}
			if o.path != "userspace" {
				t.Fatalf("path %q", o.path)
			}
			// 5 bytes to the backend, 3 to the client.
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(backend, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			if _, err := backend.Write([]byte("hey")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(client, make([]byte, 3)); err != nil {
				t.Fatal(err)
			}
			// A copier counts right after its write, so the peer may
			// read before the count lands: wait for it, bounded.
			want := PairCounts{ToBackend: 5, ToClient: 3}
			got := h.Counts()
			for deadline := time.Now().Add(5 * time.Second); got != want && time.Now().Before(deadline); got = h.Counts() {
				time.Sleep(time.Millisecond)
			}
			if got != want {
				t.Fatalf("live counts %+v, want %+v", got, want)
			}
			if how == "handle closes" {
				h.Close()
				for _, c := range []io.Reader{client, backend} {
					_ = c.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Read(make([]byte, 1)); err == nil {
						t.Fatal("an end still open after Close")
					}
				}
			} else {
				_ = client.Close()
				_ = backend.Close()
			}
			select {
			case got := <-o.ended:
				if got != want {
					t.Fatalf("final counts %+v, want %+v", got, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("PairEnded not called")
			}
			h.Close() // after the end: nothing happens
			time.Sleep(50 * time.Millisecond)
			if len(o.ended) != 0 || len(o.started) != 0 {
				t.Error("owner told again after the pair ended")
			}
		})
	}
}
