//! The capture thread: reads the kernel's process events, snapshots `/proc` for every
//! exec at once, and hands batches to the enrichment thread through one bounded queue.
//! Two backends feed it: eBPF (src/ebpf.rs) and the proc connector (this file).
//!
//! With the proc connector:
//! Each pass drains the socket until it is empty, reads the argument lists of all execs
//! in that burst first (they vanish first), completes their snapshots, and queues the
//! burst as one batch. Batching matters: one wake-up of the enrichment thread (and one
//! write to the master) per burst instead of per event is most of the plugin's CPU cost
//! in an exec storm. This thread never blocks on anything but the socket: when the queue
//! is full, events are dropped here and counted. This is the plugin's one documented
//! drop point.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_netlink::proc_connector::{messages, EventData, Message};
use hids_netlink::{ProcSocket, RecvError};

use crate::ebpf::{KernelExec, RingDrops};
use crate::snapshot::{self, Gap, Snapshot};

/// One event, in kernel order.
#[derive(Debug, PartialEq, Eq)]
pub enum Raw {
    Exec {
        ts_ns: u64,
        pid: u32,
        /// What the kernel recorded at exec (eBPF backend); `/proc` fills the rest.
        kernel: Option<Box<KernelExec>>,
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
            Raw::Exec {
                kernel, snapshot, ..
            } => {
                kernel.as_ref().map_or(0, |k| k.heap_bytes())
                    + snapshot.as_ref().map_or(0, |s| s.heap_bytes())
            }
            _ => 0,
        }
    }
}

/// Events handed over together, in kernel order.
pub type Batch = Vec<Raw>;

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
    /// Heap bytes of snapshots waiting in the queue.
    pub queue_bytes: AtomicUsize,
    /// eBPF: records read from the ring buffer.
    pub ring_records: AtomicU64,
    /// eBPF: records the kernel could not put in the ring buffer.
    pub ring_drops: RingDrops,
}

#[derive(Clone)]
pub struct CaptureConfig {
    pub proc_root: String,
    pub max_args_bytes: usize,
    /// Budget of snapshot bytes in flight; past it, execs are queued without `/proc` data.
    pub queue_bytes: usize,
    /// Events held in this thread while the queue is full; past it they are dropped.
    pub max_pending: usize,
    /// How long a non-empty batch may wait for more events before it is handed over.
    pub linger: Duration,
    /// Proc connector beside eBPF: report only credential and session changes.
    pub only_ids: bool,
}

/// Largest batch; a burst longer than this is handed over in pieces.
const MAX_BATCH: usize = 512;

pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

struct Capture {
    cfg: CaptureConfig,
    counters: Arc<Counters>,
    cpu_seq: Vec<Option<u32>>,
    queue: Queue,
}

/// Events converted but not yet handed over: one burst, bounded by `max_pending`.
pub struct Queue {
    counters: Arc<Counters>,
    max_pending: usize,
    out: Vec<Raw>,
    since: Option<Instant>,
    /// Index in `out` of the last exec of each pid, for the superseded check.
    execs: HashMap<u32, usize>,
}

impl Queue {
    pub fn new(cfg: &CaptureConfig, counters: Arc<Counters>) -> Self {
        Queue {
            counters,
            max_pending: cfg.max_pending,
            out: Vec::new(),
            since: None,
            execs: HashMap::new(),
        }
    }

