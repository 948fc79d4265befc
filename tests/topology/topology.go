// Package topology builds the network the end-to-end tests run in: four
// network namespaces (client, lb, backend1, backend2) joined by veth pairs,
// with addresses in 198.18.0.0/15 (RFC 2544 benchmarking space), so no test
// traffic leaves the machine or touches the host's own interfaces.
//
//	client 198.18.1.2 ── 198.18.1.1 lb 198.18.2.1 ── 198.18.2.2 backend1
//	                                   198.18.3.1 ── 198.18.3.2 backend2
package topology

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses of the topology, the same in every run: each run has its own
// namespaces, so runs cannot collide.
var (
	ClientAddr   = netip.MustParseAddr("198.18.1.2")
	LBClientAddr = netip.MustParseAddr("198.18.1.1")
	LBBackend1   = netip.MustParseAddr("198.18.2.1")
	Backend1Addr = netip.MustParseAddr("198.18.2.2")
	LBBackend2   = netip.MustParseAddr("198.18.3.1")
	Backend2Addr = netip.MustParseAddr("198.18.3.2")
)

// NS is a named network namespace.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// Topology is one test's set of namespaces.
type Topology struct {
	Client, LB, Backend1, Backend2 *NS
}

// New builds a fresh topology whose namespace names are unique to this run,
// and removes it in t.Cleanup, also when set-up fails half-way.
func New(t testing.TB) *Topology {
	t.Helper()
	RequirePrivileged(t)
	var id [3]byte
	rand.Read(id[:])
	prefix := "wsp-" + hex.EncodeToString(id[:])

	mk := func(role string) *NS {
		ns, err := newNamed(prefix + "-" + role)
		if err != nil {
			t.Fatalf("create netns: %v", err)
		}
		t.Cleanup(func() { ns.remove(t) })
		return ns
	}
	topo := &Topology{Client: mk("client"), LB: mk("lb"), Backend1: mk("backend1"), Backend2: mk("backend2")}

	for _, ns := range []*NS{topo.Client, topo.LB, topo.Backend1, topo.Backend2} {
		if err := ns.linkUp("lo"); err != nil {
			t.Fatal(err)
		}
	}
	pairs := []struct {
		a          *NS
		aName      string
		aAddr      netip.Addr
		b          *NS
		bName      string
		bAddr      netip.Addr
		bIsGateway bool
	}{
		{topo.Client, "to-lb", ClientAddr, topo.LB, "to-client", LBClientAddr, true},
		{topo.Backend1, "to-lb", Backend1Addr, topo.LB, "to-backend1", LBBackend1, true},
		{topo.Backend2, "to-lb", Backend2Addr, topo.LB, "to-backend2", LBBackend2, true},
	}
	for _, p := range pairs {
		if err := veth(p.a, p.aName, p.aAddr, p.b, p.bName, p.bAddr); err != nil {
			t.Fatal(err)
		}
		// The lb is every other namespace's gateway, so that a process
		// there can reach any address of the lb, not only the one on its
		// own link.
		if err := p.a.defaultRoute(p.aName, p.bAddr); err != nil {
			t.Fatal(err)
		}
	}
	return topo
}

func newNamed(name string) (*NS, error) {
	// Creating a namespace switches the calling thread into it: do it on a
	// locked thread and switch back. If switching back fails the thread
	// stays locked and dies with the goroutine.
	type result struct {
		h   netns.NsHandle
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			res <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil {
			if err == nil {
				h.Close()
				netns.DeleteNamed(name)
			}
			res <- result{err: fmt.Errorf("switch back from netns %s: %w", name, serr)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			err = fmt.Errorf("new netns %s: %w", name, err)
		}
		res <- result{h, err}
	}()
	r := <-res
	if r.err != nil {
		return nil, r.err
	}
	return &NS{Name: name, handle: r.h}, nil
}

func (ns *NS) remove(t testing.TB) {
	ns.handle.Close()
	if err := netns.DeleteNamed(ns.Name); err != nil {
		t.Errorf("delete netns %s: %v", ns.Name, err)
	}
}

// Path is the namespace's bind mount, for nsenter --net=PATH.
func (ns *NS) Path() string { return filepath.Join("/var/run/netns", ns.Name) }

func (ns *NS) netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", ns.Name, err)
	}
	return h, nil
}

func (ns *NS) linkUp(name string) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, ns.Name, err)
	}
	return nil
}

func (ns *NS) addAddr(link string, addr netip.Addr) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", link, ns.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", addr, link, ns.Name, err)
	}
	return nil
}

func (ns *NS) defaultRoute(link string, gw netip.Addr) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", link, ns.Name, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, ns.Name, err)
	}
	return nil
}

// veth joins a and b with a veth pair, created directly in a with its peer
// in b so that no name is ever taken in the host's namespace.
func veth(a *NS, aName string, aAddr netip.Addr, b *NS, bName string, bAddr netip.Addr) error {
	h, err := a.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.handle),
	}
	if err := h.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s <-> %s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	for _, end := range []struct {
		ns   *NS
		name string
		addr netip.Addr
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if err := end.ns.addAddr(end.name, end.addr); err != nil {
			return err
		}
		if err := end.ns.linkUp(end.name); err != nil {
			return err
		}
	}
	return nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn
// creates belong to the namespace and stay usable from any goroutine
// afterwards. fn must not start goroutines that create sockets.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime kills it when this
			// goroutine ends, so no other goroutine runs in ns.
			errc <- fmt.Errorf("leave netns %s: %w", ns.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside the namespace. Its signature fits
// net/http.Transport and websocket.Dialer.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens inside the namespace.
func (ns *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Command returns a command that runs name inside the namespace. It uses
// nsenter, which only switches the network namespace: `ip netns exec`
// would also remount /sys in a private mount namespace, hiding bpffs and
// cgroup mounts from a process that may need them. The started process is
// the program itself (nsenter execs it), so its PID can be signalled and
// read in /proc.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + ns.Path(), "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = os.Environ()
	return cmd
}
