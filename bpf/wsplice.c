// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* wsplice's kernel data path: one sk_skb stream verdict attached to
 * sock_hash. Userspace owns a socket's stream until it sets
 * conn_ctl.mode = REDIRECT; from then on every segment is redirected to
 * the peer socket, unless the peer is full (no egress backpressure exists
 * for redirects: KERNEL-NOTES 4) or userspace still has passed bytes to
 * forward, in which case it is passed to the socket's own receive queue,
 * which is accounted and closes the TCP window. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Kernel 6.2+; weak so the object still loads where it is missing (then
 * no overlap is detected, as before). */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* Least backlog (bytes redirected to a peer but not yet written into it)
 * allowed before passing; set by the loader before load. A peer's own
 * sk_sndbuf raises it. Too small and a kworker scheduled late sends bulk
 * flows down the slow path; the cost of a stalled reader is this plus its
 * send buffer. */
volatile const __u32 backlog_floor = WSPLICE_BACKLOG_FLOOR;

/* Bytes passed to a spliced socket and not yet forwarded by userspace may
 * exceed twice the socket's receive buffer by this much (the drain's read
 * buffer, what TCP's window let in before it closed); set by the loader
 * before load. Beyond that the passes are no longer held back by TCP:
 * queued behind bytes redirected *to* this socket (its remote end does
 * not read), they wait on the psock's own queue, which no socket
 * accounting sees, and the window stays open. A sender that does not
 * read its answers could then pin gigabytes of kernel memory; the
 * connection is reset instead (seen on 6.18: 2 GB in 10 s from one
 * client). */
volatile const __u32 pass_slack = WSPLICE_PASS_SLACK;

/* Room in the peer, as peer_room sees it. */
enum room {
	ROOM_OK = 0,	/* backlog under the limit: redirect */
	ROOM_SOFT = 1,	/* over the limit: pass, unless passing could stall */
	ROOM_HARD = 2,	/* over four times the limit: pass */
};

/* peer_room compares what was redirected to the peer but not yet written
 * into it (the psock backlog, drained by a kworker, which no socket
 * accounting sees) with max(peer's sk_sndbuf, backlog_floor). The send
 * queue itself is capped at sk_sndbuf by TCP (the kworker gets EAGAIN and
 * retries), so a stalled reader costs a bounded amount, while a bulk flow,
 * whose send queue sits full by design, keeps redirecting. It also returns
 * the peer's write_seq. */
static __always_inline enum room peer_room(__u64 *peer_cookie, struct conn_stats *st,
					   __u32 *write_seq)
{
	enum room room = ROOM_HARD;
	struct tcp_sock___ws *tp;
	struct bpf_sock *sk;

	sk = bpf_map_lookup_elem(&sock_hash, peer_cookie);
	if (!sk)
		return ROOM_HARD;
	tp = (struct tcp_sock___ws *)bpf_skc_to_tcp_sock(sk);
	if (tp) {
		struct sock___ws *s = (struct sock___ws *)tp;
		__u32 seq = tp->write_seq;
		__s64 backlog = st->redirecting ? (__s32)(st->peer_seq_goal - seq) : 0;
		__s64 limit = s->sk_sndbuf;

		if (limit < backlog_floor)
			limit = backlog_floor;
		*write_seq = seq;
		if (backlog < limit)
			room = ROOM_OK;
		else if (backlog < 4 * limit)
			room = ROOM_SOFT;
	}
	bpf_sk_release(sk);
	return room;
}

/* inbound_pending tells whether bytes redirected *to* this socket by its
 * peer still wait in this socket's psock queue. A pass must then wait
 * too: the kernel queues it behind them to keep order. If those bytes wait
 * for this socket's remote end to read, and that end waits for us to read
 * what we pass (an echo server that reads, then writes), both stall; so
 * over the soft limit we keep redirecting while this holds. */
static __always_inline int inbound_pending(__u64 *cookie, __u64 *peer_cookie)
{
	struct conn_stats *pst;
	struct tcp_sock___ws *tp;
	struct bpf_sock *sk;
	int pending = 0;

	pst = bpf_map_lookup_elem(&stats_map, peer_cookie);
	if (!pst || !pst->redirecting)
		return 0;
	sk = bpf_map_lookup_elem(&sock_hash, cookie);
	if (!sk)
		return 0;
	tp = (struct tcp_sock___ws *)bpf_skc_to_tcp_sock(sk);
	if (tp)
		pending = (__s32)(pst->peer_seq_goal - tp->write_seq) > 0;
	bpf_sk_release(sk);
	return pending;
}

/* over_pass_limit tells whether passing len more bytes would take the
 * socket's passed-but-unforwarded bytes past 2 * sk_rcvbuf + pass_slack
 * (see pass_slack). The socket lookup only runs past the slack alone. */
