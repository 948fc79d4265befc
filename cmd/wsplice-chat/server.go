package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

//go:embed static
var static embed.FS

const (
	// maxFrame bounds what a client may send in one WebSocket message.
	maxFrame = 16 << 10
	maxUser  = 32 // runes
	maxText  = 2000
	// sendQueue is how many frames may wait for a slow client before it
	// is dropped (its page reconnects and catches up from the history).
	sendQueue = 256
	// pongWait is how long a client may stay silent; pings go out well
	// within it.
	pongWait     = 60 * time.Second
	pingInterval = 25 * time.Second
	writeWait    = 10 * time.Second
	// idTTL is how long a message id is remembered, so that a message a
	// page sends again after a reconnect is published once.
	idTTL = time.Hour
)

// validID is what a page uses as a message id: its own random id and a
// counter.
var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// publishScript publishes one message exactly once, atomically: it drops a
// message whose id was seen before (a page resends what it has not seen
// come back when it reconnects), gives the message the next sequence
// number, appends it to the history and publishes it. Being one script,
// sequence, history and publication order are the same.
//
// The sequence number is at least Redis's clock in microseconds, so that
// it keeps growing when Redis restarts without its data (or with an older
// snapshot of it): the pages, which order messages by it, then show the
// messages sent after the restart after those sent before it. Numbers stay
// below 2^53, exact in Lua, JSON and JavaScript alike.
//
// KEYS: id key, sequence key, history list. ARGV: message JSON (an object
// without "seq"), history length, id TTL in seconds, channel.
var publishScript = redis.NewScript(`
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
	return 0
end
local seq = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if seq < now then
	seq = now
	redis.call('SET', KEYS[2], string.format('%d', seq))
end
local msg = '{"seq":' .. string.format('%d', seq) .. ',' .. string.sub(ARGV[1], 2)
local keep = tonumber(ARGV[2])
if keep > 0 then
	redis.call('RPUSH', KEYS[3], msg)
	redis.call('LTRIM', KEYS[3], -keep, -1)
end
redis.call('PUBLISH', ARGV[4], msg)
return seq
`)

// chatMessage is a message as stored in Redis and shown on the page; the
// publish script adds "seq".
type chatMessage struct {
	ID      string `json:"id"`
	User    string `json:"user"`
	Text    string `json:"text"`
	Time    int64  `json:"time"` // Unix milliseconds, when a backend received it
	Backend string `json:"backend"`
}

// clientFrame is what a page sends: {"type":"message",...} or
// {"type":"ping"}.
type clientFrame struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	User string `json:"user"`
	Text string `json:"text"`
}

type chatServer struct {
	name    string
	channel string
	history int
	rdb     *redis.Client
	pubsub  *redis.PubSub
	log     zerolog.Logger

	upgrader websocket.Upgrader
	files    http.Handler

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool

	done chan struct{} // closed when the subscription loop ends
	// writers counts the running writeLoops: close waits for them, so
	// that every client's close frame is out before the process exits.
	writers sync.WaitGroup
}

type client struct {
	conn *websocket.Conn
	send chan []byte
	// gone is closed once, by drop, when the client is to be let go.
	gone     chan struct{}
	dropOnce sync.Once
	// closeCode is the close frame the writer sends on its way out.
	closeCode int
	closeText string
}

// newChatServer subscribes to channel and returns a server that forwards
// everything published there to its WebSocket clients.
func newChatServer(ctx context.Context, name, channel string, history int, rdb *redis.Client, log zerolog.Logger) (*chatServer, error) {
	ps := rdb.Subscribe(ctx, channel)
	subCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The first reply confirms the subscription: from here on nothing
	// published is missed.
	if _, err := ps.Receive(subCtx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribe to redis channel %q: %w", channel, err)
	}
	s := &chatServer{
		name:    name,
		channel: channel,
		history: history,
		rdb:     rdb,
		pubsub:  ps,
		log:     log,
		upgrader: websocket.Upgrader{
			ReadBufferSize:  4 << 10,
			WriteBufferSize: 4 << 10,
			// The default CheckOrigin: the page's origin must be the
			// host it was loaded from, which is the balancer's.
		},
		clients: make(map[*client]struct{}),
		done:    make(chan struct{}),
	}
	sub, err := staticFiles()
	if err != nil {
		ps.Close()
		return nil, err
	}
	s.files = http.FileServer(http.FS(sub))
	// What the history holds is what the clients that connect from now on
	// get from it: forward passes on what comes after.
	var last int64
	if items, err := s.historyItems(ctx); err == nil && len(items) > 0 {
		last = messageSeq(items[len(items)-1])
	}
	go s.forward(ps.ChannelWithSubscriptions(redis.WithChannelSize(1024)), last)
	return s, nil
}

