package backend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsplice/wsplice/tests/refused"
)

func TestRiseAndFall(t *testing.T) {
	p, err := NewPool([]Spec{{Addr: "a:1"}, {Addr: "b:1"}}, Options{Health: HealthConfig{Rise: 2, Fall: 3}})
	if err != nil {
		t.Fatal(err)
	}
	b := p.Backend("a:1")
	fail := errors.New("refused")
	p.ReportConnect(b, fail)
	p.ReportConnect(b, fail)
	p.ReportConnect(b, nil) // a success clears the failures
	p.ReportConnect(b, fail)
	p.ReportConnect(b, fail)
	if b.State() != StateUp {
		t.Fatal("down before fall failures in a row")
	}
	p.ReportConnect(b, fail)
	if b.State() != StateDown {
		t.Fatal("not down after fall failures in a row")
	}
	for range 20 {
		if pick(t, p, nil) == "a:1" {
			t.Fatal("down backend picked")
		}
	}
	p.observe(b, nil, "test")
	p.observe(b, fail, "test") // resets the rise count
	p.observe(b, nil, "test")
	if b.State() != StateDown {
		t.Fatal("up before rise successes in a row")
	}
	p.observe(b, nil, "test")
	if b.State() != StateUp {
		t.Fatal("not up after rise successes")
	}
	st := p.Status()[0]
	if st.State != "up" || !st.Health.Healthy || st.Health.ConsecutiveOK != 2 || st.Health.LastCheck == nil {
		t.Errorf("status %+v", st)
	}
	// All down: no backend.
	for _, x := range p.Backends() {
		for range 3 {
			p.ReportConnect(x, fail)
		}
	}
	if _, err := p.Acquire(nil, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("all down: %v", err)
	}
}

func TestHealthConfigValidate(t *testing.T) {
	var h HealthConfig
	if err := h.Validate(); err != nil || h.Interval != 5*time.Second || h.Timeout != 2*time.Second || h.Rise != 2 || h.Fall != 3 {
		t.Errorf("defaults: %+v, %v", h, err)
	}
	for _, c := range []string{"tcp", "http:/", "http:/healthz", "ws:/ws"} {
		h := HealthConfig{Check: c}
		if err := h.Validate(); err != nil {
			t.Errorf("%q: %v", c, err)
		}
	}
	for _, h := range []HealthConfig{{Check: "udp"}, {Check: "http:"}, {Check: "http:x"}, {Check: "ws"}, {Check: "http:/a b"},
		{Interval: -1}, {Timeout: -1}, {Rise: -1}, {Fall: 1001}} {
		if err := h.Validate(); err == nil {
			t.Errorf("%+v accepted", h)
		}
	}
}

func TestChecks(t *testing.T) {
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		_, _, _ = c.ReadMessage() // the close frame
		c.Close()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	// A server that answers 101 with a wrong Sec-WebSocket-Accept.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					l, err := br.ReadString('\n')
					if err != nil || l == "\r\n" {
						break
					}
				}
				fmt.Fprint(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n")
			}()
		}
	}()
	wrong := ln.Addr().String()

	deadAddr := refused.Addr(t)

	ctx := context.Background()
	for _, tc := range []struct {
		kind, path, addr string
		ok               bool
	}{
		{"tcp", "", addr, true},
		{"tcp", "", deadAddr, false},
		{"http", "/ok", addr, true},
		{"http", "/bad", addr, false},
		{"http", "/ok", deadAddr, false},
		{"ws", "/ws", addr, true},
		{"ws", "/ok", addr, false},
		{"ws", "/ws", wrong, false},
	} {
		err := Check(ctx, tc.kind, tc.path, tc.addr, time.Second)
		if (err == nil) != tc.ok {
			t.Errorf("%s:%s on %s: err = %v, want ok %v", tc.kind, tc.path, tc.addr, err, tc.ok)
		}
	}
}

func TestActiveCheckerTakesDownAndBringsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go acceptAndClose(ln)
	p, err := NewPool([]Spec{{Addr: addr}}, Options{Health: HealthConfig{Check: "tcp", Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, Rise: 2, Fall: 2}})
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	b := p.Backend(addr)
	waitState := func(want State) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for b.State() != want {
			if time.Now().After(deadline) {
				t.Fatalf("state %v, want %v", b.State(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitState(StateUp)
	ln.Close()
	waitState(StateDown)
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port taken again: %v", err)
	}
	defer ln2.Close()
	go acceptAndClose(ln2)
	waitState(StateUp)
}

func TestPassiveDownIsProbedBackUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptAndClose(ln)
	addr := ln.Addr().String()
	p, err := NewPool([]Spec{{Addr: addr}}, Options{Health: HealthConfig{Interval: 20 * time.Millisecond, Rise: 1, Fall: 1}})
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	b := p.Backend(addr)
	p.ReportConnect(b, errors.New("refused"))
	if b.State() != StateDown {
		t.Fatal("not down")
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.State() != StateUp {
		if time.Now().After(deadline) {
			t.Fatal("passively marked backend not probed back up")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// acceptAndClose accepts and closes every connection until ln closes: a
// backend that passes a TCP check.
func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}
