//go:build vmtest

package ktls

import (
	"testing"
)

// This file puts the package on scripts/vm-test.sh's default list (it
// runs every package with a test file under the vmtest tag), so that its
// TLS tests run on Debian's 6.1 kernel, which has kernel TLS, and assert
// the kTLS path there.

// TestVMHasKTLS fails if the VM's kernel offers no kernel TLS: the other
// tests would then silently test the userspace path only.
func TestVMHasKTLS(t *testing.T) {
	if err := Available(); err != nil {
		t.Fatalf("the test VM must have kernel TLS: %v", err)
	}
}
