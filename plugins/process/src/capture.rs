//! The capture thread: drains the proc connector socket, snapshots `/proc` for every exec
//! at once, and hands everything to the enrichment thread through one bounded queue.
//!
//! This thread never blocks on anything but the socket. When the queue is full (count or
//! byte budget) the event is dropped here and counted: this is the plugin's one
//! documented drop point, so the kernel's buffer keeps draining whatever happens
//! downstream.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use hids_netlink::proc_connector::{messages, EventData, Message};
use hids_netlink::{ProcSocket, RecvError};

use crate::snapshot::{self, Gap, Snapshot};

/// One item on the capture queue, in kernel order.
#[derive(Debug)]
pub enum Raw {
    Exec {
        ts_ns: u64,
        pid: u32,
        snapshot: Result<Snapshot, Gap>,
        /// CLOCK_MONOTONIC when the snapshot was finished: an exec of the same pid
        /// reported with an earlier timestamp means the snapshot may show that later image.
        read_done_ns: u64,
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
    /// The socket was found empty: every exec reported before that moment, and so
    /// before any snapshot ahead of this marker was finished, is queued ahead of it.
    Drained,
}

impl Raw {
    pub fn heap_bytes(&self) -> usize {
        match self {
            Raw::Exec {
                snapshot: Ok(s), ..
            } => s.heap_bytes(),
            _ => 0,
        }
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
    /// Heap bytes of snapshots waiting in the queue.
    pub queue_bytes: AtomicUsize,
}

pub struct CaptureConfig {
    pub proc_root: String,
    pub max_args_bytes: usize,
    pub queue_bytes: usize,
}

pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs until `shutdown` is set or the enrichment thread is gone.
///
/// # Errors
/// When the socket keeps failing: the master restarts the plugin.
pub fn run(
    mut sock: ProcSocket,
    tx: SyncSender<Raw>,
    cfg: CaptureConfig,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut cpu_seq: Vec<Option<u32>> = Vec::new();
    // True while something arrived since the last Drained marker was queued.
    let mut marker_owed = false;
    let mut io_errors = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        match sock.recv(marker_owed) {
            Ok(datagram) => {
                io_errors = 0;
                marker_owed = true;
                counters.netlink_datagrams.fetch_add(1, Ordering::Relaxed);
                for msg in messages(datagram) {
                    match msg {
                        Ok(Message::Event(ev)) => {
                            // Acks take a number from the same per-CPU counter on current
                            // kernels; older ones send them with cpu -1 and no number.
                            if ev.cpu != u32::MAX {
                                track_sequence(&mut cpu_seq, ev.cpu, ev.cn_seq, &counters);
                            }
                            if let Some(raw) = convert(ev.timestamp_ns, ev.data, &cfg, &counters) {
                                if !push(&tx, raw, &counters) {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(Message::Overrun) => {
                            counters.enobufs.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(RecvError::WouldBlock) => {
                if marker_owed {
                    match tx.try_send(Raw::Drained) {
                        Ok(()) => marker_owed = false,
                        // Retried on the next pass; the queue drains at memory speed, so a
                        // short pause beats spinning.
                        Err(TrySendError::Full(_)) => {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Err(TrySendError::Disconnected(_)) => return Ok(()),
                    }
                }
            }
            Err(RecvError::Overrun) => {
                counters.enobufs.fetch_add(1, Ordering::Relaxed);
            }
            Err(RecvError::Io(e)) => {
                io_errors += 1;
                if io_errors >= 100 {
                    anyhow::bail!("proc connector socket keeps failing: {e}");
                }
                tracing::warn!("proc connector: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// The kernel numbers events per CPU; a jump means it dropped some for us.
fn track_sequence(cpu_seq: &mut Vec<Option<u32>>, cpu: u32, seq: u32, counters: &Counters) {
    let cpu = cpu as usize;
    if cpu >= 8192 {
        return;
    }
    if cpu_seq.len() <= cpu {
        cpu_seq.resize(cpu + 1, None);
    }
    if let Some(last) = cpu_seq[cpu] {
        let gap = seq.wrapping_sub(last).wrapping_sub(1);
        // A huge "gap" is a reordering or counter reset, not a loss we can size.
        if gap > 0 && gap < 1 << 30 {
            counters
                .kernel_lost
                .fetch_add(u64::from(gap), Ordering::Relaxed);
        }
    }
    cpu_seq[cpu] = Some(seq);
}

fn convert(ts_ns: u64, data: EventData, cfg: &CaptureConfig, counters: &Counters) -> Option<Raw> {
    Some(match data {
        EventData::Exec { tgid, .. } => {
            counters.execs_seen.fetch_add(1, Ordering::Relaxed);
            let snapshot = if counters.queue_bytes.load(Ordering::Relaxed) >= cfg.queue_bytes {
                Err(Gap::Backlog)
            } else {
                snapshot::take(&cfg.proc_root, tgid, cfg.max_args_bytes)
            };
            Raw::Exec {
                ts_ns,
                pid: tgid,
                snapshot,
                read_done_ns: monotonic_ns(),
            }
        }
        // Threads share their process's image: only processes matter here.
        EventData::Fork {
            parent_tgid,
            child_pid,
            child_tgid,
            ..
        } if child_pid == child_tgid => Raw::Fork {
            ts_ns,
            parent: parent_tgid,
            child: child_tgid,
        },
        EventData::Exit {
            pid,
            tgid,
            exit_code,
            ..
        } if pid == tgid => Raw::Exit {
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
        _ => return None,
    })
}

/// Queues `raw`, or drops and counts it. Returns false when the consumer is gone.
fn push(tx: &SyncSender<Raw>, raw: Raw, counters: &Counters) -> bool {
    let bytes = raw.heap_bytes();
    let is_exec = matches!(raw, Raw::Exec { .. });
    counters.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
    match tx.try_send(raw) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            counters.queue_bytes.fetch_sub(bytes, Ordering::Relaxed);
            counters.queue_full.fetch_add(1, Ordering::Relaxed);
            if is_exec {
                counters.queue_full_execs.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}
