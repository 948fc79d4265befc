package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestStress: many connections send messages of random sizes, log-uniform
// from 1 B to 1 MiB, while reading the echoes at the same time; every byte
// of every echo is compared.
func TestStress(t *testing.T) {
	e := newEnv(t)
	total := size(t, "WSPLICE_STRESS_MESSAGES", 100_000, 2_000)
	conns := size(t, "WSPLICE_STRESS_CONNS", 32, 8)
	maxSize := int(size(t, "WSPLICE_STRESS_MAX_SIZE", 1<<20, 64<<10))
	timeout := time.Duration(size(t, "WSPLICE_STRESS_TIMEOUT_SECONDS", 300, 60)) * time.Second
	const stallAfter = 20 * time.Second
	// Messages are slices of one random buffer at random offsets: cheap to
	// make and to compare, and a misplaced or reordered slice shows.
	data := make([]byte, 2*maxSize)
	rand.NewChaCha8(seed(3)).Read(data)

	forEachDataplane(t, func(t *testing.T, dp string) {
		skipUntrimmedKernel(t, dp)
		d := e.startDaemon(t, dp)
		wss := make([]*websocket.Conn, conns)
		for i := range wss {
			wss[i], _ = d.dialWS(t, fmt.Sprintf("/stress/%d", i))
		}
		start := time.Now()
		var bytesEchoed atomic.Int64
		progress := make([]atomic.Int64, conns) // messages echoed, per connection
		want := make([]int64, conns)
		var wg sync.WaitGroup
		errs := make([]error, conns)
		for i, ws := range wss {
			want[i] = total / conns
			if int64(i) < total%conns {
				want[i]++
			}
			wg.Go(func() { errs[i] = stressConn(ws, uint64(i), want[i], data, maxSize, &bytesEchoed, &progress[i]) })
		}
		// A watchdog ends the test early when echoes stop coming, and at
		// the timeout: closing the connections ends every goroutine.
		done := make(chan struct{})
		var stalled atomic.Value
		go func() {
			last, lastChange := int64(-1), time.Now()
			for {
				select {
				case <-done:
					return
				case <-time.After(time.Second):
				}
				now := bytesEchoed.Load()
				if now != last {
					last, lastChange = now, time.Now()
				}
				var why string
				switch {
				case time.Since(lastChange) > stallAfter:
					why = fmt.Sprintf("no echo for %v", stallAfter)
				case time.Since(start) > timeout:
					why = fmt.Sprintf("not done after %v", timeout)
				default:
					continue
				}
				stalled.Store(why + "\n" + d.debugDump())
				for _, ws := range wss {
					ws.NetConn().Close()
				}
				return
			}
		}()
		wg.Wait()
		close(done)
		took := time.Since(start)
		if why, ok := stalled.Load().(string); ok {
			var unfinished []string
			for i := range progress {
				if got := progress[i].Load(); got < want[i] {
					unfinished = append(unfinished, fmt.Sprintf("conn %d at %d/%d", i, got, want[i]))
				}
			}
			t.Fatalf("%s: %s of messages echoed; unfinished: %s", why, mib(bytesEchoed.Load()), strings.Join(unfinished, ", "))
		}
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d messages on %d connections, %s each way, in %v (%.0f MiB/s each way)",
			total, conns, mib(bytesEchoed.Load()), took.Round(time.Millisecond),
			float64(bytesEchoed.Load())/(1<<20)/took.Seconds())
		d.idle(t)
	})
}

// messageShape picks a log-uniform size in [1, maxSize] and an offset into
// the data buffer.
func messageShape(rng *rand.Rand, maxSize int) (size, off int) {
	size = int(math.Exp(rng.Float64() * math.Log(float64(maxSize)+1)))
	size = min(max(size, 1), maxSize)
	return size, rng.IntN(maxSize + 1)
}

// stressConn sends n messages while reading their echoes, and closes with
// a closing handshake.
func stressConn(ws *websocket.Conn, id uint64, n int64, data []byte, maxSize int, echoed, messages *atomic.Int64) error {
	werr := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(id, 1))
		for range n {
			size, off := messageShape(rng, maxSize)
			if err := ws.WriteMessage(websocket.BinaryMessage, data[off:off+size]); err != nil {
				werr <- fmt.Errorf("conn %d: write: %w", id, err)
				return
			}
		}
		werr <- nil
	}()
	rng := rand.New(rand.NewPCG(id, 1))
	buf := make([]byte, maxSize+1)
	for i := range n {
		size, off := messageShape(rng, maxSize)
		typ, r, err := ws.NextReader()
		if err != nil {
			return fmt.Errorf("conn %d: message %d of %d: %w", id, i, n, err)
		}
		k, err := io.ReadFull(r, buf[:size+1])
		if typ != websocket.BinaryMessage || k != size || !errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("conn %d: message %d: echo is type %d, %d bytes (%v); want binary, %d bytes", id, i, typ, k, err, size)
		}
		if !bytes.Equal(buf[:size], data[off:off+size]) {
			return fmt.Errorf("conn %d: message %d: echo of %d bytes differs from what was sent", id, i, size)
		}
		echoed.Add(int64(size))
		messages.Add(1)
	}
	if err := <-werr; err != nil {
		return err
	}
	return closeWS(ws)
}

