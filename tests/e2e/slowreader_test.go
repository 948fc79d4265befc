package e2e

import (
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/wsraw"
)

type pushProgress struct {
	Total int64 `json:"total"`
	Sent  int64 `json:"sent"`
	Done  bool  `json:"done"`
}

// TestSlowReader: a client stops reading while its backend pushes 100 MiB.
// The daemon must push back: its memory and the machine's stay flat, and
// the backend's writes stall instead of completing. Afterwards the client
// reads everything, intact.
func TestSlowReader(t *testing.T) {
	e := newEnv(t)
	push := size(t, "WSPLICE_PUSH_BYTES", 100<<20, 32<<20)
	stall := time.Duration(size(t, "WSPLICE_STALL_SECONDS", 10, 2)) * time.Second
	const limit = 64 << 20
	forEachDataplane(t, func(t *testing.T, dp string) {
		skipUntrimmedKernel(t, dp)
		d := e.startDaemon(t, dp)
		// MemAvailable is machine-wide, and other processes allocate too:
		// compare medians of samples rather than single readings.
		rss0, mem0 := d.rssBytes(t), medianMemAvailable(t, 5)
		id := fmt.Sprintf("slow-%s-%d", dp, time.Now().UnixNano())
		ws, resp := d.dialWS(t, fmt.Sprintf("/push?push=%d&id=%s", push, id))
		backend := resp.Header.Get("X-Backend-Name")

		var mid, end pushProgress
		maxRSS := rss0
		var mems []int64
		start := time.Now()
		for time.Since(start) < stall {
			time.Sleep(200 * time.Millisecond)
			maxRSS = max(maxRSS, d.rssBytes(t))
			mems = append(mems, memAvailable(t))
			if mid.Total == 0 && time.Since(start) >= stall/2 {
				e.backendGet(t, backend, "/push-progress?id="+id, &mid)
			}
		}
		e.backendGet(t, backend, "/push-progress?id="+id, &end)
		memDrop := mem0 - median(mems)
		t.Logf("backend pushed %s by %v, %s by %v; daemon RSS %s -> max %s; MemAvailable fell by %s (median; most %s)",
			mib(mid.Sent), stall/2, mib(end.Sent), stall, mib(rss0), mib(maxRSS), mib(memDrop), mib(mem0-slices.Min(mems)))
		if end.Done || end.Sent >= push {
			t.Errorf("the backend pushed all %s to a client that read nothing: no backpressure", mib(push))
		} else if end.Sent-mid.Sent > 1<<20 {
			t.Errorf("the backend's push went on from %s to %s while the client read nothing: no backpressure", mib(mid.Sent), mib(end.Sent))
		}
		if maxRSS-rss0 > limit {
			t.Errorf("daemon RSS grew by %s, want < %s", mib(maxRSS-rss0), mib(limit))
		}
		if memDrop > limit {
			t.Errorf("MemAvailable fell by %s, want < %s (kernel buffering without bound?)", mib(memDrop), mib(limit))
		}

		// Now read it all: nothing was lost while stalled.
		ws.SetReadDeadline(time.Now().Add(60 * time.Second))
		var off int64
		buf := make([]byte, 1<<20)
		for off < push {
			typ, r, err := ws.NextReader()
			if err != nil {
				t.Fatalf("after %s of %s: %v", mib(off), mib(push), err)
			}
			k, err := io.ReadFull(r, buf)
			if typ != websocket.BinaryMessage || (err != nil && err != io.ErrUnexpectedEOF) {
				t.Fatalf("message at %s: type %d, %v", mib(off), typ, err)
			}
			if i := wsraw.CheckPattern(buf[:k], off); i >= 0 {
				t.Fatalf("byte %d of the push differs", off+int64(i))
			}
			off += int64(k)
		}
		if off != push {
			t.Fatalf("read %d bytes, want %d", off, push)
		}
		closeWS(ws)
		d.idle(t)
	})
}

func medianMemAvailable(t *testing.T, n int) int64 {
	t.Helper()
	var mems []int64
	for range n {
		mems = append(mems, memAvailable(t))
		time.Sleep(100 * time.Millisecond)
	}
	return median(mems)
}

func median(v []int64) int64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
