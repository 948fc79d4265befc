/* Constants shared by wsplice's BPF programs. Capacities can be overridden
 * at build time with -D. */
#pragma once

/* Sockets wsplice can hold in its maps at once (two per spliced pair). */
#ifndef WSPLICE_MAX_SOCKS
#define WSPLICE_MAX_SOCKS 262144
#endif

/* Ring buffer for "this socket started passing" notices, in bytes. */
#ifndef WSPLICE_EVENTS_BYTES
#define WSPLICE_EVENTS_BYTES (256 * 1024)
#endif

/* Default for the backlog_floor variable, in bytes. */
#ifndef WSPLICE_BACKLOG_FLOOR
#define WSPLICE_BACKLOG_FLOOR (1 << 20)
#endif

/* Default for the pass_slack variable, in bytes. */
#ifndef WSPLICE_PASS_SLACK
#define WSPLICE_PASS_SLACK (64 << 20)
#endif

/* conn_ctl.mode */
enum wsplice_mode {
	/* Userspace owns the stream (handshake): every byte goes to the
	 * socket's own receive queue. */
	WSPLICE_MODE_PASS = 0,
	/* Spliced: bytes are redirected to the peer while the peer has room
	 * and userspace has forwarded every byte passed before. */
	WSPLICE_MODE_REDIRECT = 1,
};

/* pass_event.kind */
enum wsplice_event {
	WSPLICE_EVENT_PASS = 0,
	WSPLICE_EVENT_BROKEN = 1,
};

/* conn_stats.broken */
enum wsplice_broken {
	/* A segment overlapped more than the verdict can cut. */
	WSPLICE_BROKEN_OVERLAP = 1,
	/* Passed bytes outgrew what TCP holds back (see pass_slack). */
	WSPLICE_BROKEN_OVERFLOW = 2,
};

/* bpf_skb_adjust_room removes at most this many bytes per call. */
#define WSPLICE_TRIM_STEP 4095
/* Calls trim_overlap may make: the largest overlap it can cut is
 * WSPLICE_TRIM_STEP times this (about 1 MiB). */
#ifndef WSPLICE_TRIM_STEPS
#define WSPLICE_TRIM_STEPS 256
#endif
