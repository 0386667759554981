// SPDX-License-Identifier: GPL-2.0
/* Sockets and their owners, read inside the kernel, for hids-plugin-network.
 *
 * dump_sockets (iter/task_file) walks every open file of every process once and writes
 * one fixed-size record per IPv4/IPv6 TCP or UDP socket: owner, descriptor, inode,
 * network namespace, state and both ends. This is the whole join that `ss -p` and
 * osquery do in user space over /proc/<pid>/fd, done without a single readlink. Which
 * states are written is set per walk in `tcp_states`/`udp_states` (a listener scan asks
 * for listeners only; the kernel still visits every descriptor, but copies out a few).
 *
 * The connect(2) and accept(2)/accept4(2) syscall exits report TCP connections with the
 * process that made them: in that process's context, so `current` is the right task,
 * never from the softirq-context state tracepoint, where `current` is whoever the
 * interrupt landed on. They need no kprobes and no BPF trampolines (kernels built
 * without either, like this project's test machines, still have them); connections
 * made through io_uring do not pass there and are not reported. A busy proxy makes the same connection
 * thousands of times a second: an LRU keyed by (process, direction, peer) reports a key
 * once per `fold_ns` and counts the rest, per key (`folded` in the next report) and in
 * total (`counters`). The record layouts are mirrored in src/record.rs, whose tests
 * check them against these structs through the skeleton's types. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define EINPROGRESS 115
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#define DIR_CONNECT 1
#define DIR_ACCEPT 2

/* Indexes into `counters`. */
#define C_EMITTED 0
#define C_FOLDED 1
#define C_RING_FULL 2
#define C_CONNECT_TABLE_FULL 3
#define C_COUNT 4

/* One socket held by one process, as the iterator writes it. */
struct sock_record {
	u32 tgid;
	s32 fd;
	u64 inode;
	u32 netns;
	u8 family;
	u8 protocol;
	u8 state;
	u8 pad;
	u16 local_port;
	u16 remote_port;
	u8 local_addr[16];
	u8 remote_addr[16];
};

/* One connect or accept, as the ring buffer carries it. */
struct conn_event {
	u64 ts_ns;
	u64 folded;
	u32 tgid;
	u32 uid;
	u32 netns;
	u8 direction;
	u8 family;
	u16 pad;
	u16 local_port;
	u16 remote_port;
	u8 local_addr[16];
	u8 remote_addr[16];
	char comm[16];
};

/* The fold key: one process, one direction, one peer. An outbound connection's peer is
 * its remote address and port; an inbound one's is the remote address and our port
 * (the client's source port changes with every connection). */
struct fold_key {
	u32 tgid;
	u8 direction;
	u8 family;
	u16 port;
	u8 addr[16];
};

struct fold_value {
	u64 reported_ns;
	u64 folded;
};

/* Never read: they put the record layouts into the object's BTF, so the generated
 * skeleton carries them and the Rust parser's offsets are tested against them. */
const volatile struct sock_record sock_record_layout = {};
const volatile struct conn_event conn_event_layout = {};

/* Set by user space before load. */
const volatile u64 fold_ns = 60ULL * 1000 * 1000 * 1000;

/* Set by user space before each walk: bit N set = write sockets in state N. */
volatile u32 tcp_states = 0xffffffff;
volatile u32 udp_states = 0xffffffff;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Resized by user space before load. */
	__uint(max_entries, 256 << 10);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	/* Resized by user space before load. */
	__uint(max_entries, 16384);
	__type(key, struct fold_key);
	__type(value, struct fold_value);
} folds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

static __always_inline void count(u32 which, u64 n)
{
	u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += n;
}

/* A TCP or UDP socket proper: a raw socket opened with IPPROTO_TCP or IPPROTO_UDP (what
 * scanners and packet tools use) has that protocol too, and must not pass for one. */
static __always_inline bool tcp_or_udp(u16 protocol, short type)
{
	return (protocol == IPPROTO_TCP && type == SOCK_STREAM) ||
	       (protocol == IPPROTO_UDP && type == SOCK_DGRAM);
}

