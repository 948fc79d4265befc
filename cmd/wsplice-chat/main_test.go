package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/tests/refused"
)

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-help"}, &out, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -help: %v, want flag.ErrHelp", err)
	}
	for _, f := range []string{"-listen", "-name", "-redis", "-channel"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help does not list %s:\n%s", f, out.String())
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--redis", "nohostport"},
		{"--name", ""},
		{"--history", "-1"},
		{"--log-format", "xml"},
		{"extra"},
	} {
		if err := run(args, io.Discard, io.Discard); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
}

// TestRedisUnreachable: without Redis the backend refuses to start, saying
// why, instead of serving a page whose messages go nowhere.
func TestRedisUnreachable(t *testing.T) {
	addr := refused.Addr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := parseFlags([]string{"--listen", "127.0.0.1:0", "--redis", addr}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	err = serve(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "connect to redis at "+addr) {
		t.Fatalf("serve without redis: %v, want a connect to redis error", err)
	}
}

// TestTwoBackends: two instances on one Redis server; a message sent to
// one reaches the clients of both, once, in order, and a client that
// connects later gets it from the history.
func TestTwoBackends(t *testing.T) {
	addr := startRedis(t).addr
	b1 := newTestBackend(t, "chat-1", addr)
	b2 := newTestBackend(t, "chat-2", addr)

	alice := dial(t, b1)
	bob := dial(t, b2)
	if got := alice.hello(t); got != "chat-1" {
		t.Errorf("alice's hello names %q, want chat-1", got)
	}
	if got := bob.hello(t); got != "chat-2" {
		t.Errorf("bob's hello names %q, want chat-2", got)
	}
	alice.history(t, 0)
	bob.history(t, 0)

	alice.send(t, map[string]string{"type": "message", "id": "a-1", "user": " alice ", "text": "hi bob"})
	bob.send(t, map[string]string{"type": "message", "id": "b-1", "user": "bob", "text": "hi alice"})
	// Sent again, as a page does after a reconnect: published once.
	alice.send(t, map[string]string{"type": "message", "id": "a-1", "user": "alice", "text": "hi bob"})
	alice.send(t, map[string]string{"type": "message", "id": "a-2", "user": "alice", "text": "how are you?"})

	var seqs [2][]int64
	var order [2]string
	for i, c := range []*wsClient{alice, bob} {
		var ids []string
		for range 3 {
			m := c.message(t)
			ids = append(ids, m.ID)
			seqs[i] = append(seqs[i], m.Seq)
			if m.ID == "a-1" && (m.User != "alice" || m.Text != "hi bob" || m.Backend != "chat-1" || m.Time == 0) {
				t.Errorf("a-1 arrived as %+v", m)
			}
		}
		// a-1 before a-2: one client's messages keep their order; bob's
		// b-1 may land anywhere between or around them (two clients on
		// two backends), but once.
		order[i] = strings.Join(ids, ",")
		switch order[i] {
		case "a-1,b-1,a-2", "b-1,a-1,a-2", "a-1,a-2,b-1":
		default:
			t.Errorf("client %d got %v, want a-1 before a-2 and b-1 once each", i, ids)
		}
	}
	if order[0] != order[1] {
		t.Errorf("the two clients saw %s and %s, want one order", order[0], order[1])
	}
	if fmt.Sprint(seqs[0]) != fmt.Sprint(seqs[1]) {
		t.Errorf("the two backends' clients saw sequences %v and %v, want the same", seqs[0], seqs[1])
	}
	alice.expectNothing(t, 300*time.Millisecond)

	carol := dial(t, b2)
	carol.hello(t)
	hist := carol.history(t, 3)
	if ids := hist[0].ID + "," + hist[1].ID + "," + hist[2].ID; hist[0].Seq >= hist[1].Seq || hist[1].Seq >= hist[2].Seq || ids != order[0] {
		t.Errorf("history %+v, want 3 messages in sequence order, as the clients saw them (%s)", hist, order[0])
	}

	carol.send(t, map[string]string{"type": "message", "id": "bad id!", "user": "carol", "text": "x"})
	carol.send(t, map[string]string{"type": "message", "id": "c-1", "user": "", "text": "x"})
	carol.send(t, map[string]string{"type": "message", "id": "c-2", "user": "carol", "text": strings.Repeat("x", maxText+1)})
	carol.send(t, map[string]string{"type": "nope"})
	for _, id := range []string{"bad id!", "c-1", "c-2", ""} {
		if f := carol.frame(t); f.Type != "error" || f.Error == "" || f.ID != id {
			t.Errorf("invalid message answered with %+v, want an error frame for id %q", f, id)
		}
	}
	carol.send(t, map[string]string{"type": "ping"})
	if f := carol.frame(t); f.Type != "pong" {
		t.Errorf("ping answered with %+v, want pong", f)
	}
}

// TestRedisRestart: Redis restarts and loses everything. The messages sent
// after it are numbered after the messages sent before it, so that the
// pages, which order messages by number, show them last.
func TestRedisRestart(t *testing.T) {
	r := startRedis(t)
	b1 := newTestBackend(t, "chat-1", r.addr)
	b2 := newTestBackend(t, "chat-2", r.addr)
	alice, bob := dial(t, b1), dial(t, b2)
	for _, c := range []*wsClient{alice, bob} {
		c.hello(t)
		c.history(t, 0)
	}
	alice.send(t, map[string]string{"type": "message", "id": "before", "user": "alice", "text": "1"})
	var before int64
	for _, c := range []*wsClient{alice, bob} {
		before = c.message(t).Seq
	}

	r.restart(t)
	const n = 3
	for i := range n {
		bob.send(t, map[string]string{"type": "message", "id": fmt.Sprintf("after-%d", i), "user": "bob", "text": "2"})
	}
	for name, c := range map[string]*wsClient{"alice": alice, "bob": bob} {
		last := before
		for i := range n {
			m := c.message(t)
			if want := fmt.Sprintf("after-%d", i); m.ID != want || m.Seq <= last {
				t.Fatalf("%s: message %d after the restart is %s seq %d, want %s numbered above %d", name, i, m.ID, m.Seq, want, last)
			}
			last = m.Seq
		}
		c.expectNothing(t, 300*time.Millisecond)
	}
}

// TestResubscribeCatchesUp: a message published while a backend's
// subscription is broken (Redis restarted, and another backend published
// before this one subscribed again) still reaches its clients, once.
func TestResubscribeCatchesUp(t *testing.T) {
	r := startRedis(t)
	b1 := newTestBackend(t, "chat-1", r.addr)
	alice := dial(t, b1)
	alice.hello(t)
	alice.history(t, 0)
	alice.send(t, map[string]string{"type": "message", "id": "first", "user": "alice", "text": "1"})
	if m := alice.message(t); m.ID != "first" {
		t.Fatalf("got %s, want first", m.ID)
	}

	// In one pipeline, so that Redis runs both before the backend can
	// subscribe again: cut every subscriber, then publish as another
	// backend does.
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	other := &chatServer{channel: "test-chat", history: 10}
	ctx := context.Background()
	pipe := rdb.Pipeline()
	kill := pipe.ClientKillByFilter(ctx, "TYPE", "pubsub")
	for _, id := range []string{"gap-1", "gap-2"} {
		keys, args, err := other.publishArgs(chatMessage{ID: id, User: "bob", Text: "2", Backend: "chat-2"})
		if err != nil {
			t.Fatal(err)
		}
		publishScript.Eval(ctx, pipe, keys, args...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("kill subscribers and publish: %v", err)
	}
	if kill.Val() < 1 {
		t.Fatalf("killed %d subscribers, want the backend's", kill.Val())
	}
	for _, want := range []string{"gap-1", "gap-2"} {
		if m := alice.message(t); m.ID != want {
			t.Fatalf("got %s, want %s", m.ID, want)
		}
	}
	// And the subscription works again, without repeats.
	alice.send(t, map[string]string{"type": "message", "id": "last", "user": "alice", "text": "3"})
	if m := alice.message(t); m.ID != "last" {
		t.Fatalf("got %s, want last", m.ID)
	}
	alice.expectNothing(t, 300*time.Millisecond)
}

// TestHealth: /healthz is 200 while Redis answers and 503 once it is gone.
func TestHealth(t *testing.T) {
	addr := startRedis(t).addr
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	b := newTestBackend(t, "chat-1", addr)
	if code, body := get(t, b.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz with redis: %d %q, want 200 ok", code, body)
	}
	if code, body := get(t, b.URL+"/"); code != 200 || !strings.Contains(body, "Set as username") {
		t.Errorf("GET /: %d, want 200 and the page", code)
	}
	if code, _ := get(t, b.URL+"/app.js"); code != 200 {
		t.Errorf("GET /app.js: %d, want 200", code)
	}
	rdb.Shutdown(context.Background())
	if code, body := get(t, b.URL+"/healthz"); code != 503 || !strings.HasPrefix(body, "redis: ") {
		t.Fatalf("healthz without redis: %d %q, want 503 redis: ...", code, body)
	}
}

// testRedis is a real redis-server on a loopback port, without persistence.
type testRedis struct {
	addr, bin, dir string
	cmd            *exec.Cmd
}

// startRedis starts a real redis-server on a free loopback port, without
// persistence, and stops it when t ends.
func startRedis(t *testing.T) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server is not installed: apt-get install redis-server (scripts/provision.sh does)"
		if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" {
			t.Fatalf("%s (WSPLICE_REQUIRE_PRIV=1, so this is a failure, not a skip)", msg)
		}
		t.Skip(msg)
	}
	r := &testRedis{addr: freeAddr(t), bin: bin, dir: t.TempDir()}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

