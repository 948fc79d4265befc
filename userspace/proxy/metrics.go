package proxy

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsplice/wsplice/userspace/backend"
	"github.com/wsplice/wsplice/userspace/dataplane"
	"github.com/wsplice/wsplice/userspace/limit"
)

// Connection states (the "state" label).
const (
	// stateHandshake: accepted, not spliced (reading requests, proxying
	// plain HTTP, running a WebSocket handshake or dialing for L4).
	stateHandshake = "handshake"
	// stateSpliced: handed to the data path.
	stateSpliced = "spliced"
)

// BackendState is one backend's health as the pool sees it, for the
// wsplice_backend_up metric (see Proxy.SetBackendStates).
type BackendState struct {
	Addr string
	Up   bool
}

// metrics are the proxy's Prometheus metrics, on their own registry.
type metrics struct {
	reg *prometheus.Registry

	accepted     *prometheus.CounterVec // listener
	live         *prometheus.GaugeVec   // listener, backend, state, dataplane
	splicedTotal *prometheus.CounterVec // listener, backend, dataplane
	handshakes   *prometheus.CounterVec // status
	hsLatency    *prometheus.HistogramVec
	rejections   *prometheus.CounterVec // reason
	reloads      *prometheus.CounterVec // result
	lastReload   prometheus.Gauge

	bytes *bytesCollector

	health atomic.Pointer[func() []BackendState]
}

func newMetrics(p *Proxy) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsplice_connections_accepted_total",
			Help: "Client connections accepted, by listener (refused ones included).",
		}, []string{"listener"}),
		live: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wsplice_connections",
			Help: "Live client connections by listener, backend, state (handshake or spliced) and data path.",
		}, []string{"listener", "backend", "state", "dataplane"}),
		splicedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsplice_connections_spliced_total",
			Help: "Client connections handed to a data path, by listener, backend and data path.",
		}, []string{"listener", "backend", "dataplane"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsplice_handshakes_total",
			Help: "WebSocket handshake outcomes by the status the client got (101: spliced; error: connection closed without an answer).",
		}, []string{"status"}),
		hsLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wsplice_handshake_duration_seconds",
			Help:    "Time from a WebSocket request head read to the pair spliced or the handshake failed.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsplice_limit_rejections_total",
			Help: "Connections refused by a limit, by reason.",
		}, []string{"reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsplice_config_reloads_total",
			Help: "Configuration reloads (SIGHUP) by result.",
		}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wsplice_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load (start-up or reload).",
		}),
		bytes: &bytesCollector{
			live:   make(map[*tracked]struct{}),
			closed: make(map[bytesKey]uint64),
			desc: prometheus.NewDesc("wsplice_backend_bytes_total",
				"Bytes moved between clients and a backend after the handshake, by direction (to_backend, to_client) and data path; spliced connections are read from the kernel.",
				[]string{"backend", "direction", "dataplane"}, nil),
		},
	}
	for _, r := range []string{"success", "failure"} {
		m.reloads.WithLabelValues(r)
	}
	for _, r := range []limit.Reason{limit.MaxConns, limit.ConnRate, limit.MaxConnsPerIP, limit.ConnRatePerIP} {
		m.rejections.WithLabelValues(string(r))
	}
	m.lastReload.SetToCurrentTime()
	m.reg.MustRegister(m.accepted, m.live, m.splicedTotal, m.handshakes, m.hsLatency, m.rejections, m.reloads, m.lastReload, m.bytes,
		&healthCollector{m: m, desc: prometheus.NewDesc("wsplice_backend_up", "Backend health as the pool sees it (1 up, 0 down).", []string{"backend"}, nil)},
		&dataplaneCollector{p: p},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// handshakeDone records a WebSocket handshake's outcome: status is what
// the client got (0: nothing, the connection was closed).
func (m *metrics) handshakeDone(status int, start time.Time) {
	s, result := "error", "failed"
	switch {
	case status == 101:
		s, result = "101", "spliced"
	case status > 0:
		s = strconv.Itoa(status)
	}
	m.handshakes.WithLabelValues(s).Inc()
	if !start.IsZero() {
		m.hsLatency.WithLabelValues(result).Observe(time.Since(start).Seconds())
	}
}

// tracked is one admitted client connection for metrics, limits and
// drain: it is live from accept until it is released unspliced or its
// spliced pair ends. Once spliced it is the pair's dataplane.Owner, and
// with the data plane's own pair it is all the daemon keeps of an
// established connection: the client's Conn, its clientConn and every
// handshake buffer are garbage by then. Keep it small.
type tracked struct {
	p        *Proxy
	listener string
	ticket   *limit.Ticket

	mu sync.Mutex
	// cc is the connection while its handshake runs: what a drain
	// deadline closes until the pair exists.
	cc      *clientConn
	lease   *backend.Lease // from splicing until the pair ends
	backend string
	path    string
	pair    dataplane.Pair // once spliced
	// handedOver is set when the connection was handed to Splice: from
	// then on PairEnded ends it, not release.
	handedOver bool
	spliced    bool // counted as spliced
	ended      bool
}

func (p *Proxy) track(listener string, ticket *limit.Ticket) *tracked {
	t := &tracked{p: p, listener: listener, ticket: ticket}
	p.metrics.accepted.WithLabelValues(listener).Inc()
	p.metrics.live.WithLabelValues(listener, "", stateHandshake, p.dp.Name()).Inc()
	return t
}

// close ends the connection wherever it is (a drain deadline): its
// spliced pair, or the client and handshake backend connections.
func (t *tracked) close() {
	t.mu.Lock()
	pair, cc := t.pair, t.cc
	t.mu.Unlock()
	switch {
	case pair != nil:
		pair.Close()
	case cc != nil:
		cc.abort()
	}
}

// release ends a connection that was not spliced.
func (t *tracked) release() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended || t.handedOver {
		return
	}
	t.ended = true
	t.p.metrics.live.WithLabelValues(t.listener, "", stateHandshake, t.p.dp.Name()).Dec()
	t.ticket.Release()
}

