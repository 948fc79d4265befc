// Package loader loads wsplice's BPF programs and is the only package that
// touches cilium/ebpf. Its Splicer implements dataplane.Dataplane with
// sockmap: established pairs are spliced in the kernel.
package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// ErrUnsupported wraps every reason the kernel path cannot be used here.
var ErrUnsupported = errors.New("sockmap data path unsupported")

// Options tune the kernel data path.
type Options struct {
	// Fallback serves pairs the kernel path cannot take (a socket that
	// left ESTABLISHED before it could be inserted, a full map). If nil,
	// such pairs are closed.
	Fallback dataplane.Dataplane
	// BacklogFloor is the least number of bytes the kernel may hold
	// redirected towards a socket that has not taken them yet before the
	// verdict passes to userspace; a peer's larger send buffer raises it.
	// 0 means DefaultBacklogFloor.
	BacklogFloor uint32
	// PassSlack is how far bytes passed to a spliced socket and not yet
	// forwarded may go past twice its receive buffer before the pair is
	// reset (a side that sends without reading its answers; see
	// bpf/wsplice.c). 0 means DefaultPassSlack.
	PassSlack uint32
}

// DefaultPassSlack is what a side may send beyond twice its socket's
// receive buffer while its answers wait unread (the kernel then holds it
// all, unaccounted: see bpf/wsplice.c) before the pair is reset. A client
// that writes 64 MiB in one go while it reads the echo concurrently
// (TestSpliceHalfCloseWhileEchoing) stays under it; one that never reads
// is stopped there instead of at the machine's memory.
const DefaultPassSlack = 64 << 20

// DefaultBacklogFloor keeps bulk flows in the kernel when the kworker that
// carries redirects runs late, and bounds what a reader that stalls can
// make the kernel hold (this plus its socket's send buffer, per direction).
const DefaultBacklogFloor = 4 << 20

// Splicer is the sockmap data path. After Splice, a pair costs no
// goroutine and no buffer: one epoll loop watches every spliced socket for
// FIN and errors, and one ring-buffer reader hears when the verdict starts
// passing bytes to userspace because a peer is full.
type Splicer struct {
	log      zerolog.Logger
	fallback dataplane.Dataplane
	objs     wspliceObjects
	events   *ringbuf.Reader
	epfd     int
	epFile   *os.File // epfd, waited on through Go's netpoller
	wakefd   int      // eventfd that stops the epoll loop
	loops    sync.WaitGroup
	drains   sync.WaitGroup

	mu sync.Mutex
	// socks are the adopted sockets by cookie: the one index of
	// sockets and spliced pairs (a pair is found from its sockets).
	socks  map[uint64]*sock
	closed bool
	// idle closes pairs idle for their timeout.
	idle *dataplane.IdleQueue

	spliced        atomic.Int64
	splicedTotal   atomic.Uint64
	bytesUser      atomic.Uint64
	bytesKernel    atomic.Uint64 // redirected bytes of sockets already gone
	overlapTrimmed atomic.Uint64 // retransmitted bytes cut by the verdict, of sockets gone
	overflowResets atomic.Uint64 // pairs reset past the pass limit (pass_slack)
	idleClosed     atomic.Uint64
	finsAtOnce     atomic.Uint64 // FINs passed on by the verdict's word alone (conn_stats.fin_clear)
	idleTimeout    atomic.Int64  // time.Duration for pairs spliced from now on
}

