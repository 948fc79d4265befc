package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/topology"
)

// TestNodeClient: Node's ws package, a WebSocket implementation this
// project did not write, exchanges random text and binary messages through
// wsplice from the client namespace and gets every echo back intact.
func TestNodeClient(t *testing.T) {
	e := newEnv(t)
	dir, err := filepath.Abs("../node")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		topology.SkipOrFail(t, "node is not installed")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws")); err != nil {
		topology.SkipOrFail(t, "tests/node/node_modules is missing: run npm ci in tests/node")
	}
	messages := size(t, "WSPLICE_NODE_MESSAGES", 2000, 200)
	forEachDataplane(t, func(t *testing.T, dp string) {
		e.startDaemon(t, dp)
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		cmd := e.topo.Client.Command(ctx, node, filepath.Join(dir, "client.js"),
			"--url", "ws://"+listenAddr+"/node", "--connections", "8",
			"--messages", fmt.Sprint(messages), "--max-size", fmt.Sprint(1<<20), "--timeout", "100")
		out, err := cmd.CombinedOutput()
		var res struct {
			OK       bool           `json:"ok"`
			Error    string         `json:"error"`
			Messages int            `json:"messages"`
			Bytes    int64          `json:"bytes"`
			Backends map[string]int `json:"backends"`
		}
		_, line, found := strings.Cut(string(out), "RESULT ")
		if !found || json.Unmarshal([]byte(strings.TrimSpace(line)), &res) != nil {
			t.Fatalf("node client printed no result (%v):\n%s", err, out)
		}
		if err != nil || !res.OK {
			t.Fatalf("node client: %s (%v)", res.Error, err)
		}
		if res.Backends["backend1"] == 0 || res.Backends["backend2"] == 0 {
			t.Errorf("node client's connections went to %v, want both backends", res.Backends)
		}
		t.Logf("node client: %d messages, %s, backends %v", res.Messages, mib(res.Bytes), res.Backends)
	})
}
