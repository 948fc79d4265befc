package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// bins are the binaries under test, built once by TestMain.
var bins struct {
	wsplice, echo string
	err           error
}

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "wsplice-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Without root every test skips (or fails under
	// WSPLICE_REQUIRE_PRIV=1) before it needs a binary.
	if os.Geteuid() == 0 {
		bins.wsplice = filepath.Join(dir, "wsplice")
		bins.echo = filepath.Join(dir, "wsplice-echo")
		bins.err = build(map[string]string{
			bins.wsplice: "github.com/wsplice/wsplice/cmd/wsplice",
			bins.echo:    "github.com/wsplice/wsplice/cmd/wsplice-echo",
		})
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(targets map[string]string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		// sudo often resets PATH; the toolchain that built this test
		// is still there.
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for out, pkg := range targets {
		cmd := exec.Command(gobin, "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// requireBinaries fails t if the binaries did not build.
func requireBinaries(t testing.TB) {
	t.Helper()
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}
