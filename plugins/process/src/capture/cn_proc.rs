//! The proc connector backend (any kernel): the kernel says that a process exec'd, and
//! `/proc` is read at once for the rest.
//!
//! Each pass drains the socket until it is empty, reads the argument lists of all execs
//! in that burst first (they vanish first), completes their snapshots, and queues the
//! burst as one batch. Batching matters: one wake-up of the enrichment thread (and one
//! write to the master) per burst instead of per event is most of the plugin's CPU cost
//! in an exec storm. This thread never blocks on anything but the socket: when the queue
//! is full, events are dropped and counted ([`Queue`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use hids_netlink::proc_connector::{messages, EventData, Message};
use hids_netlink::{ProcSocket, RecvError};

use super::queue::Queue;
use super::snapshot::{self, Gap, Snapshot};
use super::{monotonic_ns, Batch, CaptureConfig, Counters, Raw, MAX_BATCH};

struct Capture {
    cfg: CaptureConfig,
    counters: Arc<Counters>,
    cpu_seq: Vec<Option<u32>>,
    queue: Queue,
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
        let forced = !drained && !cap.queue.is_empty();
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
