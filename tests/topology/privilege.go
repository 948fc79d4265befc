package topology

import (
	"os"
	"testing"
)

// RequirePrivileged skips t unless the process is root, or fails it when
// WSPLICE_REQUIRE_PRIV=1 (set in CI, which runs as root) so that a
// privileged test can never pass by skipping there.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	SkipOrFail(t, "needs root for network namespaces and BPF: run with sudo go test ./tests/...")
}

// SkipOrFail skips t with msg, or fails it with msg when
// WSPLICE_REQUIRE_PRIV=1: a missing prerequisite is an error there.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" {
		t.Fatalf("%s (WSPLICE_REQUIRE_PRIV=1, so this is a failure, not a skip)", msg)
	}
	t.Skip(msg)
}