    fn age(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether the burst has waited long enough (or grown large enough) to go.
    pub fn due(&self, linger: Duration) -> bool {
        !self.out.is_empty() && (self.age() >= linger || self.out.len() >= MAX_BATCH)
    }

    /// How long to wait for more events before the burst is due.
    pub fn wait(&self, linger: Duration) -> Duration {
        if self.out.is_empty() {
            Duration::from_millis(500)
        } else {
            // At least 1 ms, so a full queue downstream is not polled in a spin.
            linger
                .saturating_sub(self.age())
                .max(Duration::from_millis(1))
        }
    }

    pub fn push(&mut self, raw: Raw) {
        if self.out.len() >= self.max_pending {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            if matches!(raw, Raw::Exec { .. }) {
                self.counters
                    .queue_full_execs
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.counters
            .queue_bytes
            .fetch_add(raw.heap_bytes(), Ordering::Relaxed);
        self.since.get_or_insert_with(Instant::now);
        if let Raw::Exec { pid, .. } = raw {
            self.execs.insert(pid, self.out.len());
        }
        self.out.push(raw);
    }

    /// An exec of `pid` at `ts_ns`: a queued snapshot of `pid` finished after that
    /// moment may show this newer image, so it is not reported as the older one's.
    fn mark_superseded(&mut self, pid: u32, ts_ns: u64) {
        if let Some(&i) = self.execs.get(&pid) {
            if let Some(Raw::Exec {
                read_done_ns,
                superseded,
                ..
            }) = self.out.get_mut(i)
            {
                if *read_done_ns > ts_ns {
                    *superseded = true;
                }
            }
        }
    }

    /// Hands the batch over, or keeps it (bounded by `max_pending`) while the queue is
    /// full. Returns false when the consumer is gone.
    pub fn hand_over(&mut self, tx: &SyncSender<Batch>) -> bool {
        match tx.try_send(std::mem::take(&mut self.out)) {
            Ok(()) => {
                self.since = None;
                self.execs.clear();
                true
            }
            Err(TrySendError::Full(batch)) => {
                self.out = batch;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Runs until `shutdown` is set or the enrichment thread is gone.
///
/// # Errors
/// When the socket keeps failing: the master restarts the plugin.
pub fn run(
    mut sock: ProcSocket,
    tx: SyncSender<Batch>,
    cfg: CaptureConfig,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut cap = Capture {
        queue: Queue::new(&cfg, counters.clone()),
        cfg,
        counters,
        cpu_seq: Vec::new(),
    };
    let mut burst: Vec<(u64, EventData)> = Vec::new();
    let mut io_errors = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        // 1. Drain the socket, parsing only.
        let mut drained = false;
        while burst.len() < MAX_BATCH {
            match sock.recv(true) {
                Ok(datagram) => {
                    io_errors = 0;
                    cap.counters
                        .netlink_datagrams
                        .fetch_add(1, Ordering::Relaxed);
                    cap.parse(datagram, &mut burst);
                }
                Err(RecvError::WouldBlock) => {
                    drained = true;
                    break;
                }
                Err(RecvError::Overrun) => {
                    cap.counters.enobufs.fetch_add(1, Ordering::Relaxed);
                }
                Err(RecvError::Io(e)) => {
                    io_errors += 1;
                    if io_errors >= 100 {
                        anyhow::bail!("proc connector socket keeps failing: {e}");
                    }
                    tracing::warn!("proc connector: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        // 2. Every snapshot in `out` was finished before this drain began, so any exec
        //    that could have replaced the image we read is in `burst` now.
        for (ts_ns, data) in &burst {
            if let EventData::Exec { tgid, .. } = data {
                cap.queue.mark_superseded(*tgid, *ts_ns);
            }
        }
        // 3. Hand over what has waited long enough. Only here, right after a drain and
        //    its check, is a batch final.
        let forced = !drained && !cap.queue.out.is_empty();
        if forced || cap.queue.due(cap.cfg.linger) {
            if forced {
                cap.counters.forced_batches.fetch_add(1, Ordering::Relaxed);
            }
            if !cap.queue.hand_over(&tx) {
                return Ok(());
            }
        }
        // 4. Snapshot the burst's execs and queue everything.
        cap.convert(&mut burst);
        if drained {
            let wait = cap.queue.wait(cap.cfg.linger);
            if let Err(e) = sock.wait_readable(wait) {
                tracing::warn!("proc connector: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

impl Capture {
    fn parse(&mut self, datagram: &[u8], burst: &mut Vec<(u64, EventData)>) {
        for msg in messages(datagram) {
            match msg {
                Ok(Message::Event(ev)) => {
                    // Acks take a number from the same per-CPU counter on current
                    // kernels; older ones send them with cpu -1 and no number.
                    if ev.cpu != u32::MAX {
                        self.track_sequence(ev.cpu, ev.cn_seq);
                    }
                    burst.push((ev.timestamp_ns, ev.data));
                }
                Ok(Message::Overrun) => {
                    self.counters.enobufs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    self.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The kernel numbers events per CPU; a jump means it dropped some for us.
    fn track_sequence(&mut self, cpu: u32, seq: u32) {
        let cpu = cpu as usize;
        if cpu >= 8192 {
            return;
        }
        if self.cpu_seq.len() <= cpu {
            self.cpu_seq.resize(cpu + 1, None);
        }
        if let Some(last) = self.cpu_seq[cpu] {
            let gap = seq.wrapping_sub(last).wrapping_sub(1);
            // A huge "gap" is a reordering or counter reset, not a loss we can size.
            if gap > 0 && gap < 1 << 30 {
                self.counters
                    .kernel_lost
                    .fetch_add(u64::from(gap), Ordering::Relaxed);
            }
        }
        self.cpu_seq[cpu] = Some(seq);
    }

    fn convert(&mut self, burst: &mut Vec<(u64, EventData)>) {
        if burst.is_empty() {
            return;
        }
        // First pass over the burst: the volatile half of every exec's snapshot.
        let mut begun: Vec<Option<Result<(hids_procfs::ProcDir, Snapshot), Gap>>> = burst
            .iter()
            .map(|(_, data)| match data {
                EventData::Exec { tgid, .. } if !self.cfg.only_ids => {
                    self.counters.execs_seen.fetch_add(1, Ordering::Relaxed);
                    Some(
                        if self.counters.queue_bytes.load(Ordering::Relaxed) >= self.cfg.queue_bytes
                        {
                            Err(Gap::Backlog)
                        } else {
                            snapshot::begin(&self.cfg.proc_root, *tgid, self.cfg.max_args_bytes)
                        },
                    )
                }
                _ => None,
            })
            .collect();
        for ((ts_ns, data), begun) in burst.drain(..).zip(begun.iter_mut()) {
            let raw = match data {
                EventData::Exec { tgid, .. } if !self.cfg.only_ids => {
                    let snapshot = match begun.take() {
                        Some(Ok((dir, mut snap))) => {
                            snapshot::finish(&dir, &mut snap);
                            Ok(Box::new(snap))
                        }
                        Some(Err(gap)) => Err(gap),
                        None => Err(Gap::Exited),
                    };
                    // Within one burst, a later exec of the same pid happened before
                    // any of its snapshots were taken.
                    self.queue.mark_superseded(tgid, ts_ns);
                    Raw::Exec {
                        ts_ns,
                        pid: tgid,
                        kernel: None,
                        snapshot,
                        read_done_ns: monotonic_ns(),
                        superseded: false,
                    }
                }
                // Threads share their process's image: only processes matter here.
                EventData::Fork {
                    parent_tgid,
                    child_pid,
                    child_tgid,
                    ..
                } if child_pid == child_tgid && !self.cfg.only_ids => Raw::Fork {
                    ts_ns,
                    parent: parent_tgid,
                    child: child_tgid,
                },
                EventData::Exit {
                    pid,
                    tgid,
                    exit_code,
                    ..
                } if pid == tgid && !self.cfg.only_ids => Raw::Exit {
                    ts_ns,
                    pid: tgid,
                    exit_code,
                },
                EventData::Uid {
                    pid,
                    tgid,
                    ruid,
                    euid,
                } if pid == tgid => Raw::Uid {
                    ts_ns,
                    pid,
                    ruid,
                    euid,
                },
                EventData::Gid {
                    pid, tgid, rgid, ..
                } if pid == tgid => Raw::Gid { ts_ns, pid, rgid },
                EventData::Sid { pid, tgid } if pid == tgid => Raw::Sid { ts_ns, pid },
                _ => continue,
            };
            self.queue.push(raw);
        }
    }
}
