/* The kernel types process.bpf.c reads, and only the fields it reads.
 *
 * A full `bpftool btf dump` header is ~135,000 lines tied to one build; CO-RE does not
 * need it. libbpf matches each field below by name against the running kernel's BTF at
 * load time (preserve_access_index), so offsets here are never used and field order
 * does not matter. A field a kernel lacks makes the load fail, and the plugin falls back
 * to the proc connector; optional fields are guarded with bpf_core_field_exists(). */
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
typedef int pid_t;
typedef _Bool bool;

enum {
	false = 0,
	true = 1,
};

enum bpf_map_type {
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};

enum {
	BPF_RB_AVAIL_DATA = 0,
};

enum pid_type {
	PIDTYPE_PID = 0,
	PIDTYPE_TGID = 1,
	PIDTYPE_PGID = 2,
	PIDTYPE_SID = 3,
	PIDTYPE_MAX = 4,
};

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	u32 val;
} kuid_t;

typedef struct {
	u32 val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t euid;
	kgid_t egid;
};

struct ns_common {
	unsigned int inum;
};

struct pid_namespace {
	struct ns_common ns;
};

struct upid {
	int nr;
	struct pid_namespace *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];
};

struct tty_driver {
	int major;
	int minor_start;
};

struct tty_struct {
	struct tty_driver *driver;
	int index;
};

struct signal_struct {
	struct pid *pids[4];
	struct tty_struct *tty;
};

struct qstr {
	u32 len;
	const unsigned char *name;
};

struct hlist_bl_node {
	struct hlist_bl_node **pprev;
};

struct dentry;

struct dentry_operations {
	char *(*d_dname)(struct dentry *, char *, int);
};

struct dentry {
	struct hlist_bl_node d_hash;
	struct dentry *d_parent;
	struct qstr d_name;
	const struct dentry_operations *d_op;
};

struct vfsmount {
	struct dentry *mnt_root;
};

/* fs/mount.h, private to the VFS but in the kernel's BTF. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
};

/* A helper's argument (uapi, not a kernel struct): what bpf_get_ns_current_pid_tgid fills. */
struct bpf_pidns_info {
	__u32 pid;
	__u32 tgid;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
};

struct fs_struct {
	struct path root;
	struct path pwd;
};

struct mm_struct {
	long unsigned int arg_start;
	long unsigned int arg_end;
	struct file *exe_file;
};

struct task_struct {
	pid_t pid;
	pid_t tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct pid *thread_pid;
	u64 start_boottime;
	const struct cred *real_cred;
	kuid_t loginuid;
	unsigned int sessionid;
	struct signal_struct *signal;
	struct mm_struct *mm;
	struct fs_struct *fs;
};

struct linux_binprm {
	const char *filename;
	struct file *file;
};

#pragma clang attribute pop

#endif