static __always_inline int over_pass_limit(__u64 *cookie, struct conn_ctl *ctl,
					   struct conn_stats *st, __u32 len)
{
	__u64 backlog = st->passed + len - ctl->consumed;
	struct tcp_sock___ws *tp;
	struct bpf_sock *sk;
	__u64 limit = 0;

	if (backlog <= pass_slack)
		return 0;
	sk = bpf_map_lookup_elem(&sock_hash, cookie);
	if (!sk)
		return 0;
	tp = (struct tcp_sock___ws *)bpf_skc_to_tcp_sock(sk);
	if (tp) {
		struct sock___ws *s = (struct sock___ws *)tp;
		int rcvbuf = s->sk_rcvbuf;

		limit = 2 * (__u64)(rcvbuf > 0 ? rcvbuf : 0) + pass_slack;
	}
	bpf_sk_release(sk);
	return limit && backlog > limit;
}

static __always_inline void announce_pass(__u64 cookie, struct conn_ctl *ctl,
					  struct conn_stats *st)
{
	struct pass_event ev = { .cookie = cookie };

	if (st->notified == ctl->epoch + 1)
		return;
	if (bpf_ringbuf_output(&pass_events, &ev, sizeof(ev), 0) == 0)
		st->notified = ctl->epoch + 1;
}

static __always_inline void announce_broken(__u64 cookie)
{
	struct pass_event ev = { .cookie = cookie, .kind = WSPLICE_EVENT_BROKEN };

	bpf_ringbuf_output(&pass_events, &ev, sizeof(ev), 0);
}

/* trim_overlap cuts off the head of a segment that repeats bytes this
 * verdict has already seen. TCP queues a retransmitted segment that
 * starts before rcv_nxt but ends after it ("partial packet" in
 * tcp_data_queue) and leaves readers to skip the old part by comparing
 * with copied_seq; tcp_read_skb, which feeds this verdict, hands over the
 * whole segment. On 6.18 this duplicated 848 B to 256 KiB of a stream
 * whenever the peer's TCP retransmitted early (a tail loss probe, or an
 * RTO merging segments, both common while a reader stalls), which the
 * slow path makes frequent. Returns the bytes left, or -1 when the
 * segment cannot be made right (the connection is then reset). */
static __always_inline int trim_overlap(struct __sk_buff *skb, struct conn_stats *st, __u32 len)
{
	struct sk_buff___ws *kskb;
	__u32 seq, overlap;
	int i;

	if (!bpf_cast_to_kern_ctx)
		return len;
	kskb = bpf_cast_to_kern_ctx(skb);
	if (bpf_probe_read_kernel(&seq, sizeof(seq), &kskb->cb[0]))
		return len;
	if (!st->seq_valid || (__s32)(st->next_seq - seq) <= 0) {
		st->seq_valid = 1;
		st->next_seq = seq + len;
		return len;
	}
	overlap = st->next_seq - seq;
	if (overlap >= len) {
		/* Nothing new: TCP should not queue this, but be sure. */
		st->overlap_trimmed += len;
		return 0;
	}
	st->next_seq = seq + len;
	st->overlap_trimmed += overlap;
	for (i = 0; i < WSPLICE_TRIM_STEPS && overlap > 0; i++) {
		__u32 step = overlap > WSPLICE_TRIM_STEP ? WSPLICE_TRIM_STEP : overlap;

		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0))
			return -1;
		overlap -= step;
	}
	if (overlap > 0)
		return -1;
	return skb->len;
}

/* stats_of returns the socket's counters, creating them on its first
 * segment: userspace creates no entry at adoption, which saves a map
 * update per socket (most of a connection's set-up cost is syscalls),
 * and forgets both at close. Sockets that never receive a byte never get
 * one. */
static __always_inline struct conn_stats *stats_of(__u64 cookie)
{
	struct conn_stats *st, zero = {};

	st = bpf_map_lookup_elem(&stats_map, &cookie);
	if (st)
		return st;
	/* BPF_NOEXIST: another CPU may have created it meanwhile; then the
	 * lookup below finds that one. */
	bpf_map_update_elem(&stats_map, &cookie, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&stats_map, &cookie);
}

/* note_fin runs on a spliced socket's FIN (an empty skb: KERNEL-NOTES 13)
 * and records in fin_clear whether every byte before it is already in the
 * peer socket: userspace has forwarded every byte the verdict passed
 * (ctl->consumed), and the kworker has written every byte redirected (the
 * peer's write_seq has reached peer_seq_goal; with the last verdict a
 * pass, the slow path wrote the passed bytes only once the peer held
 * every redirected one). tcp_read_skb hands segments over in order, so
 * every byte before the FIN has been through this verdict. Userspace,
 * woken by the FIN, then passes it on after one map lookup instead of
 * reading both sockets' TCP_INFO and the peer's send queue; when the FIN
 * came with data, or something was still on its way, fin_clear stays 0
 * and it checks as before. */
