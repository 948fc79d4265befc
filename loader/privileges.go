package loader

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel path needs, beside root's usual all: CAP_BPF to load the
// programs and maps, CAP_NET_ADMIN to attach the verdict to a socket map,
// and CAP_PERFMON for what the verifier allows only to "privileged" BPF
// (the pointer arithmetic on bpf_cast_to_kern_ctx's sk_buff, reading
// kernel memory). CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as
// it does in the kernel.
var neededCaps = []struct {
	name string
	bit  uint
	alt  bool // CAP_SYS_ADMIN also grants it
}{
	{"CAP_BPF", unix.CAP_BPF, true},
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN, false},
	{"CAP_PERFMON", unix.CAP_PERFMON, true},
}

// missingCaps lists the capabilities in neededCaps that eff (the
// effective set, as capget returns it: bit n of word n/32) lacks.
func missingCaps(eff [2]uint32) []string {
	has := func(bit uint) bool { return eff[bit/32]&(1<<(bit%32)) != 0 }
	var missing []string
	for _, c := range neededCaps {
		if !has(c.bit) && !(c.alt && has(unix.CAP_SYS_ADMIN)) {
			missing = append(missing, c.name)
		}
	}
	return missing
}

// CheckPrivileges tells whether this process may load and attach the
// kernel path, before trying: without the privileges, the first failure
// would be somewhere else (cilium/ebpf's memlock probe, or a verifier
// message about pointer arithmetic) and would not say what is missing.
// The error wraps ErrUnsupported.
func CheckPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("%w: read the process's capabilities: %w", ErrUnsupported, err)
	}
	if missing := missingCaps([2]uint32{data[0].Effective, data[1].Effective}); len(missing) > 0 {
		return fmt.Errorf("%w: needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; missing %s",
			ErrUnsupported, strings.Join(missing, ", "))
	}
	return nil
}