func (r *testRedis) start(t *testing.T) {
	t.Helper()
	port := strings.TrimPrefix(r.addr, "127.0.0.1:")
	r.cmd = exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			t.Fatalf("redis-server on %s did not answer within 10 s:\n%s", r.addr, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *testRedis) stop() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

// restart stops Redis, losing everything it held, and starts it again on
// the same port; it returns once Redis answers.
func (r *testRedis) restart(t *testing.T) {
	t.Helper()
	r.stop()
	r.start(t)
}

func newTestBackend(t *testing.T, name, redisAddr string) *httptest.Server {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := newChatServer(ctx, name, "test-chat", 10, rdb, zerolog.Nop())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		s.close()
		srv.Close()
		cancel()
		rdb.Close()
	})
	return srv
}

// freeAddr returns a loopback address free for a server to listen on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type wsClient struct{ conn *websocket.Conn }

type frame struct {
	Type     string        `json:"type"`
	ID       string        `json:"id"`
	Backend  string        `json:"backend"`
	Error    string        `json:"error"`
	Message  wireMessage   `json:"message"`
	Messages []wireMessage `json:"messages"`
}

type wireMessage struct {
	chatMessage
	Seq int64 `json:"seq"`
}

func dial(t *testing.T, srv *httptest.Server) *wsClient {
	t.Helper()
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	conn, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { conn.Close() })
	return &wsClient{conn: conn}
}

