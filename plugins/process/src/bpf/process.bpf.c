// SPDX-License-Identifier: GPL-2.0
/* Process events captured inside the kernel, for hids-plugin-process.
 *
 * The exec handler runs in the exec'ing task right after the new image is in place, so
 * the argument list is read from the new image's memory before the process can run (let
 * alone exit): a process that exits at once is reported with its full command line,
 * which the proc connector cannot do. Its executable and working directory are resolved
 * there too (build_path), so user space reads nothing from /proc for an exec.
 *
 * Kernel features relied on: BTF and CO-RE, tp_btf (5.5), the ring buffer and
 * bpf_ringbuf_query (5.8), bounded loops (5.3), bpf_probe_read_kernel (5.5). Optional:
 * fentry (BPF trampolines) or syscall tracepoints for credential changes.
 *
 * Records go to user space through one ring buffer;
 * a record that finds no room is counted per CPU and per kind in `drops`, which user
 * space reads and declares. The record layouts are mirrored in src/capture/ebpf/record.rs,
 * whose tests check them against this file's structs (through the skeleton's types). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define EV_EXEC 1
#define EV_FORK 2
#define EV_EXIT 3
#define EV_UID 4
#define EV_GID 5
#define EV_SID 6
#define EV_KINDS 8

#define FLAG_ARGS_TRUNCATED 1
#define FLAG_ARGS_UNREADABLE 2
#define FLAG_FILENAME_TRUNCATED 4
/* The file or directory was unlinked: /proc appends " (deleted)", so does user space. */
#define FLAG_EXE_DELETED 8
#define FLAG_CWD_DELETED 16
/* The walk did not finish (too deep, too long, unreadable): the path is left empty. */
#define FLAG_EXE_UNRESOLVED 32
#define FLAG_CWD_UNRESOLVED 64

/* Largest argument area read per exec; user space may ask for less (max_args). */
#define ARGS_CAP (24 * 1024)
#define FILENAME_CAP 4096
/* A resolved path, as the kernel's d_path allows (PATH_MAX). */
#define PATH_CAP 4096
/* Longest name of one path component (NAME_MAX + 1), a power of two. */
#define NAME_CAP 256
/* Components read plus mount points crossed, per path. */
#define PATH_STEPS 64

/* Set by user space before load. */
const volatile u32 max_args = ARGS_CAP;
/* The reader's linger: a record waits at most this long for its wake-up (see wakeup_flag). */
const volatile u64 wakeup_interval_ns = 10 * 1000 * 1000;
/* Unread bytes that wake the reader at once, whatever the interval. */
const volatile u64 wakeup_bytes = 128 * 1024;

/* When the reader was last woken (any CPU; a lost update only costs one wake-up). */
u64 last_wakeup_ns = 0;

/* Set by user space before load: the plugin's own process, whose root directory names
 * every path (see build_path), as its pid namespace numbers it (the namespace's device
 * and inode, from stat of /proc/self/ns/pid): a plugin in a container is not mistaken
 * for the host process that has the same number. */
const volatile u32 reader_tgid = 0;
const volatile u64 reader_pidns_dev = 0;
const volatile u64 reader_pidns_ino = 0;
/* The reader's root (fs->root), recorded by on_fork the first time the reader starts a
 * thread, which user space does once the programs are attached. Zero until then: paths
 * are then named from the root of their mount namespace. */
u64 reader_root_mnt = 0;
u64 reader_root_dentry = 0;

struct exec_event {
	u64 ts_ns;
	u32 kind;
	u32 pid;
	u64 start_boottime_ns;
	u64 cgroup_id;
	u32 tid;
	u32 ppid;
	u32 uid;
	u32 euid;
	u32 gid;
	u32 egid;
	u32 loginuid;
	u32 sessionid;
	u32 sid;
	u32 tty_major;
	u32 tty_minor;
	u32 pid_ns;
	u32 flags;
	u32 args_len;
	u32 filename_len;
	u32 exe_len;
	u32 cwd_len;
	char comm[16];
	/* args_len bytes of NUL-separated arguments, filename_len bytes of the path given
	 * to execve (with its NUL), exe_len bytes of the executable's resolved path and
	 * cwd_len bytes of the working directory (neither with a NUL). */
	u8 data[ARGS_CAP + FILENAME_CAP + 2 * PATH_CAP];
};

#define EXEC_HEADER_BYTES 116
_Static_assert(__builtin_offsetof(struct exec_event, data) == EXEC_HEADER_BYTES,
	       "src/capture/ebpf/record.rs reads the exec record at these offsets");

