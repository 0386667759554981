//! The capture thread: reads the kernel's process events, snapshots `/proc` for every
//! exec at once, and hands batches to the enrichment thread through one bounded queue.
//!
//! Two backends, side by side, neither aware of the other: eBPF ([`ebpf`], kernels with
//! BTF) and the proc connector ([`cn_proc`], any kernel). Both produce the events defined
//! here ([`Raw`], in batches) and hand them over through one [`queue::Queue`]; `/proc` is
//! read through [`snapshot`]. Which backend runs is decided by the caller (`main.rs`).

pub mod cn_proc;
pub mod ebpf;
pub mod queue;
pub mod snapshot;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use snapshot::{Gap, Snapshot};

/// One event, in kernel order.
#[derive(Debug, PartialEq, Eq)]
pub enum Raw {
    /// An exec as the eBPF backend recorded it in the kernel: complete, no `/proc` read.
    KernelExec {
        ts_ns: u64,
        pid: u32,
        exec: Box<KernelExec>,
    },
    /// An exec the proc connector reported, with what `/proc` showed right after it.
    Exec {
        ts_ns: u64,
        pid: u32,
        snapshot: Result<Box<Snapshot>, Gap>,
        /// CLOCK_MONOTONIC when the snapshot was finished: an exec of the same pid
        /// reported with an earlier timestamp means the snapshot may show that later image.
        read_done_ns: u64,
        /// Set when such a later exec was seen: the snapshot must not be reported.
        superseded: bool,
    },
    Fork {
        ts_ns: u64,
        parent: u32,
        child: u32,
    },
    Exit {
        ts_ns: u64,
        pid: u32,
        exit_code: u32,
    },
    Uid {
        ts_ns: u64,
        pid: u32,
        ruid: u32,
        euid: u32,
    },
    Gid {
        ts_ns: u64,
        pid: u32,
        rgid: u32,
    },
    Sid {
        ts_ns: u64,
        pid: u32,
    },
}

impl Raw {
    pub fn heap_bytes(&self) -> usize {
        match self {
            Raw::KernelExec { exec, .. } => exec.heap_bytes(),
            Raw::Exec { snapshot, .. } => snapshot.as_ref().map_or(0, |s| s.heap_bytes()),
            _ => 0,
        }
    }
}

/// Events handed over together, in kernel order.
pub type Batch = Vec<Raw>;

/// An exec as the kernel recorded it (eBPF backend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelExec {
    pub tid: u32,
    pub ppid: u32,
    /// CLOCK_BOOTTIME at process start, in ns (what `/proc/<pid>/stat` shows in ticks).
    pub start_boottime_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    /// `u32::MAX` when unset.
    pub loginuid: u32,
    pub sessionid: u32,
    /// Session leader's pid.
    pub sid: u32,
    /// Controlling terminal, `(0, 0)` when none.
    pub tty: (u32, u32),
    pub pid_ns: u32,
    pub comm: Vec<u8>,
    /// NUL-separated, as `/proc/<pid>/cmdline`.
    pub args: Vec<u8>,
    pub args_truncated: bool,
    /// The argument area could not be read (a page not present): reported incomplete.
    pub args_unreadable: bool,
    /// The path given to execve.
    pub filename: Vec<u8>,
    pub filename_truncated: bool,
    /// The new image's file as `/proc/<pid>/exe` shows it (symlinks resolved, relative to
    /// our root or else the process's mount namespace, " (deleted)" when unlinked), from a bounded dentry
    /// walk in the kernel; empty when the walk could not finish (too deep, unreadable).
    pub exe: Vec<u8>,
    /// The working directory at exec, as `/proc/<pid>/cwd` shows it; empty when the walk
    /// could not finish.
    pub cwd: Vec<u8>,
    /// The argument list was dropped in user space: the capture queue's byte budget was
    /// spent (`hids.incomplete: backlog`).
    pub shed: bool,
}

impl KernelExec {
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.comm.capacity()
            + self.args.capacity()
            + self.filename.capacity()
            + self.exe.capacity()
            + self.cwd.capacity()
    }

    /// Drops the argument list, the bulk of a record, keeping what says which process
    /// ran where (see `shed`).
    pub fn shed(&mut self) {
        self.args = Vec::new();
        self.args_truncated = false;
        if !self.exe.is_empty() {
            // Only needed to name the executable when the kernel could not.
            self.filename = Vec::new();
        }
        self.shed = true;
    }

    /// Start time in `/proc` clock ticks: the same number `/proc/<pid>/stat` shows.
    pub fn start_ticks(&self) -> u64 {
        self.start_boottime_ns / (1_000_000_000 / hids_procfs::TICKS_PER_SEC)
    }
}

/// Counters shared by the capture and enrichment threads.
#[derive(Default)]
pub struct Counters {
    pub netlink_datagrams: AtomicU64,
    pub parse_errors: AtomicU64,
    pub enobufs: AtomicU64,
    /// Events the kernel numbered but we never received (per-CPU sequence gaps).
    pub kernel_lost: AtomicU64,
    pub execs_seen: AtomicU64,
    pub queue_full: AtomicU64,
    pub queue_full_execs: AtomicU64,
    /// Batches handed over without a drain to empty first (a burst longer than a
    /// batch): a superseding exec could slip past the check for those.
    pub forced_batches: AtomicU64,
    /// Heap bytes of exec data (eBPF records, `/proc` snapshots) waiting in the queue.
    pub queue_bytes: AtomicUsize,
    /// eBPF: records read from the ring buffer.
    pub ring_records: AtomicU64,
    /// eBPF: records the kernel could not put in the ring buffer.
    pub ring_drops: RingDrops,
}

/// Kernel-side losses (no room in the ring buffer), per record kind.
#[derive(Default)]
pub struct RingDrops {
    pub execs: AtomicU64,
    pub other: AtomicU64,
}

#[derive(Clone)]
pub struct CaptureConfig {
    pub proc_root: String,
    pub max_args_bytes: usize,
    /// Budget of exec data bytes in flight; past it, execs are queued without their
    /// arguments (eBPF) or `/proc` data (proc connector), `hids.incomplete: backlog`.
    pub queue_bytes: usize,
    /// Events held in this thread while the queue is full; past it they are dropped.
    pub max_pending: usize,
    /// How long a non-empty batch may wait for more events before it is handed over.
    pub linger: Duration,
    /// Proc connector beside eBPF: report only credential and session changes.
    pub only_ids: bool,
}

#[cfg(test)]
impl CaptureConfig {
    /// A small configuration for the capture side's unit tests.
    pub fn for_tests() -> Self {
        CaptureConfig {
            proc_root: "/proc".into(),
            max_args_bytes: 4096,
            queue_bytes: 1 << 20,
            max_pending: 64,
            linger: std::time::Duration::from_millis(10),
            only_ids: false,
        }
    }
}

/// Largest batch; a burst longer than this is handed over in pieces.
pub const MAX_BATCH: usize = 512;

pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
