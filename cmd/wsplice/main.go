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
	"github.com/wsplice/wsplice/userspace/flagfile"
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

// backendFlag is the repeatable --backend: each value is checked as it is
// set, so a bad one in a --config file is reported with its line.
type backendFlag struct{ listFlag }

func (b *backendFlag) Set(v string) error {
	if _, err := backend.ParseSpec(v); err != nil {
		return err
	}
	return b.listFlag.Set(v)
}

// defaultAdmin is where the admin server listens unless --admin says.
const defaultAdmin = "127.0.0.1:9090"

// adminFlag is --admin; set tells an explicit value from the default.
type adminFlag struct {
	value string
	set   bool
}

func (a *adminFlag) String() string { return a.value }
func (a *adminFlag) Set(v string) error {
	a.value, a.set = v, true
	return nil
}

// options is the parsed command line.
type options struct {
	cfg       proxy.Config
	dataplane string
	logLevel  zerolog.Level
	logFormat string
	version   bool
	// config is the --config file ("" = none).
	config string
}

// flagSet declares every flag into o and the raw values it fills.
type rawFlags struct {
	listen, listenTLS, listenTCP, listenTCPTLS, certs, keys listFlag
	backends                                                backendFlag
	level                                                   string
	keepAlive, hsLoop                                       bool
	admin                                                   adminFlag
}

