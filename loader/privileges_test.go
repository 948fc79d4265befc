package loader

import (
	"errors"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMissingCaps(t *testing.T) {
	set := func(bits ...uint) [2]uint32 {
		var e [2]uint32
		for _, b := range bits {
			e[b/32] |= 1 << (b % 32)
		}
		return e
	}
	for _, tc := range []struct {
		name string
		eff  [2]uint32
		want []string
	}{
		{"none", set(), []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}},
		{"bpf and net_admin only (what the verifier refuses)", set(unix.CAP_BPF, unix.CAP_NET_ADMIN), []string{"CAP_PERFMON"}},
		{"all three", set(unix.CAP_BPF, unix.CAP_NET_ADMIN, unix.CAP_PERFMON), nil},
		{"sys_admin stands in for bpf and perfmon", set(unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN), nil},
		{"sys_admin is not net_admin", set(unix.CAP_SYS_ADMIN), []string{"CAP_NET_ADMIN"}},
	} {
		if got := missingCaps(tc.eff); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: missing %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Run as root, the check passes; as another user (go test without sudo)
// it says what is missing.
func TestCheckPrivileges(t *testing.T) {
	err := CheckPrivileges()
	if unix.Geteuid() == 0 {
		if err != nil {
			t.Fatalf("as root: %v", err)
		}
		return
	}
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("unprivileged: %v, want an ErrUnsupported naming the capabilities", err)
	}
}
