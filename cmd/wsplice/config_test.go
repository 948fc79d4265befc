package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/proxy"
)

func writeFile(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFile: the file is read first; the command line adds to lists
// and overrides single values.
func TestConfigFile(t *testing.T) {
	path := writeFile(t, t.TempDir(), "wsplice.conf", `# wsplice
listen 127.0.0.1:0
--backend 10.0.0.1:80
backend=10.0.0.2:80,proxy-protocol=v2
max-conns 5
--max-conn-rate=100
--tcp-keepalive=false
drain-timeout 2s
log-level debug
`)
	o, help, err := parseFlags([]string{"--config", path, "--backend", "10.0.0.3:80", "--max-conns", "7"}, io.Discard)
	if err != nil || help {
		t.Fatal(err, help)
	}
	c := o.cfg
	if !slices.Equal(c.Backends, []string{"10.0.0.1:80", "10.0.0.2:80,proxy-protocol=v2", "10.0.0.3:80"}) {
		t.Errorf("backends %v", c.Backends)
	}
	if c.MaxConns != 7 || c.MaxConnRate != 100 || !c.TCPKeepAliveOff || c.DrainTimeout != 2*time.Second || o.logLevel != zerolog.DebugLevel {
		t.Errorf("config %+v level %v", c, o.logLevel)
	}
	if !slices.Equal(c.Listen, []string{"127.0.0.1:0"}) || o.config != path {
		t.Errorf("listen %v config %q", c.Listen, o.config)
	}
	// Defaults without a file.
	o, _, err = parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.TCPKeepAliveOff || o.cfg.DrainTimeout != 30*time.Second || o.cfg.MaxConns != 0 {
		t.Errorf("defaults %+v", o.cfg)
	}
}

// TestConfigFileBadLines: the error names the file and the line, and the
// exit code is 2.
func TestConfigFileBadLines(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ file, want string }{
		"bad value":   {"listen :0\n\nmax-conns lots\n", "bad.conf:3"},
		"unknown":     {"# x\nno-such-flag 1\n", "bad.conf:2"},
		"not a flag":  {"listen :0\n\"oops\"\n", "bad.conf:2"},
		"nested":      {"config other.conf\n", "bad.conf:1"},
		"bad backend": {"listen :0\nbackend 10.0.0.1:80,weight=x\n", "bad.conf:2"},
		"validate":    {"backend no-port\n", "no-port"},
	} {
		t.Run(name, func(t *testing.T) {
			path := writeFile(t, dir, "bad.conf", tc.file)
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{"--config", path}, &stdout, &stderr)
			if code := exitCode(err, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2 (err %v)", code, err)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tc.want)
			}
			// The mistake alone, not buried under the flag list.
			if strings.Contains(stdout.String()+stderr.String(), "Usage:") {
				t.Errorf("a bad line printed the usage:\nstdout %q\nstderr %q", stdout.String(), stderr.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := exitCode(run(context.Background(), []string{"--config", filepath.Join(dir, "missing")}, &stdout, &stderr), &stderr); code != 2 {
		t.Errorf("missing file: exit code %d", code)
	}
}

// TestReloadFile: a bad file changes nothing; a good one changes the
// backends, limits and log level; a changed listener is ignored.
func TestReloadFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "wsplice.conf", "listen 127.0.0.1:0\nbackend 10.0.0.1:80\nlog-level info\n")
	args := []string{"--config", path, "--dataplane", "userspace"}
	o, _, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := newLogger(o, &logs)
	dp := dataplane.NewUserspace(log)
	defer dp.Close()
	p, err := proxy.New(o.cfg, dp, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	defer func() { cancel(); <-done }()

	writeFile(t, dir, "wsplice.conf", "listen 127.0.0.1:0\nbackend 10.0.0.9:80\nmax-conns 3\nmax-conns-per-ip oops\n")
	reload(p, o, args, log)
	if c := p.Config(); !slices.Equal(c.Backends, []string{"10.0.0.1:80"}) || c.MaxConns != 0 {
		t.Fatalf("bad file changed the config: %+v", c)
	}
	if !strings.Contains(logs.String(), "wsplice.conf:4") || !strings.Contains(logs.String(), "configuration reload failed") {
		t.Errorf("log does not name the bad line: %s", logs.String())
	}

	writeFile(t, dir, "wsplice.conf", "listen 127.0.0.1:1\nbackend 10.0.0.2:80\nbackend 10.0.0.3:80\nmax-conns 3\nlog-level warn\n")
	reload(p, o, args, log)
	c := p.Config()
	if !slices.Equal(c.Backends, []string{"10.0.0.2:80", "10.0.0.3:80"}) || c.MaxConns != 3 {
		t.Fatalf("good file not applied: %+v", c)
	}
	if c.Listen[0] == "127.0.0.1:1" {
		t.Errorf("listener changed live: %v", c.Listen)
	}
	if zerolog.GlobalLevel() != zerolog.WarnLevel {
		t.Errorf("log level %v after reload, want warn", zerolog.GlobalLevel())
	}
	zerolog.SetGlobalLevel(zerolog.InfoLevel)
	if !strings.Contains(logs.String(), `"flags":["listen"]`) {
		t.Errorf("ignored listener not logged: %s", logs.String())
	}
}