func newFlagSet(o *options, r *rawFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("wsplice", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.config, "config", "", "`file` of flags, one per line (\"listen :8080\" or \"--listen=:8080\", # comments), read first: the command line adds to its lists and overrides the rest; re-read on SIGHUP")
	fs.Var(&r.listen, "listen", "`address` to accept clients on; repeatable (default "+proxy.DefaultListen+" when no listener of any kind is given)")
	fs.Var(&r.listenTLS, "listen-tls", "`address` to accept HTTPS and WSS clients on; repeatable (needs --tls-cert and --tls-key)")
	fs.Var(&r.listenTCP, "listen-tcp", "`address` of an L4 listener: each connection is spliced to a backend, nothing parsed; repeatable")
	fs.Var(&r.listenTCPTLS, "listen-tcp-tls", "`address` of an L4 listener that terminates TLS and splices the plaintext to a backend; repeatable")
	fs.Var(&r.certs, "tls-cert", "PEM certificate chain `file`; repeatable, paired in order with --tls-key; chosen by SNI, the first is the default (reloaded on SIGHUP)")
	fs.Var(&r.keys, "tls-key", "PEM private key `file` of the --tls-cert at the same position")
	fs.DurationVar(&o.cfg.TLSHandshakeTimeout, "tls-handshake-timeout", proxy.DefaultTLSHandshakeTimeout, "time allowed for a TLS handshake")
	fs.StringVar(&o.cfg.KTLS, "ktls", proxy.KTLSAuto, "kernel TLS: auto (TLS 1.3 sessions go to the kernel where it has TLS) or off")
	fs.Var(&r.backends, "backend", "backend `host:port[,weight=N][,max-conns=N][,proxy-protocol=v2]`; repeatable")
	fs.StringVar(&o.cfg.Balance, "balance", backend.BalanceRoundRobin, "backend `policy`: round-robin (smooth weighted), least-conn, hash-source, hash-header:NAME or hash-cookie:NAME (hashes are consistent: weighted rendezvous)")
	fs.StringVar(&o.cfg.StickyCookie, "sticky-cookie", "", "cookie `name` that pins a client to a backend: set on responses, honoured on later requests and upgrades (default off)")
	fs.StringVar(&o.cfg.Health.Check, "health-check", "", "active health `check`: tcp, http:PATH (2xx/3xx) or ws:PATH (WebSocket handshake); default: passive only (connect failures)")
	fs.DurationVar(&o.cfg.Health.Interval, "health-interval", backend.DefaultHealthInterval, "time between health checks of a backend")
	fs.DurationVar(&o.cfg.Health.Timeout, "health-timeout", backend.DefaultHealthTimeout, "time allowed for one health check")
	fs.IntVar(&o.cfg.Health.Rise, "health-rise", backend.DefaultHealthRise, "passed checks in a row that bring a down backend up")
	fs.IntVar(&o.cfg.Health.Fall, "health-fall", backend.DefaultHealthFall, "failed checks or connects in a row that take a backend down")
	fs.StringVar(&o.dataplane, "dataplane", "auto", "data path: auto, sockmap or userspace")
	fs.StringVar(&r.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or console")
	fs.DurationVar(&o.cfg.HeaderTimeout, "header-timeout", proxy.DefaultHeaderTimeout, "time allowed to send a request head, keep-alive idle time, and the longest a request body may go without a byte")
	fs.DurationVar(&o.cfg.DialTimeout, "connect-timeout", proxy.DefaultDialTimeout, "time allowed to connect to a backend (then the next backend is tried, or 502)")
	fs.DurationVar(&o.cfg.ResponseTimeout, "backend-timeout", proxy.DefaultResponseTimeout, "time a backend has to answer a WebSocket handshake, or a plain request once it is sent (then 504), and the longest an answer's body may go without a byte (then the relay is cut off)")
	fs.IntVar(&o.cfg.MaxHeaderBytes, "max-header-bytes", proxy.DefaultMaxHeaderBytes, "largest request head accepted (larger get 431)")
	r.admin.value = defaultAdmin
	fs.Var(&r.admin, "admin", "`address` of the admin HTTP server with /metrics, /debug/stats and /backends (GET, POST, DELETE /backends/ADDR, POST /backends/ADDR/drain, PUT /backends/ADDR/weight): host:port, unix:PATH or an absolute path for a unix socket, or off (if the default is taken, a warning and no admin server)")
	fs.IntVar(&o.cfg.MaxConns, "max-conns", 0, "most live client connections (0: no limit); past it HTTP clients get 503, L4 connections are closed")
	fs.IntVar(&o.cfg.MaxConnRate, "max-conn-rate", 0, "most new client connections per second, burst of one second's worth (0: no limit); past it 503")
	fs.IntVar(&o.cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "most live client connections from one source address (0: no limit)")
	fs.IntVar(&o.cfg.MaxConnRatePerIP, "max-conn-rate-per-ip", 0, "most new client connections per second from one source address (0: no limit)")
	fs.BoolVar(&r.keepAlive, "tcp-keepalive", true, "TCP keepalive on client and backend sockets (idle 30s, interval 10s, 3 probes); --tcp-keepalive=false turns it off")
	fs.BoolVar(&r.hsLoop, "handshake-loop", true, "serve WebSocket handshakes on --listen in an event loop on bare sockets (when the data path takes them); --handshake-loop=false gives every connection a goroutine on Go's net package")
	fs.DurationVar(&o.cfg.IdleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close a WebSocket (or L4 connection) with no byte in either direction for this long, on every data path; 1s to 1h")
	fs.DurationVar(&o.cfg.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long established connections may run on after the listeners close (0: close them at once)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	// The flag package calls Usage on every parse error too; the usage is
	// printed for --help only (parseArgs), so that a one-line mistake is
	// not buried under the flag list.
	fs.Usage = func() {}
	return fs
}

// printUsage prints --help's text.
func printUsage(fs *flag.FlagSet, stdout io.Writer) {
	fmt.Fprintf(stdout, "Usage: wsplice [flags]\n\nwsplice is a WebSocket load balancer: it runs the HTTP/1.1 Upgrade handshake\nwith a backend, then splices client and backend in the kernel (sockmap) or in\nuserspace. Plain HTTP requests are reverse-proxied.\n\nSIGHUP re-reads --config (backends, limits, timeouts, log level change live;\nlisteners need a restart) and the certificates. The admin server serves\nPrometheus metrics at GET /metrics.\n\nFlags:\n")
	fs.SetOutput(stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// parseFlags parses args, after the --config file's lines if args name
// one: the file is read first, so a flag on the command line overrides a
// single-valued flag of the file and adds to a repeatable one.
func parseFlags(args []string, stdout io.Writer) (*options, bool, error) {
	// First pass: the command line alone, for --help, --version and
	// --config.
	o, r := &options{}, &rawFlags{}
	fs := newFlagSet(o, r)
	if help, err := parseArgs(fs, args, stdout); help || err != nil {
		return nil, help, err
	}
	if fs.NArg() > 0 {
		return nil, false, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if o.version {
		return o, false, nil
	}
	if o.config != "" {
		path := o.config
		lines, err := flagfile.Read(path)
		if err != nil {
			return nil, false, usageError{err}
		}
		o, r = &options{}, &rawFlags{}
		fs = newFlagSet(o, r)
		for _, l := range lines {
			if l.Name == "config" || l.Name == "help" || l.Name == "h" || l.Name == "version" {
				return nil, false, usageError{&flagfile.LineError{Path: path, N: l.N, Err: fmt.Errorf("--%s cannot be set in a config file", l.Name)}}
			}
			if err := fs.Parse([]string{l.Arg()}); err != nil {
				return nil, false, usageError{&flagfile.LineError{Path: path, N: l.N, Err: err}}
			}
		}
		if help, err := parseArgs(fs, args, stdout); help || err != nil {
			return nil, help, err
		}
		o.config = path
	}
	return finishOptions(o, r)
}

// parseArgs parses the command line into fs. --help prints the usage; an
// error does not (exitCode names it and points to --help).
func parseArgs(fs *flag.FlagSet, args []string, stdout io.Writer) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
			return true, nil
		}
		return false, usageError{err}
	}
	return false, nil
}

// finishOptions checks the parsed values and builds the validated config.
func finishOptions(o *options, r *rawFlags) (*options, bool, error) {
	switch o.dataplane {
	case "auto", "sockmap", "userspace":
	default:
		return nil, false, usageError{fmt.Errorf("invalid --dataplane %q: want auto, sockmap or userspace", o.dataplane)}
	}
	switch r.level {
	case "debug", "info", "warn", "error":
		o.logLevel, _ = zerolog.ParseLevel(r.level)
	default:
		return nil, false, usageError{fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", r.level)}
	}
	switch o.logFormat {
	case "json", "console":
	default:
		return nil, false, usageError{fmt.Errorf("invalid --log-format %q: want json or console", o.logFormat)}
	}
	if o.cfg.HeaderTimeout <= 0 {
		return nil, false, usageError{fmt.Errorf("invalid --header-timeout %v: must be positive", o.cfg.HeaderTimeout)}
	}
	if o.cfg.DialTimeout <= 0 {
		return nil, false, usageError{fmt.Errorf("invalid --connect-timeout %v: must be positive", o.cfg.DialTimeout)}
	}
	if o.cfg.ResponseTimeout <= 0 {
		return nil, false, usageError{fmt.Errorf("invalid --backend-timeout %v: must be positive", o.cfg.ResponseTimeout)}
	}
	if o.cfg.IdleTimeout < proxy.MinIdleTimeout || o.cfg.IdleTimeout > proxy.MaxIdleTimeout {
		return nil, false, usageError{fmt.Errorf("invalid --idle-timeout %v: must be between %v and %v", o.cfg.IdleTimeout, proxy.MinIdleTimeout, proxy.MaxIdleTimeout)}
	}
	if o.cfg.DrainTimeout < 0 {
		return nil, false, usageError{fmt.Errorf("invalid --drain-timeout %v: must not be negative", o.cfg.DrainTimeout)}
	}
	o.cfg.TCPKeepAliveOff = !r.keepAlive
	o.cfg.NoHandshakeLoop = !r.hsLoop
	o.cfg.Admin, o.cfg.AdminOptional = r.admin.value, !r.admin.set
	if o.cfg.Admin == "" {
		return nil, false, usageError{errors.New("invalid --admin \"\": want host:port, unix:PATH, an absolute path, or off")}
	}
	if o.cfg.MaxHeaderBytes == 0 {
		// 0 would read as "the default" further on.
		return nil, false, usageError{errors.New("invalid --max-header-bytes 0: must be between 256 and 1048576")}
	}
	if o.cfg.Admin == "off" {
		o.cfg.Admin = ""
	}
	o.cfg.Listen = r.listen
	o.cfg.Backends = r.backends.listFlag
	o.cfg.TLSListen, o.cfg.TCPListen, o.cfg.TCPTLSListen = r.listenTLS, r.listenTCP, r.listenTCPTLS
	if len(r.certs) != len(r.keys) {
		return nil, false, usageError{fmt.Errorf("%d --tls-cert but %d --tls-key: give them in pairs", len(r.certs), len(r.keys))}
	}
	for i := range r.certs {
		o.cfg.Certificates = append(o.cfg.Certificates, certstore.Pair{Cert: r.certs[i], Key: r.keys[i]})
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
	// The level is the process-wide one (zerolog.SetGlobalLevel), so
	// that a reload can change it for every logger built from this one.
	zerolog.SetGlobalLevel(o.logLevel)
	return zerolog.New(w).With().Timestamp().Logger()
}

// hup receives SIGHUP from the start of the process: the signal's default
// action ends the process, so a reload sent right after start (a service
// manager's), while the BPF objects load, would kill the daemon. Taken
// over here, it waits in the channel until the daemon is up.
var hup = func() chan os.Signal {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c
}()

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
	// SIGHUP reloads the --config file, then the certificates; a bad
	// file keeps what is in use.
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if o.config != "" {
					reload(p, o, args, log)
				}
				if !p.HasCertificates() {
					continue
				}
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

// reload reads the --config file again with the same command line and
// puts what can change live in force; a bad file changes nothing.
func reload(p *proxy.Proxy, running *options, args []string, log zerolog.Logger) {
	o, _, err := parseFlags(args, io.Discard)
	if err == nil && o == nil {
		err = errors.New("no configuration")
	}
	if err != nil {
		p.ReloadFailed(err)
		log.Error().Err(err).Str("config", running.config).Msg("configuration reload failed, keeping the configuration in use")
		return
	}
	var ignored []string
	if o.dataplane != running.dataplane {
		ignored = append(ignored, "dataplane")
	}
	if o.logFormat != running.logFormat {
		ignored = append(ignored, "log-format")
	}
	more, err := p.Reload(o.cfg)
	if err != nil {
		log.Error().Err(err).Str("config", running.config).Msg("configuration reload failed, keeping the configuration in use")
		return
	}
	zerolog.SetGlobalLevel(o.logLevel)
	if ignored = append(ignored, more...); len(ignored) > 0 {
		log.Warn().Strs("flags", ignored).Msg("configuration reload: these flags changed but need a restart; ignored")
	}
}

func newDataplane(mode string, log zerolog.Logger) (dataplane.Dataplane, error) {
	if mode == "userspace" {
		return dataplane.NewUserspace(log), nil
	}
	// Privileges first: without them, they are the reason to give.
	trim, err := false, loader.CheckPrivileges()
	if err == nil {
		trim, err = loader.OverlapTrimSupported()
	}
	if err != nil {
		if mode == "sockmap" {
			return nil, fmt.Errorf("--dataplane sockmap: %w", err)
		}
		log.Warn().Err(err).Msg("sockmap data path unavailable, using userspace")
		return dataplane.NewUserspace(log), nil
	}
	if !trim {
		const why = "kernel lacks bpf_cast_to_kern_ctx (Linux 6.2+): retransmitted segments that overlap received bytes could reach the peer twice on the kernel path"
		if mode != "sockmap" {
			log.Warn().Str("reason", why).Msg("sockmap data path not used, using userspace")
			return dataplane.NewUserspace(log), nil
		}
		log.Warn().Str("reason", why).Msg("sockmap data path forced by --dataplane sockmap")
	}
	// Pairs the kernel path cannot take (a socket that left ESTABLISHED
	// before it could enter the map) are served in userspace.
	s, err := loader.New(log, loader.Options{Fallback: dataplane.NewUserspace(log)})
	if err == nil {
		return s, nil
	}
	if mode == "sockmap" {
		return nil, fmt.Errorf("--dataplane sockmap: %w", err)
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