// splicing is called before Splice hands the pair with lease's backend
// over: the connection leaves the handshake state, and the lease is kept
// until the pair ends.
func (t *tracked) splicing(l *backend.Lease) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.handedOver = true
	t.lease = l
	t.backend = l.Backend().Addr()
	t.p.metrics.live.WithLabelValues(t.listener, "", stateHandshake, t.p.dp.Name()).Dec()
	t.p.metrics.bytes.add(t)
}

// PairStarted implements dataplane.Owner: the pair is carried by path.
// The handshake's connection is let go: from now on only the pair is
// kept.
func (t *tracked) PairStarted(path string, p dataplane.Pair) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.path, t.pair, t.cc = path, p, nil
	if t.ended {
		return
	}
	t.spliced = true
	t.p.metrics.live.WithLabelValues(t.listener, t.backend, stateSpliced, path).Inc()
	t.p.metrics.splicedTotal.WithLabelValues(t.listener, t.backend, path).Inc()
	t.p.splicedLive.Add(1)
}

// PairEnded implements dataplane.Owner; the proxy also calls it when
// Splice fails. The pair's bytes move to the closed totals, the backend
// lease and the limiter's ticket are released.
func (t *tracked) PairEnded(c dataplane.PairCounts) {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return
	}
	t.ended = true
	if t.spliced {
		t.p.metrics.live.WithLabelValues(t.listener, t.backend, stateSpliced, t.path).Dec()
		t.p.splicedLive.Add(-1)
	}
	t.p.metrics.bytes.done(t, t.backend, t.path, c)
	l := t.lease
	t.lease, t.pair, t.cc = nil, nil, nil
	t.mu.Unlock()
	l.Release()
	t.ticket.Release()
}

type bytesKey struct{ backend, direction, path string }

// bytesCollector reports bytes per backend: the totals of ended pairs
// plus, at each scrape, what live pairs moved so far (read from the
// kernel for spliced ones). A pair's bytes move from live to closed at
// once under mu, so the counter never goes back.
type bytesCollector struct {
	desc   *prometheus.Desc
	mu     sync.Mutex
	live   map[*tracked]struct{}
	closed map[bytesKey]uint64
}

func (b *bytesCollector) add(t *tracked) {
	b.mu.Lock()
	b.live[t] = struct{}{}
	b.mu.Unlock()
}

