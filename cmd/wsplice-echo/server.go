package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// maxMessage is the largest message echoed.
const maxMessage = 64 << 20

// patternByte is byte off of the stream sent by ?push= and ?send=: tests
// recompute it to check every byte.
func patternByte(off int64) byte { return byte(off % 251) }

func fillPattern(b []byte, off int64) {
	for i := range b {
		b[i] = patternByte(off + int64(i))
	}
}

type echoServer struct {
	name     string
	log      zerolog.Logger
	upgrader websocket.Upgrader

	mu     sync.Mutex
	pushes map[string]*pushProgress
}

// pushProgress records how far a ?push= stream got: bytes the socket
// accepted, so a stalled reader shows up as a stalled count.
type pushProgress struct {
	total int64
	sent  atomic.Int64
	done  atomic.Bool
}

func newEchoServer(name string, log zerolog.Logger) *echoServer {
	return &echoServer{
		name: name,
		log:  log,
		upgrader: websocket.Upgrader{
			ReadBufferSize:  32 << 10,
			WriteBufferSize: 32 << 10,
			// Tests and demos connect from anywhere.
			CheckOrigin: func(*http.Request) bool { return true },
		},
		pushes: make(map[string]*pushProgress),
	}
}

func (s *echoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if websocket.IsWebSocketUpgrade(r) {
		s.serveWebSocket(w, r)
		return
	}
	w.Header().Set("X-Backend-Name", s.name)
	switch r.URL.Path {
	case "/healthz":
		io.WriteString(w, "ok")
	case "/headers":
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(h)
	case "/push-progress":
		s.servePushProgress(w, r)
	default:
		fmt.Fprintf(w, "%s\n", s.name)
	}
}

func (s *echoServer) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	log := s.log.With().Str("remote", r.RemoteAddr).Str("uri", r.RequestURI).Logger()
	if q.Get("badaccept") == "1" {
		s.serveBadAccept(w, r)
		return
	}
	hw := &hijackWriter{ResponseWriter: w, cork: q.Get("hello") == "1"}
	hdr := http.Header{"X-Backend-Name": {s.name}}
	if protos := websocket.Subprotocols(r); len(protos) > 0 {
		hdr.Set("Sec-WebSocket-Protocol", protos[0])
	}
	ws, err := s.upgrader.Upgrade(hw, r, hdr)
	if err != nil {
		log.Debug().Err(err).Msg("upgrade failed")
		return
	}
	defer ws.Close()
	conn := hw.conn
	log.Debug().Msg("upgraded")
	if q.Get("linger") == "0" {
		// Closing with SO_LINGER 0 sends RST, also when the process is
		// killed: tests use it to check that a reset reaches the client.
		conn.SetLinger(0)
	}
	if hw.cork {
		if err := ws.WriteMessage(websocket.TextMessage, []byte("hello from "+s.name)); err != nil {
			log.Debug().Err(err).Msg("hello")
			return
		}
		if err := conn.uncork(); err != nil {
			log.Debug().Err(err).Msg("write 101 and hello")
			return
		}
	}
	switch {
	case q.Get("raw") == "1" && q.Has("send"):
		err = s.sendRaw(conn, q.Get("send"))
	case q.Get("raw") == "1":
		var n int64
		n, err = echoRaw(conn)
		// Info, not debug: when a client gets less back than it sent,
		// this says on which side of the proxy the bytes went missing.
		log.Info().Err(err).Int64("bytes", n).Msg("raw echo done")
	case q.Has("push"):
		err = s.push(ws, q.Get("push"), q.Get("id"))
	case q.Has("tick"):
		err = tick(ws, q.Get("tick"))
	default:
		err = echo(ws)
	}
	log.Debug().Err(err).Msg("done")
}

// tick sends "tick N" every interval and reads nothing: traffic in one
// direction only, for idle-timeout tests. It ends when a write fails.
func tick(ws *websocket.Conn, interval string) error {
	d, err := time.ParseDuration(interval)
	if err != nil || d <= 0 {
		return fmt.Errorf("parse tick %q: %w", interval, err)
	}
	t := time.NewTicker(d)
	defer t.Stop()
	for i := 0; ; i++ {
		<-t.C
		if err := ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("tick %d", i))); err != nil {
			return fmt.Errorf("tick: %w", err)
		}
	}
}

// echo sends every message back unchanged, streaming so that a 64 MiB
// message is never held whole.
func echo(ws *websocket.Conn) error {
	ws.SetReadLimit(maxMessage)
	for {
		typ, r, err := ws.NextReader()
		if err != nil {
			return err
		}
		w, err := ws.NextWriter(typ)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, r); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
}

// echoRaw treats the connection as a byte stream after the 101: it echoes
// every byte and half-closes once the client has. It returns the bytes
// echoed.
func echoRaw(c *handshakeConn) (int64, error) {
	// Copy from c.r, not c: c embeds *net.TCPConn, so io.Copy would see a
	// syscall.Conn and splice(2) straight from the socket, skipping the
	// bytes buffered before the hijack. c.r hands those out first.
	n, err := io.Copy(c.TCPConn, c.r)
	if err != nil {
		return n, fmt.Errorf("echo raw: %w", err)
	}
	return n, c.CloseWrite()
}

// sendRaw writes n bytes of the pattern after the 101 and closes.
func (s *echoServer) sendRaw(c *handshakeConn, n string) error {
	total, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return fmt.Errorf("parse send: %w", err)
	}
	buf := make([]byte, 256<<10)
	for off := int64(0); off < total; {
		b := buf[:min(int64(len(buf)), total-off)]
		fillPattern(b, off)
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("send raw: %w", err)
		}
		off += int64(len(b))
	}
	return c.Close()
}

// push streams n bytes of the pattern as 64 KiB binary messages, as fast as
// the socket takes them, then waits for the client to close.
func (s *echoServer) push(ws *websocket.Conn, n, id string) error {
	total, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return fmt.Errorf("parse push: %w", err)
	}
	p := &pushProgress{total: total}
	s.mu.Lock()
	s.pushes[id] = p
	s.mu.Unlock()

	buf := make([]byte, 64<<10)
	for off := int64(0); off < total; {
		b := buf[:min(int64(len(buf)), total-off)]
		fillPattern(b, off)
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return fmt.Errorf("push: %w", err)
		}
		off += int64(len(b))
		p.sent.Store(off)
	}
	p.done.Store(true)
	for {
		if _, _, err := ws.NextReader(); err != nil {
			return err
		}
	}
}

func (s *echoServer) servePushProgress(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	s.mu.Lock()
	p, ok := s.pushes[id]
	s.mu.Unlock()
	if !ok {
		http.Error(w, "no push with id "+strconv.Quote(id), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		ID    string `json:"id"`
		Total int64  `json:"total"`
		Sent  int64  `json:"sent"`
		Done  bool   `json:"done"`
	}{id, p.total, p.sent.Load(), p.done.Load()})
}

// serveBadAccept answers the upgrade with a 101 whose Sec-WebSocket-Accept
// is wrong, as a broken backend would, and holds the connection open.
func (s *echoServer) serveBadAccept(w http.ResponseWriter, r *http.Request) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Debug().Err(err).Msg("hijack")
		return
	}
	defer c.Close()
	fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\nX-Backend-Name: %s\r\n\r\n", s.name)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c)
}