/* One CPU's working memory for an exec: the record, and the area a path is built in,
 * from its last component backwards (names are read leaf first). The tail past
 * PATH_CAP lets a component be copied at a masked offset the verifier can bound. */
struct exec_scratch {
	struct exec_event event;
	/* Where the path being built starts in `path` (see build_path). */
	u32 path_pos;
	char path[PATH_CAP + NAME_CAP];
};

/* fork: a = parent; exit: a = wait status; uid: a = ruid, b = euid; gid: a = rgid, b = egid. */
struct small_event {
	u64 ts_ns;
	u32 kind;
	u32 pid;
	u32 a;
	u32 b;
};

/* Never read: it puts struct small_event into the object's BTF (exec_event is there
 * through the scratch map), so the generated skeleton carries both layouts and the
 * Rust parser's offsets are tested against them. */
const volatile struct small_event small_event_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Resized by user space before load. */
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EV_KINDS);
	__type(key, u32);
	__type(value, u64);
} drops SEC(".maps");

/* An exec record is too large for the BPF stack, and with both paths too large for a
 * per-CPU map value (32 KiB at most): one plain array entry per possible CPU instead,
 * indexed by the CPU the program runs on (user space sets max_entries before load).
 * Only the exec program uses it, in task context from a tracepoint (no migration, no
 * preemption), so two execs never share an entry at once: the same guarantee as a
 * per-CPU array's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct exec_scratch);
} scratch SEC(".maps");

/* The ids a thread had when it entered a set*id system call, until it leaves it. An
 * LRU map, so bounded: an entry whose exit is never seen (a call in flight while the
 * programs were attached or detached) is evicted in time. */
struct ids {
	u32 uid;
	u32 euid;
	u32 gid;
	u32 egid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct ids);
} ids_at_enter SEC(".maps");

static __always_inline void count_drop(u32 kind)
{
	u64 *n = bpf_map_lookup_elem(&drops, &kind);
	if (n)
		*n += 1;
}

/* Wake the reader only once per interval, or when unread data piles up: in between,
 * records wait in the ring for the reader's next timed read (it reads at least once
 * per interval while records come, see capture/ebpf/mod.rs). A record after a quiet
 * interval wakes it at once, so a lone exec is not held back. */