func (b *bytesCollector) done(t *tracked, backend, path string, c dataplane.PairCounts) {
	b.mu.Lock()
	delete(b.live, t)
	b.closed[bytesKey{backend, "to_backend", path}] += c.ToBackend
	b.closed[bytesKey{backend, "to_client", path}] += c.ToClient
	b.mu.Unlock()
}

func (b *bytesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }

func (b *bytesCollector) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	sum := make(map[bytesKey]uint64, len(b.closed))
	for k, v := range b.closed {
		sum[k] = v
	}
	live := make([]*tracked, 0, len(b.live))
	for t := range b.live {
		live = append(live, t)
	}
	b.mu.Unlock()
	// Read outside mu: a kernel read takes the pair's lock. A pair that
	// ends meanwhile is counted in neither or, if it ended after the copy
	// above, in its live value: the next scrape has it in closed.
	for _, t := range live {
		t.mu.Lock()
		be, path, pair := t.backend, t.path, t.pair
		t.mu.Unlock()
		if pair == nil {
			continue // Splice has not handed it over yet
		}
		c := pair.Counts()
		sum[bytesKey{be, "to_backend", path}] += c.ToBackend
		sum[bytesKey{be, "to_client", path}] += c.ToClient
	}
	for k, v := range sum {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.CounterValue, float64(v), k.backend, k.direction, k.path)
	}
}

// healthCollector reports the pool's health states through the hook set
// with Proxy.SetBackendStates; nothing without one.
type healthCollector struct {
	m    *metrics
	desc *prometheus.Desc
}

func (h *healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *healthCollector) Collect(ch chan<- prometheus.Metric) {
	f := h.m.health.Load()
	if f == nil {
		return
	}
	for _, s := range (*f)() {
		v := 0.0
		if s.Up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(h.desc, prometheus.GaugeValue, v, s.Addr)
	}
}

// dataplaneCollector reports the data plane's own counters.
type dataplaneCollector struct{ p *Proxy }

var (
	dpSplicedDesc = prometheus.NewDesc("wsplice_dataplane_spliced_pairs", "Pairs spliced right now, as the data plane counts them.", []string{"dataplane"}, nil)
	dpBytesDesc   = prometheus.NewDesc("wsplice_dataplane_bytes_total", "Bytes the data plane moved after splicing, by who moved them (kernel: sockmap redirect; userspace).", []string{"dataplane", "mover"}, nil)
	dpClosedDesc  = prometheus.NewDesc("wsplice_dataplane_pairs_closed_total", "Spliced pairs the data plane closed itself, by reason (idle_timeout; overflow: reset because a side kept sending while its answers went unread, past what the kernel path holds back).", []string{"dataplane", "reason"}, nil)
)

func (d *dataplaneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dpSplicedDesc
	ch <- dpBytesDesc
	ch <- dpClosedDesc
}

func (d *dataplaneCollector) Collect(ch chan<- prometheus.Metric) {
	st := d.p.dp.Stats()
	ch <- prometheus.MustNewConstMetric(dpSplicedDesc, prometheus.GaugeValue, float64(st.Spliced), st.Dataplane)
	ch <- prometheus.MustNewConstMetric(dpBytesDesc, prometheus.CounterValue, float64(st.BytesKernel), st.Dataplane, "kernel")
	ch <- prometheus.MustNewConstMetric(dpBytesDesc, prometheus.CounterValue, float64(st.BytesUserspace), st.Dataplane, "userspace")
	ch <- prometheus.MustNewConstMetric(dpClosedDesc, prometheus.CounterValue, float64(st.IdleClosed), st.Dataplane, "idle_timeout")
	ch <- prometheus.MustNewConstMetric(dpClosedDesc, prometheus.CounterValue, float64(st.OverflowResets), st.Dataplane, "overflow")
}

// SetBackendStates sets the function the wsplice_backend_up metric reads
// at each scrape (the pool's health checks); nil removes it.
func (p *Proxy) SetBackendStates(f func() []BackendState) {
	if f == nil {
		p.metrics.health.Store(nil)
		return
	}
	p.metrics.health.Store(&f)
}
