/* The few kernel fields the verdict reads, relocated by CO-RE against the
 * running kernel's BTF: no generated vmlinux.h in the tree. */
#pragma once

#include <linux/types.h>

struct sock_common___ws {
} __attribute__((preserve_access_index));

struct sock___ws {
	int sk_rcvbuf;
	int sk_sndbuf;
	int sk_wmem_queued;
} __attribute__((preserve_access_index));

struct tcp_sock___ws {
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* The kernel's sk_buff, reached with bpf_cast_to_kern_ctx: only its
 * control block, whose first words are TCP's (struct tcp_skb_cb: seq,
 * end_seq), untouched by the sk_skb path. */
struct sk_buff___ws {
	char cb[48];
} __attribute__((preserve_access_index));
