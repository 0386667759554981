//! The enrichment thread: turns queued kernel events and `/proc` snapshots into ECS
//! events, keeps the process table, writes to the master, and reports its counters.

mod cgroups;
mod clocks;
mod exe;
mod facts;
mod identity;
mod kernel;
mod lineage;
mod process;
mod running;
mod stats;
mod users;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_plugin_sdk::Output;
use hids_types::event::{Event, Producer};

use crate::capture::snapshot;
use crate::capture::{monotonic_ns, Batch, Counters, KernelExec, Raw};
use crate::table::{Entry, Table};
use clocks::Clocks;
use facts::Facts;
use kernel::KernelFacts;
use stats::{Sources, Stats, Tally};
use users::Names;

pub use running::Running;

/// Which event kinds are written out. The table follows every kind regardless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Emit {
    pub exec: bool,
    pub exit: bool,
    pub fork: bool,
    pub setuid: bool,
    pub setgid: bool,
    pub setsid: bool,
}

impl Emit {
    /// Credential or session changes are wanted.
    pub fn ids(&self) -> bool {
        self.setuid || self.setgid || self.setsid
    }
}

pub struct EnrichConfig {
    /// The capture backend in use (`ebpf`, `cn_proc`), in every exec event and the stats.
    pub capture: &'static str,
    /// Why the backend is not the one asked for (eBPF refused), for the stats.
    pub capture_fallback: Option<String>,
    /// Where credential and session changes come from (see `backend::Started`).
    pub ids_capture: &'static str,
    pub emit: Emit,
    pub stats_interval: Duration,
}

pub struct Enricher {
    cfg: EnrichConfig,
    producer: Producer,
    out: Output,
    counters: Arc<Counters>,
    table: Table,
    /// Completes the eBPF backend's execs (`/proc` only as a counted fallback).
    kernel: KernelFacts,
    users: Names,
    groups: Names,
    clocks: Clocks,
    seq: u64,
    tally: Tally,
    running: Running,
    /// For reading the processes found running (`/proc`, the argument cap).
    proc_root: String,
    max_args_bytes: usize,
}

impl Enricher {
    pub fn new(
        cfg: EnrichConfig,
        producer: Producer,
        out: Output,
        counters: Arc<Counters>,
        table: Table,
    ) -> Self {
        Enricher {
            cfg,
            producer,
            out,
            counters,
            table,
            kernel: KernelFacts::new("/proc"),
            users: Names::new("/etc/passwd"),
            groups: Names::new("/etc/group"),
            clocks: Clocks::now(),
            seq: 0,
            tally: Tally::default(),
            running: Running::none(),
            proc_root: "/proc".to_owned(),
            max_args_bytes: 32 * 1024,
        }
    }

    /// Reports `running` (processes found at start, read from `proc_root` with arguments
    /// up to `max_args_bytes`) a chunk at a time between live batches.
    pub fn with_running(
        mut self,
        running: Running,
        proc_root: &str,
        max_args_bytes: usize,
    ) -> Self {
        self.running = running;
        self.kernel = KernelFacts::new(proc_root);
        self.proc_root = proc_root.to_owned();
        self.max_args_bytes = max_args_bytes;
        self
    }