static __always_inline void note_fin(__u64 cookie, struct conn_ctl *ctl)
{
	struct tcp_sock___ws *tp;
	struct conn_stats *st;
	struct bpf_sock *sk;
	int written = 0;

	if (ctl->mode != WSPLICE_MODE_REDIRECT)
		return;
	st = bpf_map_lookup_elem(&stats_map, &cookie);
	if (!st || st->broken || ctl->consumed != st->passed)
		return;
	if (st->redirecting) {
		sk = bpf_map_lookup_elem(&sock_hash, &ctl->peer);
		if (!sk)
			return;
		tp = (struct tcp_sock___ws *)bpf_skc_to_tcp_sock(sk);
		written = tp && (__s32)(st->peer_seq_goal - tp->write_seq) <= 0;
		bpf_sk_release(sk);
		if (!written)
			return;
	}
	st->fin_clear = 1;
}

SEC("sk_skb/stream_verdict")
int wsplice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct conn_stats *st;
	struct conn_ctl *ctl;
	__u32 len = skb->len;
	__u32 seq = 0;
	int ret;

	/* No control entry: a socket in its handshake; userspace owns its
	 * stream, and every byte is counted (passed) from the first one, so
	 * that Splice knows what userspace has read. Userspace creates the
	 * entry when it splices the socket, which saves a map update per
	 * socket at adoption (a connection's set-up cost is mostly
	 * syscalls). */
	ctl = bpf_map_lookup_elem(&ctl_map, &cookie);

	/* A FIN arrives as an empty skb. Redirecting it makes the peer
	 * report EPIPE (KERNEL-NOTES 13); passing it is no better: the empty
	 * skb cannot be queued as a message, lands on the psock backlog, and
	 * the kworker reports EPIPE on this socket and disables its TX, so
	 * everything later redirected to it is dropped (seen on 6.18 as a
	 * truncated echo after a client half-close). Dropping it is safe: TCP
	 * has already recorded the FIN (read() returns 0) and userspace
	 * propagates it itself. */
	if (len == 0) {
		if (!ctl)
			return SK_PASS;
		note_fin(cookie, ctl);
		return SK_DROP;
	}

	st = stats_of(cookie);
	if (!st) {
		/* Without counters order cannot be kept: reset, as for a
		 * segment that cannot be trimmed. */
		announce_broken(cookie);
		return SK_DROP;
	}

	st->last_ns = bpf_ktime_get_ns();

	if (st->broken)
		return SK_DROP;
	ret = trim_overlap(skb, st, len);
	if (ret < 0) {
		st->broken = WSPLICE_BROKEN_OVERLAP;
		announce_broken(cookie);
		return SK_DROP;
	}
	if (ret == 0)
		return SK_DROP;
	len = ret;

	if (!ctl)
		goto pass;
	if (ctl->mode != WSPLICE_MODE_REDIRECT) {
		/* A direction left to userspace for good. */
		if (over_pass_limit(&cookie, ctl, st, len))
			goto overflow;
		goto pass;
	}
	/* Bytes passed earlier are still waiting for userspace: keep
	 * passing until it has forwarded them all, or order breaks. */
	if (ctl->consumed != st->passed)
		goto pass_notify;
	switch (peer_room(&ctl->peer, st, &seq)) {
	case ROOM_OK:
		break;
	case ROOM_SOFT:
		if (inbound_pending(&cookie, &ctl->peer))
			break;
		goto pass_notify;
	default:
		goto pass_notify;
	}

	if (!st->redirecting) {
		/* Userspace drained the backlog before it wrote the last
		 * passed bytes, so the peer's write_seq is exact here. */
		st->peer_seq_goal = seq;
		st->redirecting = 1;
	}
	st->peer_seq_goal += len;
	st->redirected += len;
	return bpf_sk_redirect_hash(skb, &sock_hash, &ctl->peer, 0);

pass_notify:
	if (over_pass_limit(&cookie, ctl, st, len))
		goto overflow;
	/* Counted before the notice: userspace reading the counters after
	 * the notice (the ring buffer commit orders them) finds the bytes
	 * to drain, so no notice is ever spent on a count it cannot see. */
	st->redirecting = 0;
	st->passed += len;
	announce_pass(cookie, ctl, st);
	return SK_PASS;
pass:
	st->redirecting = 0;
	st->passed += len;
	return SK_PASS;
overflow:
	st->broken = WSPLICE_BROKEN_OVERFLOW;
	announce_broken(cookie);
	return SK_DROP;
}
