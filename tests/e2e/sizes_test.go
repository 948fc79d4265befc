package e2e

import (
	"github.com/wsplice/wsplice/loader"
	"os"
	"strconv"
	"strings"
	"testing"
)

// size returns the env variable's value if set, else short under -short,
// else full: the numbers by default, a few seconds' worth for smoke
// runs, anything for local experiments.
func size(t testing.TB, env string, full, short int64) int64 {
	t.Helper()
	if v := os.Getenv(env); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", env, v, err)
		}
		return n
	}
	if testing.Short() {
		return short
	}
	return full
}

// dataplanes are the data paths every data-path test runs on:
// WSPLICE_DATAPLANES (comma-separated) or both.
func dataplanes() []string {
	if v := os.Getenv("WSPLICE_DATAPLANES"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"userspace", "sockmap"}
}

// forEachDataplane runs fn as one subtest per data path.
func forEachDataplane(t *testing.T, fn func(t *testing.T, dp string)) {
	for _, dp := range dataplanes() {
		t.Run(dp, func(t *testing.T) { fn(t, dp) })
	}
}

// skipUntrimmedKernel skips a sockmap run that drives the kernel path
// hard (saturation, so early retransmissions) on a kernel where the
// verdict cannot cut retransmitted overlaps (no bpf_cast_to_kern_ctx,
// before 6.2): wsplice's "auto" data path does not use the kernel path
// there (see README, How it works).
func skipUntrimmedKernel(t *testing.T, dp string) {
	t.Helper()
	if trim, err := loader.OverlapTrimSupported(); dp == "sockmap" && err == nil && !trim {
		t.Skip("kernel lacks bpf_cast_to_kern_ctx (6.2+): retransmitted overlaps cannot be cut, saturating sockmap test skipped")
	}
}
