/* The kernel types network.bpf.c reads, and only the fields it reads.
 *
 * As in the process plugin: CO-RE matches every field below by name against the running
 * kernel's BTF at load time (preserve_access_index), so offsets here are never used and
 * field order does not matter. Fields the kernel keeps in anonymous unions
 * (`skc_daddr`, `skc_dport`, ...) are found there by libbpf's relocation; `sk_protocol`,
 * a bitfield before Linux 5.6, is read with BPF_CORE_READ_BITFIELD_PROBED. */
#ifndef HIDS_VMLINUX_H
#define HIDS_VMLINUX_H

typedef unsigned char __u8;
typedef short unsigned int __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long int __s64;
typedef long long unsigned int __u64;
typedef __u8 u8;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef unsigned short umode_t;
typedef int pid_t;
typedef _Bool bool;

enum {
	false = 0,
	true = 1,
};

enum {
	BPF_ANY = 0,
};

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;


struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	pid_t pid;
	pid_t tgid;
	struct task_struct *group_leader;
	struct files_struct *files;
	char comm[16];
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
};

struct inode {
	umode_t i_mode;
	long unsigned int i_ino;
};

struct file {
	struct inode *f_inode;
	void *private_data;
};

struct in6_addr {
	union {
		u8 u6_addr8[16];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	u16 sk_protocol;
};

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

typedef enum {
	SS_FREE = 0,
	SS_UNCONNECTED = 1,
	SS_CONNECTING = 2,
	SS_CONNECTED = 3,
	SS_DISCONNECTING = 4,
} socket_state;

struct socket {
	socket_state state;
	short type;
	struct sock *sk;
	struct file *file;
};

/* A socket and its inode are one allocation (net/socket.c): the inode's address says
 * where the socket is without reading memory. */
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
};

#pragma clang attribute pop

#endif