static __always_inline u64 wakeup_flag(u64 now)
{
	if (now - last_wakeup_ns >= wakeup_interval_ns ||
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) {
		last_wakeup_ns = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_small(u32 kind, u32 pid, u32 a, u32 b)
{
	struct small_event e = {
		.ts_ns = bpf_ktime_get_ns(),
		.kind = kind,
		.pid = pid,
		.a = a,
		.b = b,
	};
	if (bpf_ringbuf_output(&events, &e, sizeof(e), wakeup_flag(bpf_ktime_get_ns())))
		count_drop(kind);
}

/* Credential and session changes, three ways in order of preference (user space picks
 * the first the kernel takes): commit_creds, which every change passes through (fentry,
 * where the kernel allows it); else the set*id system calls' tracepoints; else the
 * proc connector beside eBPF.
 *
 * The fentry programs come first in this file, so first in the object, which libbpf
 * loads in order: a kernel that refuses them says so before the exec program's long
 * verification, which would otherwise be done twice. */
SEC("fentry/commit_creds")
int BPF_PROG(on_commit_creds, struct cred *new)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	const struct cred *old = BPF_CORE_READ(task, real_cred);
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	u32 ruid = BPF_CORE_READ(new, uid.val), euid = BPF_CORE_READ(new, euid.val);
	u32 rgid = BPF_CORE_READ(new, gid.val), egid = BPF_CORE_READ(new, egid.val);

	if (ruid != BPF_CORE_READ(old, uid.val) || euid != BPF_CORE_READ(old, euid.val))
		emit_small(EV_UID, pid, ruid, euid);
	if (rgid != BPF_CORE_READ(old, gid.val) || egid != BPF_CORE_READ(old, egid.val))
		emit_small(EV_GID, pid, rgid, egid);
	return 0;
}

SEC("fexit/ksys_setsid")
int BPF_PROG(on_setsid, int ret)
{
	if (ret > 0)
		emit_small(EV_SID, bpf_get_current_pid_tgid() >> 32, 0, 0);
	return 0;
}

/* The pid namespace the task lives in (what /proc/<pid>/ns/pid names). */
static __always_inline u32 task_pid_ns(struct task_struct *p)
{
	struct pid *pid = BPF_CORE_READ(p, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};

	if (level > 31)
		return 0;
	bpf_core_read(&upid, sizeof(upid), &pid->numbers[level]);
	return BPF_CORE_READ(upid.ns, ns.inum);
}

/* Builds the path of (vfsmnt, dentry) at the end of s->path, as the kernel's d_path does
 * for the reader (readlink of /proc/<pid>/exe by this plugin): names from the leaf up,
 * crossing each mount to where it is mounted, until the reader's root directory (an
 * agent run chrooted names a file in its chroot from there, as /proc shows it to it) or
 * else the root of the task's mount namespace (a mount that is its own parent): a
 * container's file is thus named inside the container, as /proc names it. Returns the
 * offset in s->path where the path starts (it ends at PATH_CAP), or PATH_CAP when the
 * walk cannot finish; sets *deleted for an unlinked file (d_path's " (deleted)").
 *
 * The write position lives in the map value, not in a register: read back, it is just
 * "some offset below PATH_CAP" to the verifier, the same after a mount crossing as after
 * a name, so each step is verified once instead of once per way of reaching it.
 *
 * Unlike d_path, no lock is held: a rename racing the walk can yield a mixed path, as
 * with every eBPF agent that walks dentries. */
static __always_inline u32 build_path(struct exec_scratch *s, struct vfsmount *vfsmnt,
				      struct dentry *dentry, bool *deleted)
{
	/* container_of with the running kernel's offset: struct mount is private to the
	 * VFS, its layout is known only from BTF. */
	u64 vfsmnt_offset = bpf_core_field_offset(struct mount, mnt);
	struct mount *mnt = (void *)vfsmnt - vfsmnt_offset;
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	u64 root_mnt = reader_root_mnt, root_dentry = reader_root_dentry;

	*deleted = false;
	if (!dentry || !vfsmnt || !mnt_root)
		return PATH_CAP;
	struct dentry *leaf_parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry != leaf_parent && !BPF_CORE_READ(dentry, d_hash.pprev))
		*deleted = true;

	s->path_pos = PATH_CAP;
	for (int i = 0; i < PATH_STEPS; i++) {
		/* A failed read (NULL) must not pass for the root: unresolved instead. */
		if (!dentry || !mnt)
			return PATH_CAP;
		/* The reader's root, checked first as d_path does. */
		if ((u64)dentry == root_dentry && (u64)mnt + vfsmnt_offset == root_mnt)
			goto done;
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

		if (dentry == mnt_root) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
			if (!up)
				return PATH_CAP; /* a failed read: unresolved, not the root */
			if (up == mnt)
				goto done;
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			mnt_root = BPF_CORE_READ(mnt, mnt.mnt_root);
			if (!mnt_root)
				return PATH_CAP;
			continue;
		}
		u32 pos = s->path_pos;
		if (dentry == parent) {
			/* A root that is not its mount's: a file with no place in any tree
			 * (memfd, anonymous shared memory). The kernel names such a file
			 * "/<name> (deleted)" (simple_dname); any other escape it names "/". */
			if (pos != PATH_CAP || !BPF_CORE_READ(dentry, d_op, d_dname)) {
				s->path_pos = PATH_CAP;
				goto done;
			}
			*deleted = true;
		}
		u32 len = BPF_CORE_READ(dentry, d_name.len);
		if (pos > PATH_CAP || len >= NAME_CAP || len + 1 > pos)
			return PATH_CAP;
		pos -= len;
		if (bpf_probe_read_kernel(s->path + (pos & (PATH_CAP - 1)), len & (NAME_CAP - 1),
					  BPF_CORE_READ(dentry, d_name.name)))
			return PATH_CAP;
		pos -= 1;
		s->path[pos & (PATH_CAP - 1)] = '/';
		s->path_pos = pos;
		if (dentry == parent)
			goto done;
		dentry = parent;
	}
	return PATH_CAP;
done:;
	u32 start = s->path_pos;
	if (start >= PATH_CAP) {
		/* The root itself. */
		s->path[PATH_CAP - 1] = '/';
		return PATH_CAP - 1;
	}
	return start;
}

/* Where the record's data ends so far, read back from the record: the same for the
 * verifier however the steps before ended (see build_path), and bounded by the caps. */
static __always_inline u64 data_end(struct exec_event *e)
{
	u64 end = (u64)e->args_len + e->filename_len + e->exe_len + e->cwd_len;
	barrier_var(end);
	if (end > ARGS_CAP + FILENAME_CAP + 2 * PATH_CAP)
		return ARGS_CAP + FILENAME_CAP + 2 * PATH_CAP;
	return end;
}

/* Resolves a path and appends it to the record's data; returns its length, 0 with
 * `unresolved` in the flags when the walk failed. */
