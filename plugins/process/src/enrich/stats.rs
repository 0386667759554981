//! The plugin's counters, written every `--stats-interval-secs` as the `hids.stats` of a
//! `stats` event and sent to the master as its health: [`Stats`], the record
//! docs/events.md describes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::cgroups::CgroupStats;
use crate::capture::Counters;
use crate::table::Table;

/// What the enrichment thread counts itself.
#[derive(Debug, Default)]
pub struct Tally {
    pub emitted: u64,
    pub incomplete: BTreeMap<&'static str, u64>,
    pub args_truncated: u64,
}

/// The stats record. Fields in the order they are written: by name, as they always
/// were (the record used to be a JSON map).
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Argument lists cut at `--max-args-bytes`.
    pub args_truncated: u64,
    /// The capture backend in use: `ebpf` or `cn_proc`.
    pub capture: &'static str,
    /// Why it is not eBPF although eBPF was allowed; null otherwise.
    pub capture_fallback: Option<String>,
    /// eBPF: the cache of cgroup ids that names the containers of execs.
    pub cgroups: CgroupStats,
    pub dropped: Dropped,
    /// Execs among the dropped events (queue full or ring buffer full).
    pub dropped_execs: u64,
    /// How often the kernel reported a proc connector socket overrun.
    pub enobufs: u64,
    /// Events written before this record: the last `event.sequence` before it.
    pub events_emitted: u64,
    /// Exec events received from the kernel.
    pub execs_seen: u64,
    /// Bursts handed over before the socket was drained (the superseded check is
    /// weaker for those).
    pub forced_batches: u64,
    /// Where setuid, setgid and setsid come from: `fentry`, `syscall_tracepoints`,
    /// `cn_proc` (a proc connector socket beside eBPF, or the cn_proc backend),
    /// `unavailable`, or `not_wanted`.
    pub ids_capture: &'static str,
    /// Execs reported without their `/proc` fields, by reason.
    pub incomplete: BTreeMap<&'static str, u64>,
    /// Proc connector datagrams read.
    pub netlink_datagrams: u64,
    /// Kernel records that could not be parsed.
    pub parse_errors: u64,
    /// eBPF: execs for which `/proc/<pid>` was read after all.
    pub proc_fallbacks: ProcFallbacks,
    /// Heap bytes of `/proc` data waiting in the capture queue.
    pub queue_bytes: usize,
    /// Records read from the eBPF ring buffer.
    pub ring_records: u64,
    pub table: TableStats,
}

/// Events lost, by where.
#[derive(Debug, Serialize)]
pub struct Dropped {
    /// The enrichment side was too slow: dropped at the capture queue.
    pub capture_queue_full: u64,
    /// The kernel numbered them but never delivered them (cn_proc sequence gaps).
    pub kernel_lost: u64,
    /// The eBPF programs found no room in the ring buffer (per-CPU counters, summed).
    pub ring_buffer_full: u64,
}

/// eBPF execs completed from `/proc/<pid>` because the kernel record could not say:
/// per field, then how many of those reads found the process gone (or the pid another
/// process's). Zero on a host where the kernel's path walks finish and every cgroup id
/// resolves: a non-zero count is a cost and a race to look at.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ProcFallbacks {
    /// `/proc/<pid>/cgroup`: the cgroup id could not name the container (no cgroup2,
    /// an id not resolved, or a v1 hierarchy holding containers).
    pub container: u64,
    /// `/proc/<pid>/cwd`: the kernel's walk of the working directory was cut short
    /// (gone: no `process.working_directory`).
    pub cwd: u64,
    /// `/proc/<pid>/exe`: the kernel's walk of the executable's path was cut short
    /// (gone: the path given to execve is reported, resolved in our own namespace).
    pub exe: u64,
    /// Of these execs, those whose process was gone by then.
    pub gone: u64,
}

/// The process table.
#[derive(Debug, Serialize)]
pub struct TableStats {
    /// Processes known.
    pub entries: usize,
    /// Evicted at the table's bound.
    pub evicted: u64,
}