// forward sends every message from Redis to every client of this instance,
// once each, in sequence order. go-redis resubscribes by itself when its
// connection to Redis breaks; what was published while this instance was
// not subscribed (a publish from another backend can come first, as soon as
// Redis is back) is taken from the history when the new subscription is
// confirmed.
func (s *chatServer) forward(ch <-chan any, last int64) {
	defer close(s.done)
	for m := range ch {
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				last = s.catchUp(last)
			}
		case *redis.Message:
			if seq := messageSeq(m.Payload); seq > last {
				last = seq
				s.broadcast(json.RawMessage(m.Payload))
			}
		}
	}
}

// catchUp forwards the messages of the history above sequence number last
// and returns the new last.
func (s *chatServer) catchUp(last int64) int64 {
	items, err := s.historyItems(context.Background())
	if err != nil {
		s.log.Warn().Err(err).Msg("resubscribed to redis: cannot catch up from the history")
		return last
	}
	n := 0
	for _, it := range items {
		if seq := messageSeq(it); seq > last {
			last = seq
			s.broadcast(json.RawMessage(it))
			n++
		}
	}
	s.log.Info().Int("caught_up", n).Msg("resubscribed to redis")
	return last
}

// broadcast queues one message for every client; a client whose queue is
// full is dropped (its page reconnects and catches up from the history).
func (s *chatServer) broadcast(msg json.RawMessage) {
	frame := messageFrame(msg)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		select {
		case c.send <- frame:
		default:
			s.log.Warn().Msg("client too slow: dropping it")
			s.dropLocked(c, websocket.CloseTryAgainLater, "too slow")
		}
	}
}

// messageSeq is the sequence number of a stored message, 0 if it has none.
func messageSeq(msg string) int64 {
	var m struct {
		Seq int64 `json:"seq"`
	}
	_ = json.Unmarshal([]byte(msg), &m)
	return m.Seq
}

// close says goodbye to every client and ends the subscription. It can be
// called more than once.
func (s *chatServer) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for c := range s.clients {
		s.dropLocked(c, websocket.CloseGoingAway, "server shutting down")
	}
	s.mu.Unlock()
	s.pubsub.Close()
	<-s.done
	// Each writer sends its close frame (bounded by its one-second write
	// deadline) and closes its connection; a client that never reads
	// cannot hold the shutdown up for longer.
	waited := make(chan struct{})
	go func() { s.writers.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(2 * time.Second):
	}
}

func (s *chatServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Backend-Name", s.name)
	switch r.URL.Path {
	case "/ws":
		s.serveWebSocket(w, r)
	case "/healthz":
		s.serveHealth(w, r)
	case "/", "/index.html", "/app.js":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// The page and its script change with the binary: no stale
		// copies across a restart.
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		s.files.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *chatServer) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		s.log.Warn().Err(err).Msg("health check: redis unreachable")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "redis: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *chatServer) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has answered the client already.
		s.log.Debug().Err(err).Msg("websocket upgrade refused")
		return
	}
	c := &client{conn: conn, send: make(chan []byte, sendQueue), gone: make(chan struct{})}
	log := s.log.With().Str("remote", r.RemoteAddr).Logger()
	if fwd := r.Header.Get("X-Forwarded-For"); fwd != "" {
		log = log.With().Str("forwarded_for", fwd).Logger()
	}

	// Registered before the history is read, so a message published in
	// between arrives twice rather than never; the page keeps one copy.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), time.Now().Add(time.Second))
		conn.Close()
		return
	}
	s.clients[c] = struct{}{}
	s.writers.Add(1) // under s.mu: before close can wait (it sets closed first)
	s.mu.Unlock()
	log.Info().Int("clients", s.clientCount()).Msg("client connected")

	hello, _ := json.Marshal(map[string]any{"type": "hello", "backend": s.name})
	s.enqueue(c, hello)
	if h, err := s.readHistory(r.Context()); err != nil {
		log.Warn().Err(err).Msg("read history")
	} else {
		s.enqueue(c, h)
	}

	go s.writeLoop(c, log)
	s.readLoop(c, log)
}

// readHistory returns the history frame: the last messages, oldest first.
func (s *chatServer) readHistory(ctx context.Context) ([]byte, error) {
	items, err := s.historyItems(ctx)
	if err != nil {
		return nil, err
	}
	msgs := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		msgs = append(msgs, json.RawMessage(it))
	}
	return json.Marshal(map[string]any{"type": "history", "messages": msgs})
}

// historyItems reads the stored messages, oldest first.
func (s *chatServer) historyItems(ctx context.Context) ([]string, error) {
	if s.history == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	items, err := s.rdb.LRange(ctx, s.historyKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("lrange %s: %w", s.historyKey(), err)
	}
	return items, nil
}

