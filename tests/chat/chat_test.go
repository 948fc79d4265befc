package chat

import (
	"os"
	"strings"
	"testing"
)

// TestChatRoom: two users in two browser contexts open the page through
// wsplice; round-robin puts their WebSockets on different backends (each
// page shows its backend's name); they set usernames and talk, turn by
// turn and both at once; each sees the other's messages within a second,
// both pages show the same conversation in the same order, and the
// browser's network log shows the WebSocket.
func TestChatRoom(t *testing.T) {
	forEachVariant(t, func(t *testing.T, tl tools, dataplane, scheme string) {
		st := startStack(t, tl, dataplane, scheme)
		res := runBrowser(t, tl, st, "conversation")
		t.Logf("pages on %v; %d messages; slowest delivery %d ms; screenshot %s",
			res.Backends, res.Messages, res.SlowestDeliveryMs, res.Screenshot)
		checkSpliced(t, st, 2)
	})
}

// TestChatBackendFailure: while both users are connected, the backend of
// one of them is killed (SIGKILL). That page reconnects through wsplice to
// the surviving backend (an attempt that lands on the dead one fails to
// connect and wsplice retries the survivor), shows the new backend's name, and the conversation goes
// on: every message, those typed while the socket was down and those after
// the reconnect, shows on both pages once, in order.
func TestChatBackendFailure(t *testing.T) {
	forEachVariant(t, func(t *testing.T, tl tools, dataplane, scheme string) {
		st := startStack(t, tl, dataplane, scheme)
		res := runBrowser(t, tl, st, "failure")
		victim := res.Backends["bob"]
		if res.BackendsAfter["bob"] == victim || res.BackendsAfter["bob"] != res.Backends["alice"] {
			t.Errorf("after %s was killed bob's page is on %q, want the survivor %q", victim, res.BackendsAfter["bob"], res.Backends["alice"])
		}
		if n := len(res.Websockets["bob"]); n < 2 {
			t.Errorf("bob's network log shows %d WebSockets, want the first and the reconnected one", n)
		}
		// The test steered bob's first reconnect to the dead backend:
		// wsplice's connect to it failed (then retried the survivor), so
		// the pool counts a failure against it.
		if !st.sawConnectFailure(t) {
			t.Errorf("no backend has a failed connect in GET /backends: bob's page never tried the dead backend")
		}
		t.Logf("killed %s; bob's page reconnected to %s in %d ms; %d messages; screenshot %s",
			victim, res.BackendsAfter["bob"], res.ReconnectMs, res.Messages, res.Screenshot)
		checkSpliced(t, st, 3)
	})
}

// forEachVariant runs f once per data path and scheme: ws, and wss when
// wsplice has --listen-tls.
func forEachVariant(t *testing.T, f func(t *testing.T, tl tools, dataplane, scheme string)) {
	tl := requireTools(t)
	schemes := []string{"ws"}
	if bins.tls {
		schemes = append(schemes, "wss")
	} else {
		t.Logf("wsplice has no --listen-tls yet: testing ws only")
	}
	for _, dp := range dataplanes() {
		for _, scheme := range schemes {
			t.Run(dp+"/"+scheme, func(t *testing.T) {
				if dp == "sockmap" && os.Geteuid() != 0 {
					skipOrFail(t, "the sockmap data path needs root: run sudo go test ./tests/chat/")
				}
				f(t, tl, dp, scheme)
			})
		}
	}
}

// checkSpliced: wsplice spliced at least n WebSockets on the data path it
// was asked for, moved bytes there, and logged no error. Over wss the
// kernel moves bytes only when TLS records are in kernel TLS; where the
// kernel has no TLS, crypto/tls carries them and the test says so.
func checkSpliced(t *testing.T, st *stack, n uint64) {
	t.Helper()
	s := st.stats(t)
	if s.Dataplane != st.dataplane || s.SplicedTotal < n {
		t.Errorf("wsplice stats %+v, want data path %s and at least %d spliced pairs", s, st.dataplane, n)
	}
	tls := st.spki != ""
	switch {
	case tls && s.TLSPath["ktls"]+s.TLSPath["userspace"] == 0:
		t.Errorf("wsplice stats %+v: no TLS session over wss", s)
	case tls && s.TLSPath["ktls"] == 0:
		t.Logf("TLS records went through userspace (crypto/tls), not kernel TLS: %d sessions; the wsplice log says why", s.TLSPath["userspace"])
		if s.BytesUser == 0 {
			t.Errorf("wsplice stats %+v: userspace moved no bytes", s)
		}
	case st.dataplane == "sockmap" && s.BytesKernel == 0:
		t.Errorf("wsplice stats %+v: the kernel moved no bytes", s)
	}
	if lines := st.errorLines(); len(lines) > 0 {
		t.Errorf("wsplice logged errors:\n%s", strings.Join(lines, "\n"))
	}
}
