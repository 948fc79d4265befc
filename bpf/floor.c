// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The sockmap floor: a benchmark reference, not part of wsplice's data
 * path. The least an sk_skb stream verdict can do to splice two TCP
 * sockets: look the peer up and redirect to its egress. No counters, no
 * backpressure, no overlap trimming, no hand-over to userspace, so none
 * of the pitfalls wsplice.c guards against is handled (KERNEL-NOTES):
 * bench/evfloor -sockmap uses it to measure what the kernel mechanism
 * itself costs per message and per connection, against wsplice's kernel
 * path in the same benchmark run. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Spliced sockets by cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WSPLICE_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} floor_socks SEC(".maps");

/* Each spliced socket's peer cookie; LRU, so that nothing needs deleting
 * when a pair closes (the floor pays no bookkeeping per connection). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} floor_peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int floor_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u64 *peer;

	/* A FIN's empty skb: redirected, it breaks the peer (see wsplice.c);
	 * TCP has recorded the FIN, userspace passes it on. */
	if (skb->len == 0)
		return SK_DROP;
	peer = bpf_map_lookup_elem(&floor_peers, &cookie);
	if (!peer)
		return SK_PASS;
	return bpf_sk_redirect_hash(skb, &floor_socks, peer, 0);
}
