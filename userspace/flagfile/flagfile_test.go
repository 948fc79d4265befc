package flagfile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	src := `# a comment
listen :8080
  --backend 10.0.0.1:80
--backend=10.0.0.2:80
max-conns=100
   # indented comment

tcp-keepalive
-log-level	debug
header-timeout "5s"
`
	got, err := Parse("f.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Line{
		{2, "listen", ":8080", true},
		{3, "backend", "10.0.0.1:80", true},
		{4, "backend", "10.0.0.2:80", true},
		{5, "max-conns", "100", true},
		{8, "tcp-keepalive", "", false},
		{9, "log-level", "debug", true},
		{10, "header-timeout", "5s", true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	var args []string
	for _, l := range got {
		args = append(args, l.Arg())
	}
	if strings.Join(args, " ") != "--listen=:8080 --backend=10.0.0.1:80 --backend=10.0.0.2:80 --max-conns=100 --tcp-keepalive --log-level=debug --header-timeout=5s" {
		t.Fatalf("args %q", args)
	}
}

func TestParseBadLines(t *testing.T) {
	_, err := Parse("f.conf", []byte("listen :8080\n---x 1\n\"quoted\" 2\nheader-timeout \"5s\n"))
	if err == nil {
		t.Fatal("bad lines accepted")
	}
	for _, want := range []string{"f.conf:2:", "f.conf:3:", "f.conf:4:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	var le *LineError
	if !errors.As(err, &le) || le.N != 2 {
		t.Errorf("first LineError: %+v", le)
	}
}

func TestRead(t *testing.T) {
	if _, err := Read(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
