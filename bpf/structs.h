/* Map values shared with userspace (loader/ mirrors them via bpf2go). */
#pragma once

#include <linux/types.h>

/* Written only by userspace, when it splices the socket (a socket
 * without one is in its handshake: every byte passed, counted). */
struct conn_ctl {
	/* Socket cookie of the other socket of the pair. */
	__u64 peer;
	/* Bytes userspace has read from this socket and finished writing to
	 * the peer. While it lags conn_stats.passed, the verdict keeps
	 * passing so that order is kept. */
	__u64 consumed;
	/* Bumped by userspace when it hands a direction that never
	 * redirected back to the kernel (bytes passed around the switch at
	 * splice time), so that the next pass is announced again. A
	 * direction that has redirected leaves the kernel for good on its
	 * first pass. */
	__u32 epoch;
	/* enum wsplice_mode */
	__u32 mode;
};

/* Written only by the verdict program, which creates it zeroed on the
 * socket's first segment (userspace reads a missing entry as zeros). */
struct conn_stats {
	/* Bytes left in this socket's own receive queue for userspace. */
	__u64 passed;
	/* Bytes redirected to the peer. */
	__u64 redirected;
	/* Peer's tcp_sock.write_seq once every redirected byte has been
	 * written into it; the gap to the live write_seq is what still waits
	 * in the peer's psock queue, which no socket accounting sees. */
	__u32 peer_seq_goal;
	/* 1 while the last verdict redirected, so peer_seq_goal is valid. */
	__u32 redirecting;
	/* conn_ctl.epoch + 1 once a pass in redirect mode was announced on
	 * the ring buffer: one notice per epoch, after which userspace owns
	 * the direction (until it hands it back with a new epoch). */
	__u32 notified;
	/* TCP sequence number just past the last byte the verdict saw, to
	 * spot segments that start before it (see trim_overlap). */
	__u32 next_seq;
	/* bpf_ktime_get_ns() of the last byte seen, for idle tracking. */
	__u64 last_ns;
	/* Bytes of retransmitted segments the verdict had already seen, cut
	 * off before redirecting or passing. */
	__u64 overlap_trimmed;
	/* 1 once next_seq holds a value. */
	__u32 seq_valid;
	/* Why the connection cannot go on intact, and userspace resets it
	 * (enum wsplice_broken; 0: it can). */
	__u32 broken;
	/* 1 once the socket's FIN reached the verdict of a spliced socket
	 * with every byte before it already in the peer socket (see
	 * note_fin): userspace may then pass the FIN on at once. */
	__u32 fin_clear;
	__u32 _pad;
};

/* Ring buffer record: this socket has bytes for userspace to drain
 * (kind WSPLICE_EVENT_PASS) or must be reset (WSPLICE_EVENT_BROKEN). */
struct pass_event {
	__u64 cookie;
	__u32 kind;
	__u32 _pad;
};