/// Where the stats come from.
pub struct Sources<'a> {
    pub capture: &'static str,
    pub capture_fallback: Option<&'a str>,
    pub ids_capture: &'static str,
    pub tally: &'a Tally,
    pub counters: &'a Counters,
    pub table: &'a Table,
    pub proc_fallbacks: &'a ProcFallbacks,
    pub cgroups: CgroupStats,
}

impl Stats {
    pub fn collect(from: &Sources<'_>) -> Stats {
        let c = from.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            args_truncated: from.tally.args_truncated,
            capture: from.capture,
            capture_fallback: from.capture_fallback.map(str::to_owned),
            cgroups: from.cgroups.clone(),
            dropped: Dropped {
                capture_queue_full: get(&c.queue_full),
                kernel_lost: get(&c.kernel_lost),
                ring_buffer_full: get(&c.ring_drops.execs) + get(&c.ring_drops.other),
            },
            dropped_execs: get(&c.queue_full_execs) + get(&c.ring_drops.execs),
            ids_capture: from.ids_capture,
            enobufs: get(&c.enobufs),
            events_emitted: from.tally.emitted,
            execs_seen: get(&c.execs_seen),
            forced_batches: get(&c.forced_batches),
            incomplete: from.tally.incomplete.clone(),
            netlink_datagrams: get(&c.netlink_datagrams),
            parse_errors: get(&c.parse_errors),
            proc_fallbacks: from.proc_fallbacks.clone(),
            queue_bytes: c.queue_bytes.load(Ordering::Relaxed),
            ring_records: get(&c.ring_records),
            table: TableStats {
                entries: from.table.len(),
                evicted: from.table.evicted,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn written_as_docs_events_md_shows_it() {
        let counters = Counters::default();
        counters.queue_full.store(3, Ordering::Relaxed);
        counters.queue_full_execs.store(2, Ordering::Relaxed);
        counters.ring_drops.execs.store(5, Ordering::Relaxed);
        counters.ring_drops.other.store(1, Ordering::Relaxed);
        counters.execs_seen.store(7, Ordering::Relaxed);
        counters.netlink_datagrams.store(22, Ordering::Relaxed);
        let mut tally = Tally {
            emitted: 20,
            ..Tally::default()
        };
        tally.incomplete.insert("exited", 1);
        let stats = Stats::collect(&Sources {
            capture: "cn_proc",
            capture_fallback: None,
            ids_capture: "cn_proc",
            tally: &tally,
            counters: &counters,
            table: &crate::table::Table::new(100, Duration::from_secs(1)),
            proc_fallbacks: &ProcFallbacks {
                exe: 1,
                ..ProcFallbacks::default()
            },
            cgroups: CgroupStats::default(),
        });
        // Byte for byte what the plugin wrote when this was a JSON map, with the
        // cgroup cache and the /proc fallbacks of issue 19.
        assert_eq!(
            serde_json::to_string(&stats).unwrap(),
            concat!(
                r#"{"args_truncated":0,"capture":"cn_proc","capture_fallback":null,"#,
                r#""cgroups":{"by_handle":0,"by_walk":0,"entries":0,"evicted":0,"misses":0,"#,
                r#""walks":0},"#,
                r#""dropped":{"capture_queue_full":3,"kernel_lost":0,"ring_buffer_full":6},"#,
                r#""dropped_execs":7,"enobufs":0,"events_emitted":20,"execs_seen":7,"#,
                r#""forced_batches":0,"ids_capture":"cn_proc","incomplete":{"exited":1},"#,
                r#""netlink_datagrams":22,"#,
                r#""parse_errors":0,"#,
                r#""proc_fallbacks":{"container":0,"cwd":0,"exe":1,"gone":0},"#,
                r#""queue_bytes":0,"ring_records":0,"#,
                r#""table":{"entries":0,"evicted":0}}"#
            )
        );
    }
}
