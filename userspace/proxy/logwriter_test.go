package proxy

import (
	"bytes"
	"encoding/json"
	stdlog "log"
	"testing"

	"github.com/rs/zerolog"
)

// net/http's error log reaches the structured log as one JSON warning a
// line, not as plain text.
func TestLogWriter(t *testing.T) {
	var out bytes.Buffer
	l := stdlog.New(logWriter{zerolog.New(&out)}, "", 0)
	l.Printf("http: Accept error: %s; retrying in 5ms", "too many open files")
	var m map[string]string
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("not one JSON line: %q: %v", out.String(), err)
	}
	if m["level"] != "warn" || m["message"] != "http: Accept error: too many open files; retrying in 5ms" {
		t.Fatalf("logged %v", m)
	}
}