// New loads and attaches the BPF programs. On any failure it returns an
// error wrapping ErrUnsupported that says why; nothing stays loaded.
func New(log zerolog.Logger, opts Options) (_ *Splicer, err error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: remove memlock limit: %w", ErrUnsupported, err)
	}
	s := &Splicer{
		log:      log.With().Str("component", "sockmap").Logger(),
		fallback: opts.Fallback,
		epfd:     -1,
		wakefd:   -1,
		socks:    make(map[uint64]*sock),
		idle:     dataplane.NewIdleQueue(),
	}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	spec, err := loadWsplice()
	if err != nil {
		return nil, fmt.Errorf("%w: parse BPF object: %w", ErrUnsupported, err)
	}
	floor := opts.BacklogFloor
	if floor == 0 {
		floor = DefaultBacklogFloor
	}
	if err := spec.Variables["backlog_floor"].Set(floor); err != nil {
		return nil, fmt.Errorf("set backlog_floor: %w", err)
	}
	slack := opts.PassSlack
	if slack == 0 {
		slack = DefaultPassSlack
	}
	if err := spec.Variables["pass_slack"].Set(slack); err != nil {
		return nil, fmt.Errorf("set pass_slack: %w", err)
	}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: verifier rejected the program: %+v", ErrUnsupported, ve)
		}
		return nil, fmt.Errorf("%w: load BPF objects: %w", ErrUnsupported, err)
	}
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  s.objs.SockHash.FD(),
		Program: s.objs.WspliceVerdict,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: attach sk_skb verdict to sock_hash: %w", ErrUnsupported, err)
	}
	if s.events, err = ringbuf.NewReader(s.objs.PassEvents); err != nil {
		return nil, fmt.Errorf("%w: open ring buffer: %w", ErrUnsupported, err)
	}
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with Go's netpoller
	// and epollLoop parks a goroutine instead of a thread (see there).
	if err := unix.SetNonblock(s.epfd, true); err != nil {
		unix.Close(s.epfd)
		s.epfd = -1
		return nil, fmt.Errorf("set epoll fd non-blocking: %w", err)
	}
	s.epFile = os.NewFile(uintptr(s.epfd), "wsplice-epoll")
	if s.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// The eventfd's data is cookie 0, which no socket has.
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, s.wakefd, &ev); err != nil {
		return nil, fmt.Errorf("epoll_ctl add eventfd: %w", err)
	}
	s.loops.Add(2)
	go s.epollLoop()
	go s.eventLoop()
	return s, nil
}

// release undoes New: programs detached, maps and fds closed.
func (s *Splicer) release() {
	if s.events != nil {
		s.events.Close()
	}
	if s.wakefd >= 0 {
		unix.Write(s.wakefd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
	s.loops.Wait()
	if s.objs.SockHash != nil && s.objs.WspliceVerdict != nil {
		// Errors are expected when the attach itself failed.
		_ = link.RawDetachProgram(link.RawDetachProgramOptions{
			Target:  s.objs.SockHash.FD(),
			Program: s.objs.WspliceVerdict,
			Attach:  ebpf.AttachSkSKBStreamVerdict,
		})
	}
	s.objs.Close()
	if s.epFile != nil {
		s.epFile.Close()
	} else if s.epfd >= 0 {
		unix.Close(s.epfd)
	}
	if s.wakefd >= 0 {
		unix.Close(s.wakefd)
	}
}

// Name implements dataplane.Dataplane.
func (s *Splicer) Name() string { return "sockmap" }

// Stats implements dataplane.Dataplane. It walks the maps, so it costs
// O(sockets); it serves tests and the admin endpoint, not the data path.
func (s *Splicer) Stats() dataplane.Stats {
	st := dataplane.Stats{
		Dataplane:      s.Name(),
		Spliced:        s.spliced.Load(),
		SplicedTotal:   s.splicedTotal.Load(),
		BytesUserspace: s.bytesUser.Load(),
		BytesKernel:    s.bytesKernel.Load(),
		OverlapTrimmed: s.overlapTrimmed.Load(),
		OverflowResets: s.overflowResets.Load(),
		IdleClosed:     s.idleClosed.Load(),
	}
	var (
		key uint64
		val wspliceConnStats
		raw []byte
	)
	it := s.objs.StatsMap.Iterate()
	for it.Next(&key, &val) {
		st.BytesKernel += val.Redirected
		st.OverlapTrimmed += val.OverlapTrimmed
	}
	it = s.objs.SockHash.Iterate()
	for it.Next(&key, &raw) {
		st.MapEntries++
	}
	if s.fallback != nil {
		fb := s.fallback.Stats()
		st.Spliced += fb.Spliced
		st.SplicedTotal += fb.SplicedTotal
		st.BytesUserspace += fb.BytesUserspace
		st.IdleClosed += fb.IdleClosed // TLS pairs, and any the kernel path could not take
	}
	return st
}

// eventBroken is pass_event.kind for a socket the verdict gave up on
// (enum wsplice_event in bpf/consts.h).
const eventBroken = 1

// brokenOverflow is conn_stats.broken for a socket whose passed bytes
// outgrew what TCP holds back (enum wsplice_broken in bpf/consts.h).
const brokenOverflow = 2

// eventLoop reads the verdict's notices that a spliced socket has started
// passing bytes, and starts draining that socket.
func (s *Splicer) eventLoop() {
	defer s.loops.Done()
	for {
		rec, err := s.events.Read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				s.log.Error().Err(err).Msg("ring buffer read failed; backpressure notices stop")
			}
			return
		}
		if len(rec.RawSample) < 8 {
			continue
		}
		cookie := binary.LittleEndian.Uint64(rec.RawSample)
		broken := len(rec.RawSample) >= 12 && binary.LittleEndian.Uint32(rec.RawSample[8:]) == eventBroken
		s.mu.Lock()
		sk := s.socks[cookie]
		s.mu.Unlock()
		switch {
		case sk == nil:
		case broken:
			if st, err := s.stats(cookie); err == nil && st.Broken == brokenOverflow {
				s.overflowResets.Add(1)
				s.log.Warn().Uint64("cookie", cookie).Uint64("passed", st.Passed).
					Msg("a side kept sending while its answers went unread, past what the kernel path can hold back; resetting the connection rather than buffering without bound")
			} else {
				s.log.Error().Uint64("cookie", cookie).Msg("a retransmitted segment overlapped more than the verdict can cut; resetting the connection rather than corrupting it")
			}
			s.resetBroken(sk)
		case sk.pair != nil:
			s.kick(sk, 0)
		}
	}
}

