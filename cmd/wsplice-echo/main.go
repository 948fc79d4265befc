// Command wsplice-echo is the WebSocket echo backend wsplice ships for demos
// and for its end-to-end tests. It answers with its own name so a test can
// tell which backend served a connection.
//
// Any path upgrades to WebSocket and echoes every message unchanged. Query
// parameters on the WebSocket URL select test modes:
//
//	?hello=1           send "hello from NAME" in the same write as the 101
//	?push=BYTES&id=ID  stream BYTES of a known pattern as binary messages;
//	                   progress is readable at GET /push-progress?id=ID
//	?raw=1             after the 101, echo raw bytes and half-close on EOF
//	?raw=1&send=BYTES  after the 101, send BYTES of the pattern, then close
//	?linger=0          close with RST (SO_LINGER 0) when the process dies
//	?badaccept=1       answer 101 with a wrong Sec-WebSocket-Accept
//
// Plain HTTP: GET /healthz is "ok", GET /headers is the request headers as
// JSON, anything else is "NAME\n".
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

	"github.com/rs/zerolog"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "wsplice-echo:", err)
		}
		os.Exit(2)
	}
}

// run serves until SIGINT or SIGTERM, then shuts down and returns nil.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("wsplice-echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "address to listen on")
	name := fs.String("name", "echo", "backend name, sent in X-Backend-Name and plain-HTTP bodies")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("parse --log-level: %w", err)
	}
	var out io.Writer = stdout
	switch *format {
	case "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: stdout, TimeFormat: time.RFC3339}
	default:
		return fmt.Errorf("--log-format must be json or console, not %q", *format)
	}
	log := zerolog.New(out).Level(lvl).With().Timestamp().Str("backend", *name).Logger()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           newEchoServer(*name, log),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info().Str("listen", ln.Addr().String()).Msg("wsplice-echo started")

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	// Hijacked WebSocket connections are not tracked by Shutdown; they end
	// with the process.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
