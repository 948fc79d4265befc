package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Floor is the benchmark's sockmap floor (bpf/floor.c): the least an
// sk_skb verdict can do to splice two sockets, with none of the Splicer's
// guarantees (bytes can be lost at a FIN, a stalled reader is not
// bounded, nothing is counted). It is not a data path for wsplice; it
// lives here because this is the one package that touches cilium/ebpf,
// and bench/evfloor uses it to show, in the same benchmark run as
// wsplice, what the kernel mechanism itself costs.
type Floor struct {
	objs floorObjects
}

// NewFloor loads bpf/floor.c and attaches its verdict.
func NewFloor() (_ *Floor, err error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: remove memlock limit: %w", ErrUnsupported, err)
	}
	f := &Floor{}
	if err := loadFloorObjects(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: verifier rejected the floor program: %+v", ErrUnsupported, ve)
		}
		return nil, fmt.Errorf("%w: load the floor's BPF objects: %w", ErrUnsupported, err)
	}
	defer func() {
		if err != nil {
			f.objs.Close()
		}
	}()
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  f.objs.FloorSocks.FD(),
		Program: f.objs.FloorVerdict,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: attach the floor's verdict: %w", ErrUnsupported, err)
	}
	return f, nil
}

// Splice redirects everything a and b receive from now on to the other.
// Bytes already in their receive queues stay there: the caller splices
// before either side has anything to send. Closing a socket removes it.
func (f *Floor) Splice(a, b int) error {
	ca, err := unix.GetsockoptUint64(a, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return fmt.Errorf("get SO_COOKIE: %w", err)
	}
	cb, err := unix.GetsockoptUint64(b, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return fmt.Errorf("get SO_COOKIE: %w", err)
	}
	if err := f.objs.FloorPeers.Update(ca, cb, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set peer: %w", err)
	}
	if err := f.objs.FloorPeers.Update(cb, ca, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set peer: %w", err)
	}
	if err := f.objs.FloorSocks.Update(ca, uint64(a), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert into floor_socks: %w", err)
	}
	if err := f.objs.FloorSocks.Update(cb, uint64(b), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert into floor_socks: %w", err)
	}
	return nil
}

// Close detaches the verdict and frees the maps.
func (f *Floor) Close() error {
	_ = link.RawDetachProgram(link.RawDetachProgramOptions{
		Target:  f.objs.FloorSocks.FD(),
		Program: f.objs.FloorVerdict,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	})
	return f.objs.Close()
}