static __always_inline u32 put_path(struct exec_scratch *s, struct vfsmount *mnt,
				    struct dentry *dentry, u32 deleted_flag, u32 unresolved_flag)
{
	bool deleted;
	u32 start = build_path(s, mnt, dentry, &deleted);
	if (start >= PATH_CAP) {
		s->event.flags |= unresolved_flag;
		return 0;
	}
	if (deleted)
		s->event.flags |= deleted_flag;
	/* Bounds the verifier can see, on the very registers passed (64 bits, and behind a
	 * barrier: clang would drop the check as implied): the data so far holds at most
	 * args, filename and one path; len is one path. */
	u64 off = data_end(&s->event);
	u64 len = PATH_CAP - (u64)start;
	barrier_var(len);
	if (off > ARGS_CAP + FILENAME_CAP + PATH_CAP || len > PATH_CAP) {
		s->event.flags |= unresolved_flag;
		return 0;
	}
	if (bpf_probe_read_kernel(s->event.data + off, len, s->path + (start & (PATH_CAP - 1)))) {
		s->event.flags |= unresolved_flag;
		return 0;
	}
	return len;
}

static __always_inline struct exec_scratch *this_cpu_scratch(void)
{
	u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

/* Everything but the variable-length data. */
static __always_inline void fill_exec_header(struct exec_event *e, struct task_struct *p)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = EV_EXEC;
	e->pid = BPF_CORE_READ(p, tgid);
	e->tid = BPF_CORE_READ(p, pid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->start_boottime_ns = BPF_CORE_READ(p, start_boottime);
	e->cgroup_id = bpf_get_current_cgroup_id();

	const struct cred *cred = BPF_CORE_READ(p, real_cred);
	e->uid = BPF_CORE_READ(cred, uid.val);
	e->euid = BPF_CORE_READ(cred, euid.val);
	e->gid = BPF_CORE_READ(cred, gid.val);
	e->egid = BPF_CORE_READ(cred, egid.val);
	/* Without CONFIG_AUDIT there is no login uid: report "unset" as /proc does. */
	if (bpf_core_field_exists(p->loginuid)) {
		e->loginuid = BPF_CORE_READ(p, loginuid.val);
		e->sessionid = BPF_CORE_READ(p, sessionid);
	} else {
		e->loginuid = (u32)-1;
		e->sessionid = (u32)-1;
	}

	struct signal_struct *sig = BPF_CORE_READ(p, signal);
	struct pid *session = BPF_CORE_READ(sig, pids[PIDTYPE_SID]);
	e->sid = session ? BPF_CORE_READ(session, numbers[0].nr) : 0;
	struct tty_struct *tty = BPF_CORE_READ(sig, tty);
	if (tty) {
		e->tty_major = BPF_CORE_READ(tty, driver, major);
		e->tty_minor = BPF_CORE_READ(tty, driver, minor_start) + BPF_CORE_READ(tty, index);
	} else {
		e->tty_major = 0;
		e->tty_minor = 0;
	}
	e->pid_ns = task_pid_ns(p);
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_scratch *s = this_cpu_scratch();
	if (!s) {
		count_drop(EV_EXEC);
		return 0;
	}
	struct exec_event *e = &s->event;
	fill_exec_header(e, p);

	/* The new image's argument area, NUL-separated, as /proc/<pid>/cmdline shows it. */
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	u32 flags = 0;
	u64 len = end > start ? end - start : 0;
	u32 limit = max_args < ARGS_CAP ? max_args : ARGS_CAP;
	if (len > limit) {
		len = limit;
		flags |= FLAG_ARGS_TRUNCATED;
	}
	if (len > ARGS_CAP)
		len = ARGS_CAP;
	if (len && bpf_probe_read_user(e->data, len, (const void *)start)) {
		len = 0;
		flags |= FLAG_ARGS_UNREADABLE;
	}

	const char *filename = BPF_CORE_READ(bprm, filename);
	long name_len = bpf_probe_read_kernel_str(e->data + len, FILENAME_CAP, filename);
	if (name_len < 0)
		name_len = 0;
	else if (name_len >= FILENAME_CAP)
		flags |= FLAG_FILENAME_TRUNCATED;
	if (name_len > FILENAME_CAP)
		name_len = FILENAME_CAP;
	e->flags = flags;
	e->args_len = len;
	e->filename_len = name_len;
	e->exe_len = 0;
	e->cwd_len = 0;

	/* What /proc/<pid>/exe and /proc/<pid>/cwd show: the image exec installed (the
	 * binprm's file when the mm has none yet) and the working directory. */
	struct file *exe = BPF_CORE_READ(mm, exe_file);
	if (!exe)
		exe = BPF_CORE_READ(bprm, file);
	e->exe_len = put_path(s, BPF_CORE_READ(exe, f_path.mnt), BPF_CORE_READ(exe, f_path.dentry),
			      FLAG_EXE_DELETED, FLAG_EXE_UNRESOLVED);
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	e->cwd_len = put_path(s, BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry),
			      FLAG_CWD_DELETED, FLAG_CWD_UNRESOLVED);

	if (bpf_ringbuf_output(&events, e, EXEC_HEADER_BYTES + data_end(e), wakeup_flag(bpf_ktime_get_ns())))
		count_drop(EV_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	struct bpf_pidns_info ns = {};
	if (reader_tgid && !reader_root_dentry &&
	    !bpf_get_ns_current_pid_tgid(reader_pidns_dev, reader_pidns_ino, &ns, sizeof(ns)) &&
	    ns.tgid == reader_tgid) {
		struct fs_struct *fs = BPF_CORE_READ(parent, fs);
		reader_root_mnt = (u64)BPF_CORE_READ(fs, root.mnt);
		reader_root_dentry = (u64)BPF_CORE_READ(fs, root.dentry);
	}
	/* A new thread shares its process's image: only new processes matter. */
	u32 tgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != tgid)
		return 0;
	emit_small(EV_FORK, tgid, BPF_CORE_READ(child, real_parent, tgid), 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	u32 tgid = BPF_CORE_READ(p, tgid);
	if (BPF_CORE_READ(p, pid) != tgid)
		return 0;
	emit_small(EV_EXIT, tgid, BPF_CORE_READ(p, exit_code), 0);
	return 0;
}

/* A syscall exit tracepoint's record (its format file): the common header, the
 * syscall number, the return value. A stable layout, not a kernel struct. */
struct syscall_exit {
	u64 common;
	s64 nr;
	s64 ret;
};

static __always_inline struct ids current_ids(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	const struct cred *cred = BPF_CORE_READ(task, real_cred);
	struct ids ids = {
		.uid = BPF_CORE_READ(cred, uid.val),
		.euid = BPF_CORE_READ(cred, euid.val),
		.gid = BPF_CORE_READ(cred, gid.val),
		.egid = BPF_CORE_READ(cred, egid.val),
	};
	return ids;
}

/* Attached by user space to sys_enter_ of setuid, setreuid, setresuid, setgid, setregid
 * and setresgid: keeps all four ids; the exit program of the call's family compares its
 * two (a failed call changes nothing, and nothing is reported). */
SEC("tracepoint")
int on_setid_enter(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ids ids = current_ids();
	bpf_map_update_elem(&ids_at_enter, &tid, &ids, BPF_ANY);
	return 0;
}

/* The matching sys_exit_: reports the ids of its family (user ids for set*uid, group
 * ids for set*gid) that really changed. A successful call whose ids at entry were not
 * kept (the LRU map evicted them, or the call began before the programs were attached)
 * is reported with the ids it left, changed or not: a report too many rather than a
 * change lost. */
static __always_inline int setid_exit(struct syscall_exit *ctx, bool user_ids)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct ids *before = bpf_map_lookup_elem(&ids_at_enter, &tid);
	struct ids now = current_ids();
	bool changed;

	if (before) {
		changed = user_ids ? (now.uid != before->uid || now.euid != before->euid)
				   : (now.gid != before->gid || now.egid != before->egid);
		bpf_map_delete_elem(&ids_at_enter, &tid);
	} else {
		changed = ctx->ret == 0;
	}
	if (!changed)
		return 0;
	if (user_ids)
		emit_small(EV_UID, pid_tgid >> 32, now.uid, now.euid);
	else
		emit_small(EV_GID, pid_tgid >> 32, now.gid, now.egid);
	return 0;
}

/* Attached to sys_exit_ of setuid, setreuid and setresuid. */
SEC("tracepoint")
int on_setuid_exit(struct syscall_exit *ctx)
{
	return setid_exit(ctx, true);
}

/* Attached to sys_exit_ of setgid, setregid and setresgid. */
SEC("tracepoint")
int on_setgid_exit(struct syscall_exit *ctx)
{
	return setid_exit(ctx, false);
}

SEC("tracepoint/syscalls/sys_exit_setsid")
int on_setsid_exit(struct syscall_exit *ctx)
{
	if (ctx->ret > 0)
		emit_small(EV_SID, bpf_get_current_pid_tgid() >> 32, 0, 0);
	return 0;
}
