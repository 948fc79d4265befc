// Command wsplice is a WebSocket load balancer: it accepts clients, runs
// the HTTP/1.1 Upgrade handshake with a backend and splices the two TCP
// streams, in the kernel (sockmap) when it can.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/loader"
	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/certstore"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/proxy"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = ""

func main() {
	os.Exit(exitCode(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

// usageError is a bad command line: exit code 2, as flag.ExitOnError does.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCode prints err, if any, and maps it to the process exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "wsplice: %v\n", err)
	var uerr usageError
	if errors.As(err, &uerr) {
		fmt.Fprintln(stderr, "Run 'wsplice --help' for usage.")
		return 2
	}
	return 1
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// options is the parsed command line.
type options struct {
	cfg       proxy.Config
	dataplane string
	logLevel  zerolog.Level
	logFormat string
	version   bool
}

func parseFlags(args []string, stdout io.Writer) (*options, bool, error) {
	o := &options{}
	fs := flag.NewFlagSet("wsplice", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var listen, backends, listenTLS, listenTCP, listenTCPTLS, certs, keys listFlag
	var level string
	fs.Var(&listen, "listen", "`address` to accept clients on; repeatable (default "+proxy.DefaultListen+" when no listener of any kind is given)")
	fs.Var(&listenTLS, "listen-tls", "`address` to accept HTTPS and WSS clients on; repeatable (needs --tls-cert and --tls-key)")
	fs.Var(&listenTCP, "listen-tcp", "`address` of an L4 listener: each connection is spliced to a backend, nothing parsed; repeatable")
	fs.Var(&listenTCPTLS, "listen-tcp-tls", "`address` of an L4 listener that terminates TLS and splices the plaintext to a backend; repeatable")
	fs.Var(&certs, "tls-cert", "PEM certificate chain `file`; repeatable, paired in order with --tls-key; chosen by SNI, the first is the default (reloaded on SIGHUP)")
	fs.Var(&keys, "tls-key", "PEM private key `file` of the --tls-cert at the same position")
	fs.DurationVar(&o.cfg.TLSHandshakeTimeout, "tls-handshake-timeout", proxy.DefaultTLSHandshakeTimeout, "time allowed for a TLS handshake")
	fs.StringVar(&o.cfg.KTLS, "ktls", proxy.KTLSAuto, "kernel TLS: auto (TLS 1.3 sessions go to the kernel where it has TLS) or off")
	fs.Var(&backends, "backend", "backend `host:port[,weight=N][,max-conns=N][,proxy-protocol=v2]`; repeatable")
	fs.StringVar(&o.cfg.Balance, "balance", backend.BalanceRoundRobin, "backend `policy`: round-robin (smooth weighted), least-conn, hash-source, hash-header:NAME or hash-cookie:NAME (hashes are consistent: weighted rendezvous)")
	fs.StringVar(&o.cfg.StickyCookie, "sticky-cookie", "", "cookie `name` that pins a client to a backend: set on responses, honoured on later requests and upgrades (default off)")
	fs.StringVar(&o.cfg.Health.Check, "health-check", "", "active health `check`: tcp, http:PATH (2xx/3xx) or ws:PATH (WebSocket handshake); default: passive only (connect failures)")
	fs.DurationVar(&o.cfg.Health.Interval, "health-interval", backend.DefaultHealthInterval, "time between health checks of a backend")
	fs.DurationVar(&o.cfg.Health.Timeout, "health-timeout", backend.DefaultHealthTimeout, "time allowed for one health check")
	fs.IntVar(&o.cfg.Health.Rise, "health-rise", backend.DefaultHealthRise, "passed checks in a row that bring a down backend up")
	fs.IntVar(&o.cfg.Health.Fall, "health-fall", backend.DefaultHealthFall, "failed checks or connects in a row that take a backend down")
	fs.StringVar(&o.dataplane, "dataplane", "auto", "data path: auto, sockmap or userspace")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or console")
	fs.DurationVar(&o.cfg.HeaderTimeout, "header-timeout", proxy.DefaultHeaderTimeout, "time allowed to send a request head, and keep-alive idle time")
	fs.IntVar(&o.cfg.MaxHeaderBytes, "max-header-bytes", proxy.DefaultMaxHeaderBytes, "largest request head accepted (larger get 431)")
	fs.StringVar(&o.cfg.Admin, "admin", "", "`address` of the admin HTTP server with /debug/stats and /backends (GET, POST, DELETE /backends/ADDR, POST /backends/ADDR/drain, PUT /backends/ADDR/weight) (default off)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: wsplice [flags]\n\nwsplice is a WebSocket load balancer: it runs the HTTP/1.1 Upgrade handshake\nwith a backend, then splices client and backend in the kernel (sockmap) or in\nuserspace. Plain HTTP requests are reverse-proxied.\n\nFlags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return nil, true, nil
		}
		return nil, false, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, false, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if o.version {
		return o, false, nil
	}
	switch o.dataplane {
	case "auto", "sockmap", "userspace":
	default:
		return nil, false, usageError{fmt.Errorf("invalid --dataplane %q: want auto, sockmap or userspace", o.dataplane)}
	}
	switch level {
	case "debug", "info", "warn", "error":
		o.logLevel, _ = zerolog.ParseLevel(level)
	default:
		return nil, false, usageError{fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", level)}
	}
	switch o.logFormat {
	case "json", "console":
	default:
		return nil, false, usageError{fmt.Errorf("invalid --log-format %q: want json or console", o.logFormat)}
	}
	if o.cfg.HeaderTimeout <= 0 {
		return nil, false, usageError{fmt.Errorf("invalid --header-timeout %v: must be positive", o.cfg.HeaderTimeout)}
	}
	o.cfg.Listen, o.cfg.Backends = listen, backends
	o.cfg.TLSListen, o.cfg.TCPListen, o.cfg.TCPTLSListen = listenTLS, listenTCP, listenTCPTLS
	if len(certs) != len(keys) {
		return nil, false, usageError{fmt.Errorf("%d --tls-cert but %d --tls-key: give them in pairs", len(certs), len(keys))}
	}
	for i := range certs {
		o.cfg.Certificates = append(o.cfg.Certificates, certstore.Pair{Cert: certs[i], Key: keys[i]})
	}
	if o.cfg.TLSHandshakeTimeout <= 0 {
		return nil, false, usageError{fmt.Errorf("invalid --tls-handshake-timeout %v: must be positive", o.cfg.TLSHandshakeTimeout)}
	}
	if o.cfg.Health.Interval <= 0 || o.cfg.Health.Timeout <= 0 || o.cfg.Health.Rise <= 0 || o.cfg.Health.Fall <= 0 {
		return nil, false, usageError{errors.New("--health-interval, --health-timeout, --health-rise and --health-fall must be positive")}
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, false, usageError{err}
	}
	return o, false, nil
}

func newLogger(o *options, stderr io.Writer) zerolog.Logger {
	w := stderr
	if o.logFormat == "console" {
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.RFC3339, NoColor: true}
	}
	return zerolog.New(w).Level(o.logLevel).With().Timestamp().Logger()
}

// run is the whole program: parse args, build the data plane, serve until
// SIGINT or SIGTERM (or ctx is done), then close the data plane.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, help, err := parseFlags(args, stdout)
	if err != nil || help {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, "wsplice", buildVersion())
		return nil
	}
	log := newLogger(o, stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	dp, err := newDataplane(o.dataplane, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := dp.Close(); err != nil {
			log.Error().Err(err).Msg("close data plane")
		}
	}()
	p, err := proxy.New(o.cfg, dp, log)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	// SIGHUP reloads the certificates; a bad file keeps the old ones.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := p.ReloadCertificates(); err != nil {
					log.Error().Err(err).Msg("certificate reload failed, keeping the certificates in use")
				} else {
					log.Info().Msg("certificates reloaded")
				}
			}
		}
	}()
	if err := p.Serve(ctx); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	log.Info().Msg("wsplice stopped")
	return nil
}

func newDataplane(mode string, log zerolog.Logger) (dataplane.Dataplane, error) {
	if mode == "userspace" {
		return dataplane.NewUserspace(log), nil
	}
	// Pairs the kernel path cannot take (a socket that left ESTABLISHED
	// before it could enter the map) are served in userspace.
	s, err := loader.New(log, loader.Options{Fallback: dataplane.NewUserspace(log)})
	if err == nil {
		log.Warn().Msg("sockmap data path: known issue: under sustained saturation (a peer that cannot keep up, so the verdict passes bytes to userspace) a few KiB can be reordered or duplicated on Linux 6.18; use --dataplane userspace for bulk transfers until it is fixed (README, Known issues)")
		return s, nil
	}
	if mode == "sockmap" {
		return nil, fmt.Errorf("sockmap data path: %w", err)
	}
	log.Warn().Err(err).Msg("sockmap data path unavailable, using userspace")
	return dataplane.NewUserspace(log), nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
