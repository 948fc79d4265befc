// Command wsplice-chat is the chat room backend of wsplice's demo and of its
// browser test: the reference deployment of a WebSocket application on
// several backends behind the balancer.
//
// It serves one HTML page (username, message box, the conversation, and the
// name of the backend the page's WebSocket is on) and a WebSocket endpoint
// at /ws. Every message a client sends is published to Redis; every
// instance subscribes to the same channel and forwards what it receives to
// its own clients, so users on different backends talk to each other. Redis
// also keeps the last messages, which a client gets when it (re)connects.
//
// Plain HTTP: GET / is the page, GET /app.js its script, GET /healthz is
// "ok" while Redis answers (503 otherwise).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "wsplice-chat:", err)
		}
		os.Exit(2)
	}
}

// config is what the flags say.
type config struct {
	listen  string
	name    string
	redis   string
	channel string
	history int
	log     zerolog.Logger
}

func parseFlags(args []string, stdout, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("wsplice-chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wsplice-chat [flags]

wsplice-chat is a chat room backend: a web page and a WebSocket endpoint
(/ws) whose messages are shared with every other instance through Redis
pub/sub. Run several behind wsplice.

Flags:
`)
		fs.PrintDefaults()
	}
	var cfg config
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:9000", "address to listen on")
	fs.StringVar(&cfg.name, "name", "chat", "backend name, shown on the page and sent in X-Backend-Name")
	fs.StringVar(&cfg.redis, "redis", "127.0.0.1:6379", "Redis server host:port")
	fs.StringVar(&cfg.channel, "channel", "wsplice-chat", "Redis pub/sub channel, also the prefix of the keys used")
	fs.IntVar(&cfg.history, "history", 100, "messages kept in Redis and sent to a client when it connects")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if cfg.name == "" || cfg.channel == "" {
		return cfg, errors.New("--name and --channel must not be empty")
	}
	if _, _, err := net.SplitHostPort(cfg.redis); err != nil {
		return cfg, fmt.Errorf("--redis: %w", err)
	}
	if cfg.history < 0 {
		return cfg, fmt.Errorf("--history must not be negative, not %d", cfg.history)
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		return cfg, fmt.Errorf("parse --log-level: %w", err)
	}
	var out io.Writer = stdout
	switch *format {
	case "json":
	case "console":
		// No colours: the log usually goes to a file.
		out = zerolog.ConsoleWriter{Out: stdout, TimeFormat: time.RFC3339, NoColor: true}
	default:
		return cfg, fmt.Errorf("--log-format must be json or console, not %q", *format)
	}
	cfg.log = zerolog.New(out).Level(lvl).With().Timestamp().Str("backend", cfg.name).Logger()
	return cfg, nil
}

// run serves until SIGINT or SIGTERM, then shuts down and returns nil.
func run(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg)
}

// serve runs the chat backend until ctx ends.
func serve(ctx context.Context, cfg config) error {
	log := cfg.log
	rdb := redis.NewClient(&redis.Options{
		Addr:        cfg.redis,
		DialTimeout: 2 * time.Second,
		// A chat message is small; a slow Redis should fail a send, not
		// hold a client's reader for long.
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
	})
	defer rdb.Close()
	// Fail at start-up rather than serve a page whose messages go nowhere.
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := rdb.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("connect to redis at %s: %w", cfg.redis, err)
	}

	srv, err := newChatServer(ctx, cfg.name, cfg.channel, cfg.history, rdb, log)
	if err != nil {
		return err
	}
	defer srv.close()

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info().Str("listen", ln.Addr().String()).Str("redis", cfg.redis).Str("channel", cfg.channel).Msg("wsplice-chat started")

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Shutdown does not track hijacked connections: srv.close says
	// goodbye to the WebSocket clients so their pages reconnect at once.
	srv.close()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