// epollLoop watches spliced sockets for FIN (EPOLLRDHUP), errors and
// hang-ups. In steady state it never wakes: EPOLLIN is not in the mask, so
// the wake-ups each redirected segment causes on the source socket are
// filtered out by epoll.
//
// It waits through Go's netpoller (the epoll fd is itself pollable), not
// in a blocking epoll_wait: a goroutine blocked in a system call holds a
// scheduler slot until sysmon takes it back, which on a busy handshake
// load woke sysmon every 20 us and cost about two context switches per
// handshake (bench/profiles/README.md).
func (s *Splicer) epollLoop() {
	defer s.loops.Done()
	events := make([]unix.EpollEvent, 128)
	rc, err := s.epFile.SyscallConn()
	if err != nil {
		s.log.Error().Err(err).Msg("epoll fd not pollable; close detection stops")
		return
	}
	for {
		var n int
		var werr error
		err := rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			// Nothing ready: park until the netpoller sees the epoll
			// fd readable. It is edge-triggered there, which is safe
			// because this loop only parks after a wait found nothing.
			return n != 0 || werr != nil
		})
		if err == nil && errors.Is(werr, unix.EINTR) {
			continue
		}
		if err == nil {
			err = werr
		}
		if err != nil {
			s.log.Error().Err(err).Msg("epoll_wait failed; close detection stops")
			return
		}
		for i := range events[:n] {
			cookie := eventCookie(&events[i])
			if cookie == 0 {
				return // the eventfd: stop
			}
			s.mu.Lock()
			sk := s.socks[cookie]
			s.mu.Unlock()
			if ev := events[i]; sk != nil && sk.pair != nil {
				s.kick(sk, ev.Events)
			}
		}
	}
}

// OverlapTrimSupported reports whether the running kernel has the kfunc
// (bpf_cast_to_kern_ctx, 6.2+) the verdict uses to cut the already-seen
// head of retransmitted segments. Without it the program still loads, but
// a retransmission overlapping received bytes reaches the peer twice
// (README, How it works): the "auto" data path avoids the kernel path then.
// Without the kernel's BTF it reports an error instead: the program is
// CO-RE and cannot load at all then.
var OverlapTrimSupported = sync.OnceValues(func() (bool, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false, fmt.Errorf("%w: no usable kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): %w", ErrUnsupported, err)
	}
	var fn *btf.Func
	return spec.TypeByName("bpf_cast_to_kern_ctx", &fn) == nil, nil
})