// readLoop handles what the page sends until the connection ends.
func (s *chatServer) readLoop(c *client, log zerolog.Logger) {
	defer func() {
		s.mu.Lock()
		delete(s.clients, c)
		s.dropLocked(c, websocket.CloseNormalClosure, "")
		s.mu.Unlock()
		log.Info().Int("clients", s.clientCount()).Msg("client disconnected")
	}()
	c.conn.SetReadLimit(maxFrame)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(pongWait))
	})
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) && log.Debug().Enabled() {
				log.Debug().Err(err).Msg("read")
			}
			return
		}
		c.conn.SetReadDeadline(time.Now().Add(pongWait))
		var f clientFrame
		if err := json.Unmarshal(data, &f); err != nil {
			s.reject(c, "", "not a JSON object")
			continue
		}
		switch f.Type {
		case "ping":
			s.enqueue(c, []byte(`{"type":"pong"}`))
		case "message":
			msg, err := s.validate(f)
			if err != nil {
				s.reject(c, f.ID, err.Error())
				continue
			}
			if err := s.publish(msg); err != nil {
				// The page resends what it has not seen come back,
				// after reconnecting, maybe to a backend that can
				// reach Redis.
				log.Error().Err(err).Msg("publish")
				s.mu.Lock()
				s.dropLocked(c, websocket.CloseInternalServerErr, "cannot reach redis")
				s.mu.Unlock()
				return
			}
		default:
			s.reject(c, "", fmt.Sprintf("unknown message type %q", f.Type))
		}
	}
}

func (s *chatServer) validate(f clientFrame) (chatMessage, error) {
	user := strings.TrimSpace(f.User)
	text := strings.TrimSpace(f.Text)
	switch {
	case !validID.MatchString(f.ID):
		return chatMessage{}, errors.New("id must be 1 to 64 letters, digits, - or _")
	case !utf8.ValidString(user) || !utf8.ValidString(text):
		return chatMessage{}, errors.New("user and text must be UTF-8")
	case user == "" || utf8.RuneCountInString(user) > maxUser:
		return chatMessage{}, fmt.Errorf("user must be 1 to %d characters", maxUser)
	case text == "" || utf8.RuneCountInString(text) > maxText:
		return chatMessage{}, fmt.Errorf("text must be 1 to %d characters", maxText)
	case strings.ContainsFunc(user, unicode.IsControl):
		return chatMessage{}, errors.New("user must not contain control characters")
	}
	return chatMessage{ID: f.ID, User: user, Text: text, Time: time.Now().UnixMilli(), Backend: s.name}, nil
}

// publish sends msg to every instance through Redis, once per id.
func (s *chatServer) publish(msg chatMessage) error {
	keys, args, err := s.publishArgs(msg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	seq, err := publishScript.Run(ctx, s.rdb, keys, args...).Int64()
	if err != nil {
		return fmt.Errorf("publish message %s: %w", msg.ID, err)
	}
	if s.log.Debug().Enabled() {
		s.log.Debug().Str("id", msg.ID).Int64("seq", seq).Bool("duplicate", seq == 0).Msg("message published")
	}
	return nil
}

// publishArgs are publishScript's keys and arguments for msg.
func (s *chatServer) publishArgs(msg chatMessage) (keys []string, args []any, err error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("encode message: %w", err)
	}
	keys = []string{s.channel + ":id:" + msg.ID, s.channel + ":seq", s.historyKey()}
	return keys, []any{string(body), s.history, int(idTTL / time.Second), s.channel}, nil
}

func (s *chatServer) historyKey() string { return s.channel + ":history" }

// reject tells the page what was wrong with what it sent; id names the
// message, so that the page stops sending it.
func (s *chatServer) reject(c *client, id, reason string) {
	f := map[string]string{"type": "error", "error": reason}
	if id != "" {
		f["id"] = id
	}
	b, _ := json.Marshal(f)
	s.enqueue(c, b)
}

func (s *chatServer) enqueue(c *client, frame []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case c.send <- frame:
	default:
		s.dropLocked(c, websocket.CloseTryAgainLater, "too slow")
	}
}

// dropLocked makes c's writer send a close frame and close the connection,
// which ends its reader too. s.mu is held.
func (s *chatServer) dropLocked(c *client, code int, text string) {
	c.dropOnce.Do(func() {
		delete(s.clients, c)
		c.closeCode, c.closeText = code, text
		close(c.gone)
	})
}

// writeLoop is the only writer of c.conn: frames, pings and the close.
func (s *chatServer) writeLoop(c *client, log zerolog.Logger) {
	defer s.writers.Done()
	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
	defer c.conn.Close()
	for {
		select {
		case frame := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
				log.Debug().Err(err).Msg("write")
				return
			}
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)); err != nil {
				log.Debug().Err(err).Msg("ping")
				return
			}
		case <-c.gone:
			c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(c.closeCode, c.closeText), time.Now().Add(time.Second))
			return
		}
	}
}

func (s *chatServer) clientCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// staticFiles is the page and its script.
func staticFiles() (fs.FS, error) {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("embedded files: %w", err)
	}
	return sub, nil
}

// messageFrame wraps one message from Redis for the page.
func messageFrame(msg json.RawMessage) []byte {
	b, _ := json.Marshal(map[string]any{"type": "message", "message": msg})
	return b
}
