// SPDX-License-Identifier: GPL-2.0
/* Process events captured inside the kernel, for hids-plugin-process.
 *
 * The exec handler runs in the exec'ing task right after the new image is in place, so
 * the argument list is read from the new image's memory before the process can run (let
 * alone exit): a process that exits at once is reported with its full command line,
 * which the proc connector cannot do. Records go to user space through one ring buffer;
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

/* Largest argument area read per exec; user space may ask for less (max_args). A
 * per-CPU map value is at most 32 KiB, and the record (header, args, path) is built in
 * one. */
#define ARGS_CAP (24 * 1024)
#define FILENAME_CAP 4096

/* Set by user space before load. */
const volatile u32 max_args = ARGS_CAP;

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
	char comm[16];
	/* args_len bytes of NUL-separated arguments, then filename_len bytes of path. */
	u8 data[ARGS_CAP + FILENAME_CAP];
};

#define EXEC_HEADER_BYTES 108
_Static_assert(__builtin_offsetof(struct exec_event, data) == EXEC_HEADER_BYTES,
	       "src/capture/ebpf/record.rs reads the exec record at these offsets");

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

/* An exec record is too large for the BPF stack: it is built here, then copied out. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct exec_event);
} scratch SEC(".maps");

static __always_inline void count_drop(u32 kind)
{
	u64 *n = bpf_map_lookup_elem(&drops, &kind);
	if (n)
		*n += 1;
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
	if (bpf_ringbuf_output(&events, &e, sizeof(e), 0))
		count_drop(kind);
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

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;

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
	u64 size = EXEC_HEADER_BYTES + len + name_len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, 0))
		count_drop(EV_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
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

/* Credential changes (setuid, setgid and friends, and exec of a set-id binary) all
 * pass through commit_creds. Optional: the plugin runs without these when the
 * kernel cannot attach them. */
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
