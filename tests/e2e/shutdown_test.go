package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestSIGTERM: SIGTERM with a spliced pair open makes wsplice exit with
// status 0, the client's connection closes, and no BPF program, map or
// link the daemon held is left in the kernel, nor a pin under /sys/fs/bpf.
func TestSIGTERM(t *testing.T) {
	e := newEnv(t)
	forEachDataplane(t, func(t *testing.T, dp string) {
		// --drain-timeout 0: spliced pairs are closed at once (the drain
		// is TestDrain's).
		d := e.startDaemon(t, dp, "--drain-timeout", "0s")
		ws, _ := d.dialWS(t, "/term")
		if err := ws.WriteMessage(websocket.TextMessage, []byte("before SIGTERM")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		d.waitStats(t, 2*time.Second, "spliced 1", func(s stats) bool { return s.Spliced == 1 })

		held := bpfObjects(t, d.pid())
		t.Logf("BPF objects held by the daemon: %v", held)
		switch {
		case dp == "userspace" && len(held) > 0:
			t.Errorf("the userspace data path holds BPF objects: %v", held)
		case dp == "sockmap" && (len(held["prog"]) == 0 || len(held["map"]) == 0):
			t.Errorf("the sockmap data path holds no BPF program or map: %v", held)
		}

		d.cmd.Process.Signal(syscall.SIGTERM)
		code, err := d.wait(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Errorf("exit status %d after SIGTERM, want 0", code)
		}
		for _, line := range strings.Split(d.log(), "\n") {
			if strings.Contains(line, `"level":"error"`) {
				t.Errorf("error logged during a clean shutdown: %s", line)
			}
		}
		ws.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := ws.ReadMessage(); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("client connection still open after wsplice exited: %v", err)
		}

		checkBPFGone(t, held)
		checkNoPins(t)
	})
}

// bpfObjects lists the IDs of the BPF programs, maps and links whose file
// descriptors pid holds, read from /proc/PID/fdinfo.
func bpfObjects(t *testing.T, pid int) map[string][]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string][]int{}
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			key, val, ok := strings.Cut(line, ":")
			kind, isID := strings.CutSuffix(key, "_id")
			if !ok || !isID || (kind != "prog" && kind != "map" && kind != "link") {
				continue
			}
			if id, err := strconv.Atoi(strings.TrimSpace(val)); err == nil {
				objs[kind] = append(objs[kind], id)
			}
		}
	}
	return objs
}

// checkBPFGone waits until bpftool lists none of held, or fails t. Without
// bpftool it logs and returns.
func checkBPFGone(t *testing.T, held map[string][]int) {
	t.Helper()
	if _, err := exec.LookPath("bpftool"); err != nil {
		t.Logf("bpftool not installed: not checking that BPF objects were freed (apt-get install bpftool)")
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		var left []string
		for kind, ids := range held {
			live := map[int]bool{}
			out, err := exec.Command("bpftool", "-j", kind, "show").Output()
			if err != nil {
				t.Fatalf("bpftool %s show: %v", kind, err)
			}
			var list []struct {
				ID   int    `json:"id"`
				Name string `json:"name"`
			}
			if err := json.Unmarshal(out, &list); err != nil {
				t.Fatalf("bpftool %s show: %v", kind, err)
			}
			for _, o := range list {
				live[o.ID] = true
			}
			for _, id := range ids {
				if live[id] {
					left = append(left, fmt.Sprintf("%s %d", kind, id))
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after wsplice exited, still in the kernel: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNoPins fails t if anything named after wsplice is pinned in bpffs.
func checkNoPins(t *testing.T) {
	t.Helper()
	filepath.WalkDir("/sys/fs/bpf", func(path string, de fs.DirEntry, err error) error {
		if err == nil && strings.Contains(strings.ToLower(de.Name()), "wsplice") {
			t.Errorf("left pinned after exit: %s", path)
		}
		return nil
	})
}