// closeWS runs the closing handshake: send a close frame, wait for the
// peer's, close the connection.
func closeWS(ws *websocket.Conn) error {
	defer ws.Close()
	deadline := time.Now().Add(5 * time.Second)
	if err := ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline); err != nil {
		return fmt.Errorf("send close: %w", err)
	}
	ws.SetReadDeadline(deadline)
	for {
		if _, _, err := ws.NextReader(); err != nil {
			if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return nil
			}
			return fmt.Errorf("waiting for the close frame: %w", err)
		}
	}
}

// TestChurn: thousands of connections are opened, used and closed; then
// nothing stays behind in the daemon: no spliced pair, no map entry, no
// file descriptor or goroutine beyond the baseline.
func TestChurn(t *testing.T) {
	e := newEnv(t)
	n := int(size(t, "WSPLICE_CHURN_CONNS", 10_000, 300))
	const parallel = 32
	forEachDataplane(t, func(t *testing.T, dp string) {
		d := e.startDaemon(t, dp)
		// Warm up first, so pools and lazily started goroutines are in
		// the baseline.
		if err := churn(d, 64, 8); err != nil {
			t.Fatal(err)
		}
		base := d.idle(t)
		baseFDs := d.fdKinds(t)
		start := time.Now()
		if err := churn(d, n, parallel); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		// Go's runtime keeps the pipes of splice(2) (two fds each, one per
		// copy in flight) in a pool it empties only on GC: allow them,
		// but count sockets exactly.
		const fdSlack, goroutineSlack = 4, 8
		pipeFDs := 2 * 2 * parallel
		after := d.waitStats(t, 5*time.Second,
			fmt.Sprintf("nothing spliced, maps empty, open_fds <= %d, goroutines <= %d",
				base.OpenFDs+fdSlack+pipeFDs, base.Goroutines+goroutineSlack),
			func(s stats) bool {
				return s.Spliced == 0 && s.MapEntries <= 0 && s.Connections == 0 &&
					s.OpenFDs <= base.OpenFDs+fdSlack+pipeFDs && s.Goroutines <= base.Goroutines+goroutineSlack
			})
		afterFDs := d.fdKinds(t)
		t.Logf("%d connections in %v (%.0f/s)", n, took.Round(time.Millisecond), float64(n)/took.Seconds())
		t.Logf("baseline %+v, fds %v", base, baseFDs)
		t.Logf("after    %+v, fds %v", after, afterFDs)
		for kind, k := range afterFDs {
			if kind != "pipe" && k > baseFDs[kind]+1 {
				t.Errorf("%d %s fds open after churn, %d before", k, kind, baseFDs[kind])
			}
		}
		if got := after.SplicedTotal - base.SplicedTotal; got != uint64(n) {
			t.Errorf("spliced_total grew by %d, want %d", got, n)
		}
		if got := after.HandshakeErrorsTotal - base.HandshakeErrorsTotal; got != 0 {
			t.Errorf("handshake_errors_total grew by %d, want 0", got)
		}
	})
}

// churn opens n connections, at most parallel at a time; each sends a
// message, reads the echo and closes.
func churn(d *daemon, n, parallel int) error {
	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, parallel)
		mu      sync.Mutex
		first   error
		failed  int
		dialer  = d.dialer()
		message = []byte("churn")
	)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := func() error {
				ws, _, err := dialer.Dial("ws://"+listenAddr+"/churn", nil)
				if err != nil {
					return fmt.Errorf("dial: %w", err)
				}
				ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				if err := ws.WriteMessage(websocket.TextMessage, message); err != nil {
					ws.Close()
					return err
				}
				if _, got, err := ws.ReadMessage(); err != nil || !bytes.Equal(got, message) {
					ws.Close()
					return fmt.Errorf("echo %q, %v", got, err)
				}
				return closeWS(ws)
			}()
			if err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = fmt.Errorf("connection %d: %w", i, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return fmt.Errorf("%d of %d connections failed; first: %w", failed, n, first)
	}
	return nil
}