/* Local and remote ends of an inet socket; false for any other family. */
static __always_inline bool read_ends(struct sock *sk, u8 *family, u16 *lport, u16 *rport,
				      u8 *laddr, u8 *raddr)
{
	*family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (*family == AF_INET) {
		__be32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(laddr, &l, 4);
		__builtin_memcpy(raddr, &r, 4);
	} else if (*family == AF_INET6) {
		bpf_core_read(laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return false;
	}
	*lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return true;
}

/* Kernels 5.11+: bpf_sock_from_file() hands back the socket as a typed kernel pointer,
 * and every field below is a plain load the verifier guards itself, instead of one
 * helper call per field: at 300,000 sockets that halves the walk. Older kernels with
 * iterators run dump_sockets_compat, which reads each field with a probe. */
SEC("iter/task_file")
int dump_sockets(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct sock_record rec = {};
	struct socket *sock;
	struct sock *sk;
	u16 protocol;
	u32 mask;

	if (!task || !file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = sock->sk;
	if (!sk)
		return 0;
	protocol = sk->sk_protocol;
	if (!tcp_or_udp(protocol, sock->type))
		return 0;
	if (protocol == IPPROTO_TCP)
		mask = tcp_states;
	else if (protocol == IPPROTO_UDP)
		mask = udp_states;
	else
		return 0;
	rec.protocol = protocol;
	rec.state = sk->__sk_common.skc_state;
	if (rec.state > 31 || !(mask & (1U << rec.state)))
		return 0;
	rec.family = sk->__sk_common.skc_family;
	if (rec.family == AF_INET) {
		__be32 l = sk->__sk_common.skc_rcv_saddr;
		__be32 r = sk->__sk_common.skc_daddr;
		__builtin_memcpy(rec.local_addr, &l, 4);
		__builtin_memcpy(rec.remote_addr, &r, 4);
	} else if (rec.family == AF_INET6) {
		bpf_probe_read_kernel(rec.local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(rec.remote_addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return 0;
	}
	rec.local_port = sk->__sk_common.skc_num;
	rec.remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	/* A UDP socket never bound (made for an ioctl) neither listens nor connects, and
	 * sock_diag does not list it either. */
	if (protocol == IPPROTO_UDP && rec.local_port == 0)
		return 0;
	rec.tgid = task->tgid;
	rec.fd = ctx->fd;
	rec.inode = file->f_inode->i_ino;
	rec.netns = sk->__sk_common.skc_net.net->ns.inum;
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

SEC("iter/task_file")
int dump_sockets_compat(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct sock_record rec = {};
	struct socket *sock;
	struct sock *sk;
	u32 mask;

	if (!task || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	/* A socket file's private data is its struct socket, which points back at the
	 * file; anything else (an O_PATH handle on a socket's path) is skipped. */
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	/* u16: MPTCP (262) must not pass for TCP once cut to a byte. */
	u16 protocol = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	if (!tcp_or_udp(protocol, BPF_CORE_READ(sock, type)))
		return 0;
	rec.protocol = protocol;
	rec.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (rec.protocol == IPPROTO_TCP)
		mask = tcp_states;
	else if (rec.protocol == IPPROTO_UDP)
		mask = udp_states;
	else
		return 0;
	if (rec.state > 31 || !(mask & (1U << rec.state)))
		return 0;
	if (!read_ends(sk, &rec.family, &rec.local_port, &rec.remote_port, rec.local_addr,
		       rec.remote_addr))
		return 0;
	/* A UDP socket never bound (made for an ioctl) neither listens nor connects, and
	 * sock_diag does not list it either. */
	if (rec.protocol == IPPROTO_UDP && rec.local_port == 0)
		return 0;
	rec.tgid = task->tgid;
	rec.fd = ctx->fd;
	rec.inode = BPF_CORE_READ(file, f_inode, i_ino);
	rec.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* Listeners of one process, found without visiting its descriptors one by one. */
#define FD_CHUNK 64

struct fd_chunk {
	struct file *files[FD_CHUNK];
};

/* The descriptor table, copied 64 pointers at a time (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct fd_chunk);
} chunks SEC(".maps");

struct listener_walk {
	struct seq_file *seq;
	struct file **fds;
	u32 max_fds;
	u32 tgid;
};

/* The record of descriptor `fd` if it is a listener (TCP LISTEN, or a bound UDP socket
 * with no peer); the reads are plain loads of kernel memory the verifier guards
 * (bpf_core_cast), a few nanoseconds each, not helper calls. */
static __always_inline bool listener_record(struct file *f, u32 fd, u32 tgid,
					   struct sock_record *rec)
{
	struct file *file = bpf_core_cast(f, struct file);
	struct socket *sock;
	struct sock *sk;
	u16 protocol;
	u64 inode;

	/* Cache misses are the cost at 300,000 sockets, so the cheap tests come first.
	 * A socket file's inode sits inside the socket's own allocation, right after the
	 * struct socket its private data points at: comparing addresses tells a socket
	 * without touching the inode. Then the socket's own state (same cache line as its
	 * sk pointer) rules out every connected TCP socket before its sock is read (UDP
	 * keeps SS_UNCONNECTED when connected: its sock's state decides). */
	inode = (u64)file->f_inode;
	if (!inode || (u64)file->private_data !=
			      inode - bpf_core_field_offset(struct socket_alloc, vfs_inode))
		return false;
	sock = bpf_core_cast(file->private_data, struct socket);
	if (sock->state != SS_UNCONNECTED || sock->file != f)
		return false;
	sk = bpf_core_cast(sock->sk, struct sock);
	rec->state = sk->__sk_common.skc_state;
	protocol = sk->sk_protocol;
	if (!tcp_or_udp(protocol, sock->type))
		return false;
	if (protocol == IPPROTO_TCP) {
		if (!(tcp_states & (1U << (rec->state & 31))))
			return false;
	} else if (protocol == IPPROTO_UDP) {
		if (!(udp_states & (1U << (rec->state & 31))))
			return false;
	} else {
		return false;
	}
	rec->protocol = protocol;
	rec->family = sk->__sk_common.skc_family;
	if (rec->family == AF_INET) {
		__be32 l = sk->__sk_common.skc_rcv_saddr;
		__be32 r = sk->__sk_common.skc_daddr;
		__builtin_memcpy(rec->local_addr, &l, 4);
		__builtin_memcpy(rec->remote_addr, &r, 4);
	} else if (rec->family == AF_INET6) {
		bpf_probe_read_kernel(rec->local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(rec->remote_addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return false;
	}
	rec->local_port = sk->__sk_common.skc_num;
	rec->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (protocol == IPPROTO_UDP && rec->local_port == 0)
		return false;
	rec->tgid = tgid;
	rec->fd = fd;
	rec->inode = file->f_inode->i_ino;
	rec->netns = sk->__sk_common.skc_net.net->ns.inum;
	return true;
}

static long listener_chunk(u32 index, struct listener_walk *walk)
{
	u32 zero = 0, base = index * FD_CHUNK, n, i;
	struct fd_chunk *chunk = bpf_map_lookup_elem(&chunks, &zero);

	if (!chunk || base >= walk->max_fds)
		return 1;
	n = walk->max_fds - base;
	if (n > FD_CHUNK)
		n = FD_CHUNK;
	/* Always a whole chunk: on 64-bit kernels every descriptor table has a multiple
	 * of 64 entries (BITS_PER_LONG: the embedded table, and alloc_fdtable rounds up
	 * to it), so the copy never runs past the array; `n` bounds what is looked at. */
	if (bpf_probe_read_kernel(chunk->files, sizeof(chunk->files), &walk->fds[base]))
		return 0;
	for (i = 0; i < FD_CHUNK; i++) {
		struct sock_record rec = {};

		if (i >= n)
			break;
		if (chunk->files[i] && listener_record(chunk->files[i], base + i, walk->tgid, &rec))
			bpf_seq_write(walk->seq, &rec, sizeof(rec));
	}
	return 0;
}

/* iter/task: one visit per task, and the program reads the descriptor table itself,
 * 64 entries per copy, checking each file with a handful of plain loads. The
 * task_file iterator's per-descriptor work (a reference taken and dropped, an indirect
 * call) made a listener scan cost as much as a full one; this does not. Threads that
 * share their leader's table are skipped (the leader covers them). */
SEC("iter/task")
int dump_listeners(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct listener_walk walk = {};
	struct fdtable *fdt;

	if (!task)
		return 0;
	if (task->pid != task->tgid && task->files == task->group_leader->files)
		return 0;
	if (!task->files)
		return 0;
	fdt = task->files->fdt;
	walk.seq = ctx->meta->seq;
	walk.fds = fdt->fd;
	walk.max_fds = fdt->max_fds;
	walk.tgid = task->tgid;
	bpf_loop((walk.max_fds + FD_CHUNK - 1) / FD_CHUNK, listener_chunk, &walk, 0);
	return 0;
}

/* Whether this connection is news: true once per key per fold_ns, with the count of
 * what was folded into the key since its last report. */
static __always_inline bool first_in_window(struct fold_key *key, u64 now, u64 *folded)
{
	struct fold_value *v = bpf_map_lookup_elem(&folds, key);
	struct fold_value fresh = { .reported_ns = now, .folded = 0 };

	if (v && now - v->reported_ns < fold_ns) {
		__sync_fetch_and_add(&v->folded, 1);
		count(C_FOLDED, 1);
		return false;
	}
	*folded = v ? v->folded : 0;
	bpf_map_update_elem(&folds, key, &fresh, BPF_ANY);
	return true;
}

static __always_inline void report(struct sock *sk, u8 direction)
{
	struct fold_key key = {};
	struct conn_event *e;
	u8 family, laddr[16] = {}, raddr[16] = {};
	u16 lport, rport;
	u64 now = bpf_ktime_get_ns(), folded = 0;

	if (!sk)
		return;
	if (!read_ends(sk, &family, &lport, &rport, laddr, raddr))
		return;
	/* A connection reset while it waited in the listen queue has given its port
	 * number back (inet_num is 0) by the time it is accepted; the port it came in on
	 * is still in inet_sport. */
	if (!lport)
		lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	key.direction = direction;
	key.family = family;
	key.port = direction == DIR_CONNECT ? rport : lport;
	__builtin_memcpy(key.addr, raddr, 16);
	if (!first_in_window(&key, now, &folded))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(C_RING_FULL, 1);
		return;
	}
	e->ts_ns = now;
	e->folded = folded;
	e->tgid = key.tgid;
	e->uid = (u32)bpf_get_current_uid_gid();
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->direction = direction;
	e->family = family;
	e->pad = 0;
	e->local_port = lport;
	e->remote_port = rport;
	__builtin_memcpy(e->local_addr, laddr, 16);
	__builtin_memcpy(e->remote_addr, raddr, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	count(C_EMITTED, 1);
}

/* The syscall tracepoints' records (the `format` files under
 * /sys/kernel/tracing/events/syscalls): a fixed ABI, not a kernel struct. */
struct syscall_enter {
	u64 common;
	s32 nr;
	u32 pad;
	u64 args[6];
};

struct syscall_exit {
	u64 common;
	s32 nr;
	u32 pad;
	s64 ret;
};

/* The TCP socket behind descriptor `fd` of the current task, or NULL. */
static __always_inline struct sock *socket_of_fd(s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_core_read(&file, sizeof(file), &fds[fd]);
	if (!file || (BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP ||
	    BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return NULL;
	return sk;
}

/* connect(2)'s descriptor, from its entry to its exit, per thread (the exit runs on
 * every return, a fatal signal's included). A plain hash: an LRU could evict an entry
 * of a connect still in flight without a word; a full table is counted instead. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, s64);
} connecting SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_connect")
int on_connect_enter(struct syscall_enter *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	/* The kernel takes the descriptor as an int: the register's upper half is
	 * ignored there, so it must be here too (or a caller could hide behind it). */
	s64 fd = (int)ctx->args[0];

	if (bpf_map_update_elem(&connecting, &tid, &fd, BPF_ANY))
		count(C_CONNECT_TABLE_FULL, 1);
	return 0;
}

/* A connect is reported once the kernel chose the source port: on success, or on
 * EINPROGRESS (a non-blocking connect, what every proxy does). */
SEC("tracepoint/syscalls/sys_exit_connect")
int on_connect_exit(struct syscall_exit *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	s64 *fd = bpf_map_lookup_elem(&connecting, &tid);
	s64 ret = ctx->ret;

	if (!fd)
		return 0;
	if (ret == 0 || ret == -EINPROGRESS)
		report(socket_of_fd(*fd), DIR_CONNECT);
	bpf_map_delete_elem(&connecting, &tid);
	return 0;
}

static __always_inline void accepted(struct syscall_exit *ctx)
{
	if (ctx->ret >= 0)
		report(socket_of_fd(ctx->ret), DIR_ACCEPT);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int on_accept_exit(struct syscall_exit *ctx)
{
	accepted(ctx);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept4_exit(struct syscall_exit *ctx)
{
	accepted(ctx);
	return 0;
}
