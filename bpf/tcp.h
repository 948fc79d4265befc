/* The few kernel fields the verdict reads, relocated by CO-RE against the
 * running kernel's BTF: no generated vmlinux.h in the tree. */
#pragma once

#include <linux/types.h>

struct sock_common___ws {
} __attribute__((preserve_access_index));

struct sock___ws {
	int sk_sndbuf;
	int sk_wmem_queued;
} __attribute__((preserve_access_index));

struct tcp_sock___ws {
	__u32 write_seq;
} __attribute__((preserve_access_index));
