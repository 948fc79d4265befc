/* wsplice's BPF maps. Keys are socket cookies (bpf_get_socket_cookie). */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

/* Every adopted socket, from accept/connect until close. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WSPLICE_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} sock_hash SEC(".maps");

/* Per-socket control of spliced sockets, written by userspace (peer, mode,
 * consumed). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct conn_ctl);
} ctl_map SEC(".maps");

/* Per-socket counters, created and written by the verdict program. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct conn_stats);
} stats_map SEC(".maps");

/* Notices to userspace: a spliced socket started passing (peer full). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WSPLICE_EVENTS_BYTES);
} pass_events SEC(".maps");