func (c *wsClient) send(t *testing.T, v any) {
	t.Helper()
	if err := c.conn.WriteJSON(v); err != nil {
		t.Fatal(err)
	}
}

func (c *wsClient) frame(t *testing.T) frame {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var f frame
	if err := c.conn.ReadJSON(&f); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	return f
}

func (c *wsClient) hello(t *testing.T) string {
	t.Helper()
	f := c.frame(t)
	if f.Type != "hello" {
		t.Fatalf("first frame %+v, want hello", f)
	}
	return f.Backend
}

func (c *wsClient) history(t *testing.T, want int) []wireMessage {
	t.Helper()
	f := c.frame(t)
	if f.Type != "history" || len(f.Messages) != want {
		t.Fatalf("second frame %+v, want a history of %d messages", f, want)
	}
	return f.Messages
}

func (c *wsClient) message(t *testing.T) wireMessage {
	t.Helper()
	f := c.frame(t)
	if f.Type != "message" {
		t.Fatalf("frame %+v, want a message", f)
	}
	return f.Message
}

func (c *wsClient) expectNothing(t *testing.T, d time.Duration) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	_, b, err := c.conn.ReadMessage()
	var ne net.Error
	if err == nil {
		t.Fatalf("unexpected frame %s", b)
	}
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read: %v, want a timeout", err)
	}
}

// TestShutdownSaysGoodbye: close returns only once every client's close
// frame (1001 "server shutting down") is out, so the process can exit
// right after it: each client is closed here as the exit would, and each
// must have its 1001, not an abrupt end (1006, "connection lost").
func TestShutdownSaysGoodbye(t *testing.T) {
	r := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	s, err := newChatServer(context.Background(), "a", "test-chat", 10, rdb, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()
	var clients []*wsClient
	for range 8 {
		c := dial(t, srv)
		c.hello(t)
		c.history(t, 0)
		clients = append(clients, c)
	}
	s.mu.Lock()
	var conns []*websocket.Conn
	for c := range s.clients {
		conns = append(conns, c.conn)
	}
	s.mu.Unlock()
	s.close()
	for _, c := range conns {
		c.NetConn().Close() // what the process's exit does
	}
	for i, c := range clients {
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.conn.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Errorf("client %d: %v, want close 1001", i, err)
		}
	}
}