    /// Runs until the capture thread hangs up, or the master stops reading.
    pub fn run(mut self, rx: Receiver<Batch>) -> std::io::Result<()> {
        let tick = Duration::from_secs(1);
        let mut next_tick = Instant::now() + tick;
        // The first stats record is shifted by the host's stagger offset, so a fleet's
        // records do not all arrive in the same second.
        let mut next_stats = Instant::now()
            + hids_types::stagger::offset(&self.producer.host.id, self.cfg.stats_interval);
        loop {
            let now = Instant::now();
            let mut wait = next_tick.saturating_duration_since(now);
            if let Some(due) = self.running.due_in(now) {
                wait = wait.min(due);
            }
            match rx.recv_timeout(wait) {
                Ok(batch) => {
                    for raw in batch {
                        let bytes = raw.heap_bytes();
                        let result = self.handle(raw);
                        self.counters
                            .queue_bytes
                            .fetch_sub(bytes, Ordering::Relaxed);
                        result?;
                    }
                    self.out.flush()?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.emit_stats()?;
                    return self.out.flush();
                }
            }
            self.report_running()?;
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                self.clocks = Clocks::now();
                self.table.sweep();
                self.users.refresh();
                self.groups.refresh();
                self.kernel.tick();
                if Instant::now() >= next_stats {
                    next_stats = Instant::now() + self.cfg.stats_interval;
                    self.emit_stats()?;
                }
                self.out.flush()?;
            }
        }
    }

    fn handle(&mut self, raw: Raw) -> std::io::Result<()> {
        match raw {
            Raw::KernelExec { ts_ns, pid, exec } => self.on_kernel_exec(ts_ns, pid, &exec),
            Raw::Exec {
                ts_ns,
                pid,
                snapshot,
                superseded,
                ..
            } => {
                let facts = facts::from_proc(&self.clocks, ts_ns, snapshot, superseded);
                self.on_exec(ts_ns, pid, facts)
            }
            Raw::Fork {
                ts_ns,
                parent,
                child,
            } => {
                self.table.fork(parent, child);
                if self.cfg.emit.fork {
                    let mut ev = self.base(ts_ns, "start", "fork");
                    ev.process = Some(lineage::known_process(&self.table, child));
                    self.emit(ev)?;
                }
                Ok(())
            }
            Raw::Exit {
                ts_ns,
                pid,
                exit_code,
            } => {
                if self.cfg.emit.exit {
                    let mut ev = self.base(ts_ns, "end", "exit");
                    let mut p = lineage::known_process(&self.table, pid);
                    let (code, signal) = process::exit_code(exit_code);
                    p.exit_code = Some(code);
                    ev.hids.exit_signal = signal;
                    ev.process = Some(p);
                    self.emit(ev)?;
                }
                self.table.exit(pid);
                Ok(())
            }
            Raw::Uid {
                ts_ns,
                pid,
                ruid,
                euid,
            } => {
                if !self.cfg.emit.setuid {
                    return Ok(());
                }
                let mut ev = self.base(ts_ns, "change", "setuid");
                ev.process = Some(lineage::known_process(&self.table, pid));
                ev.user = Some(identity::user(|id| self.users.get(id), ruid, euid, None));
                self.emit(ev)
            }
            Raw::Gid { ts_ns, pid, rgid } => {
                if !self.cfg.emit.setgid {
                    return Ok(());
                }
                let mut ev = self.base(ts_ns, "change", "setgid");
                ev.process = Some(lineage::known_process(&self.table, pid));
                ev.group = Some(identity::group(rgid, self.groups.get(rgid)));
                self.emit(ev)
            }
            Raw::Sid { ts_ns, pid } => {
                if !self.cfg.emit.setsid {
                    return Ok(());
                }
                let mut ev = self.base(ts_ns, "change", "setsid");
                ev.process = Some(lineage::known_process(&self.table, pid));
                self.emit(ev)
            }
        }
    }

    fn on_kernel_exec(&mut self, ts_ns: u64, pid: u32, k: &KernelExec) -> std::io::Result<()> {
        let facts = self.kernel.facts(pid, k);
        self.on_exec(ts_ns, pid, facts)
    }

    fn on_exec(&mut self, ts_ns: u64, pid: u32, facts: Facts) -> std::io::Result<()> {
        let before = self.table.get(pid).cloned().unwrap_or_default();
        let ev = self.exec_event(
            self.base(ts_ns, "start", "exec"),
            pid,
            facts,
            &before,
            false,
        );
        self.emit(ev)
    }

    /// The next chunk of processes found running at start (see [`Running`]), one `exec`
    /// each, read from `/proc`: `event.kind: state`, `hids.snapshot: true`, `@timestamp`
    /// the process's start. Without them a process started before the agent (a miner, a
    /// backdoor installed first) would never appear. Kernel threads and zombies are left
    /// out, and counted with those gone or unreadable in the closing log line.
    fn report_running(&mut self) -> std::io::Result<()> {
        for pid in self.running.next_chunk(Instant::now()) {
            let Ok((dir, mut snap)) = snapshot::begin(&self.proc_root, pid, self.max_args_bytes)
            else {
                self.running.unreadable += 1;
                continue;
            };
            snapshot::finish(&dir, &mut snap);
            let Some(stat) = snap
                .stat
                .as_deref()
                .and_then(|b| hids_procfs::parse_stat(b).ok())
            else {
                self.running.unreadable += 1;
                continue;
            };
            if stat.is_kernel_thread() {
                self.running.kernel_threads += 1;
                continue;
            }
            if stat.state == b'Z' {
                self.running.zombies += 1;
                continue;
            }
            let now = monotonic_ns();
            let facts = facts::from_proc(&self.clocks, now, Ok(Box::new(snap)), false);
            let mut ev = self.base(now, "info", "exec");
            ev.event.kind = "state".to_owned();
            ev.timestamp = self.clocks.start_wall(stat.start_ticks);
            ev.hids.snapshot = Some(true);
            // Its parent is named from the table alone (no image before this one), and
            // whether it forked is unknown: the table keeps what the scan assumed.
            let forked = self.table.get(pid).is_none_or(|e| e.forked);
            let mut ev = self.exec_event(ev, pid, facts, &Entry::default(), forked);
            ev.hids.capture = Some("procfs".to_owned());
            self.emit(ev)?;
            self.running.reported += 1;
        }
        if self.running.take_finished() {
            let r = &self.running;
            tracing::info!(
                "reported {} processes already running; left out {} kernel threads, {} zombies, \
                 {} gone or unreadable",
                r.reported,
                r.kernel_threads,
                r.zombies,
                r.unreadable
            );
        }
        Ok(())
    }

    /// Completes an exec event from what is known of it, and records the new image in
    /// the table.
    /// `before` is the image the process ran until this exec (the table's entry for a
    /// live exec); `forked` whether it has forked since (false after a live exec).
    fn exec_event(
        &mut self,
        mut ev: Event,
        pid: u32,
        facts: Facts,
        before: &Entry,
        forked: bool,
    ) -> Event {
        let Facts {
            ppid,
            start_ticks,
            ids,
            login,
            incomplete,
            ..
        } = facts;
        let ppid = ppid.unwrap_or(before.ppid);
        ev.hids.capture = Some(self.cfg.capture.to_owned());
        let (mut p, args_kept) = process::exec(&mut ev, pid, facts, &self.clocks);
        if ev.hids.args_truncated.is_some() {
            self.tally.args_truncated += 1;
        }
        if let Some(ids) = ids {
            let users = &self.users;
            ev.user = Some(identity::user(
                |id| users.get(id),
                ids.ruid,
                ids.euid,
                login,
            ));
            ev.group = Some(identity::group(ids.rgid, self.groups.get(ids.rgid)));
        }
        if ppid != 0 {
            p.parent = Some(lineage::parent(&self.table, ppid, before));
        }
        if let Some(reason) = incomplete {
            ev.hids.incomplete = Some(reason.to_owned());
            *self.tally.incomplete.entry(reason).or_default() += 1;
        }
        self.table.exec(
            pid,
            Entry {
                ppid,
                start_ticks: start_ticks.or(before.start_ticks),
                name: p.name.as_deref().map(Arc::from),
                exe: p.executable.as_deref().map(Arc::from),
                args: args_kept,
                exited_at: None,
                forked,
            },
        );
        ev.process = Some(p);
        ev
    }

    /// An event of the process category; its sequence is taken when it is written.
    fn base(&self, ts_ns: u64, type_: &str, action: &str) -> Event {
        let timestamp = self.clocks.wall_from_mono(ts_ns);
        self.producer
            .event(timestamp, 0, "event", "process", type_, action)
    }

    fn emit(&mut self, mut ev: Event) -> std::io::Result<()> {
        self.seq += 1;
        ev.event.sequence = self.seq;
        self.out.serialize_event(&ev)?;
        self.tally.emitted += 1;
        Ok(())
    }

    /// The periodic stats record: what was produced, dropped (and why) and incomplete.
    /// It is also the health frame the master shows in its status.
    fn emit_stats(&mut self) -> std::io::Result<()> {
        let stats = Stats::collect(&Sources {
            capture: self.cfg.capture,
            capture_fallback: self.cfg.capture_fallback.as_deref(),
            ids_capture: self.cfg.ids_capture,
            tally: &self.tally,
            counters: &self.counters,
            table: &self.table,
            proc_fallbacks: self.kernel.fallbacks(),
            cgroups: self.kernel.cgroup_stats(),
        });
        let stats = serde_json::to_value(stats).map_err(std::io::Error::other)?;
        let health = serde_json::to_vec(&stats).map_err(std::io::Error::other)?;
        let timestamp = self.clocks.wall_from_mono(monotonic_ns());
        let mut ev = self
            .producer
            .event(timestamp, 0, "metric", "host", "info", "stats");
        ev.hids.stats = Some(stats);
        self.emit(ev)?;
        self.out.health(&health)
    }
}
