package topology_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/wsplice/wsplice/tests/topology"
)

// TestTopology checks that the lb is reachable from every other namespace on
// the address of their shared link, and that the namespaces are gone after
// cleanup.
func TestTopology(t *testing.T) {
	topology.RequirePrivileged(t)
	var names []string
	t.Run("build", func(t *testing.T) {
		topo := topology.New(t)
		for _, ns := range []*topology.NS{topo.Client, topo.LB, topo.Backend1, topo.Backend2} {
			names = append(names, ns.Name)
		}
		for _, c := range []struct {
			from *topology.NS
			to   netip.Addr
		}{
			{topo.Client, topology.LBClientAddr},
			{topo.Backend1, topology.LBBackend1},
			{topo.Backend2, topology.LBBackend2},
		} {
			ln, err := topo.LB.Listen("tcp", netip.AddrPortFrom(c.to, 7000).String())
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				conn, err := ln.Accept()
				if err == nil {
					conn.Write([]byte(conn.RemoteAddr().String()))
					conn.Close()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := c.from.DialContext(ctx, "tcp", ln.Addr().String())
			cancel()
			if err != nil {
				t.Fatalf("dial %s from %s: %v", ln.Addr(), c.from.Name, err)
			}
			got, err := io.ReadAll(conn)
			conn.Close()
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
			host, _, _ := net.SplitHostPort(string(got))
			if host == "" {
				t.Fatalf("lb saw no peer address from %s", c.from.Name)
			}
			t.Logf("%s -> lb %s: lb saw %s", c.from.Name, c.to, got)
		}
	})
	for _, n := range names {
		if _, err := os.Stat("/var/run/netns/" + n); !os.IsNotExist(err) {
			t.Errorf("netns %s still exists after cleanup (stat: %v)", n, err)
		}
	}
}
