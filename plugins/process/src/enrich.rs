//! The enrichment thread: turns queued kernel events and `/proc` snapshots into ECS
//! events, keeps the process table, writes to the master, and reports its counters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_plugin_sdk::Output;
use hids_procfs as procfs;
use hids_types::event::{
    CharDevice, Container, Event, Group, Process, ProcessRef, Producer, Tty, User, UserRef,
};
use hids_types::Timestamp;

use crate::capture::snapshot::{Gap, Snapshot};
use crate::capture::{monotonic_ns, Batch, Counters, KernelExec, Raw};
use crate::table::{keep_args, Entry, Table};
use crate::users::Names;

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
    pub emit: Emit,
    pub stats_interval: Duration,
}

/// Converts kernel clocks to wall time.
struct Clocks {
    /// realtime - monotonic, in ns.
    mono_to_wall: i128,
    /// boottime - monotonic, in ns: `/proc` start times count from boot.
    boot_minus_mono: i128,
    boot_wall_ns: i128,
}

impl Clocks {
    fn now() -> Self {
        use rustix::time::{clock_gettime, ClockId};
        let ns = |id| {
            let t = clock_gettime(id);
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        let mono = ns(ClockId::Monotonic);
        let real = ns(ClockId::Realtime);
        let boot = ns(ClockId::Boottime);
        Clocks {
            mono_to_wall: real - mono,
            boot_minus_mono: boot - mono,
            boot_wall_ns: real - boot,
        }
    }

    fn wall_from_mono(&self, ts_ns: u64) -> Timestamp {
        Timestamp::from_unix_nanos((i128::from(ts_ns) + self.mono_to_wall).max(0) as u64)
    }

    fn start_wall(&self, start_ticks: u64) -> Timestamp {
        let since_boot = i128::from(start_ticks) * (1_000_000_000 / procfs::TICKS_PER_SEC as i128);
        Timestamp::from_unix_nanos((self.boot_wall_ns + since_boot).max(0) as u64)
    }

    /// True when a process that started at `start_ticks` cannot be the one that exec'd
    /// at `exec_ts_ns`: the pid was reused in between.
    fn started_after(&self, start_ticks: u64, exec_ts_ns: u64) -> bool {
        let tick_ns = 1_000_000_000 / procfs::TICKS_PER_SEC as i128;
        let start_mono = i128::from(start_ticks) * tick_ns - self.boot_minus_mono;
        // One tick of slack: start times are truncated to ticks.
        start_mono > i128::from(exec_ts_ns) + tick_ns
    }
}

#[derive(Default)]
struct Tally {
    emitted: u64,
    incomplete: HashMap<&'static str, u64>,
    args_truncated: u64,
}

pub struct Enricher {
    cfg: EnrichConfig,
    producer: Producer,
    out: Output,
    counters: Arc<Counters>,
    table: Table,
    exe_paths: ExePaths,
    users: Names,
    groups: Names,
    clocks: Clocks,
    seq: u64,
    tally: Tally,
    buf: Vec<u8>,
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
            exe_paths: ExePaths::new("/proc"),
            users: Names::new("/etc/passwd"),
            groups: Names::new("/etc/group"),
            clocks: Clocks::now(),
            seq: 0,
            tally: Tally::default(),
            buf: Vec::with_capacity(4096),
        }
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
            let wait = next_tick.saturating_duration_since(Instant::now());
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
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                self.clocks = Clocks::now();
                self.table.sweep();
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
            Raw::Exec {
                ts_ns,
                pid,
                kernel,
                snapshot,
                superseded,
                ..
            } => self.on_exec(ts_ns, pid, kernel, snapshot, superseded),
            Raw::Fork {
                ts_ns,
                parent,
                child,
            } => {
                self.table.fork(parent, child);
                if self.cfg.emit.fork {
                    let mut ev = self.base(ts_ns, "start", "fork");
                    ev.process = Some(self.known_process(child));
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
                    let mut p = self.known_process(pid);
                    // The kernel keeps a wait status: exit code in bits 8-15, or the
                    // terminating signal in bits 0-6.
                    let signal = (exit_code & 0x7f) as i32;
                    if signal == 0 {
                        p.exit_code = Some(((exit_code >> 8) & 0xff) as i32);
                    } else {
                        p.exit_code = Some(128 + signal);
                        ev.hids.exit_signal = Some(signal);
                    }
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
                ev.process = Some(self.known_process(pid));
                ev.user = Some(self.user(ruid, euid, None));
                self.emit(ev)
            }
            Raw::Gid { ts_ns, pid, rgid } => {
                if !self.cfg.emit.setgid {
                    return Ok(());
                }
                let mut ev = self.base(ts_ns, "change", "setgid");
                ev.process = Some(self.known_process(pid));
                ev.group = Some(Group {
                    id: rgid.to_string(),
                    name: self.groups.get(rgid).map(|n| n.to_string()),
                });
                self.emit(ev)
            }
            Raw::Sid { ts_ns, pid } => {
                if !self.cfg.emit.setsid {
                    return Ok(());
                }
                let mut ev = self.base(ts_ns, "change", "setsid");
                ev.process = Some(self.known_process(pid));
                self.emit(ev)
            }
        }
    }

    fn on_exec(
        &mut self,
        ts_ns: u64,
        pid: u32,
        kernel: Option<Box<KernelExec>>,
        snapshot: Result<Box<Snapshot>, Gap>,
        superseded: bool,
    ) -> std::io::Result<()> {
        let known = self.table.get(pid).cloned().unwrap_or_default();
        let mut incomplete: Option<&'static str> = None;
        let facts = match kernel {
            Some(k) => {
                let mut facts = facts_from_kernel(&k, snapshot.ok(), &mut incomplete);
                if facts.exe.is_none() {
                    facts.exe = self.exe_paths.resolve(&k.filename, k.pid_ns);
                }
                facts
            }
            None => self.facts_from_proc(ts_ns, snapshot, superseded, &mut incomplete),
        };

        let mut ev = self.base(ts_ns, "start", "exec");
        ev.hids.capture = Some(self.cfg.capture.to_owned());
        let ppid = facts.ppid.unwrap_or(known.ppid);
        let mut p = Process {
            pid,
            executable: facts.exe,
            working_directory: facts.cwd,
            ..Default::default()
        };
        let mut args_kept = None;
        if let Some(args) = facts.args {
            if facts.args_truncated {
                ev.hids.args_truncated = Some(true);
                self.tally.args_truncated += 1;
            }
            p.command_line = Some(procfs::command_line(&args));
            p.args_count = Some(args.len());
            args_kept = Some(keep_args(args.clone()));
            p.args = Some(args);
        }
        ev.container = facts.container.map(|id| Container { id });
        ev.hids.pid_ns = facts.pid_ns;
        if let Some(ids) = facts.ids {
            ev.user = Some(self.user(ids.ruid, ids.euid, facts.login));
            ev.group = Some(Group {
                id: ids.rgid.to_string(),
                name: self.groups.get(ids.rgid).map(|n| n.to_string()),
            });
        }
        if let Some(start_ticks) = facts.start_ticks {
            p.entity_id = Some(format!("{pid}-{start_ticks}"));
            p.start = Some(self.clocks.start_wall(start_ticks));
        }
        p.name = facts.comm;
        p.session_leader = facts.session.map(|sid| ProcessRef {
            pid: sid,
            ..Default::default()
        });
        if facts.start_ticks.is_some() {
            p.interactive = Some(facts.tty.is_some());
        }
        if let Some((major, minor)) = facts.tty {
            p.tty = Some(Tty {
                char_device: CharDevice { major, minor },
            });
            ev.hids.tty = procfs::tty_name(major, minor);
        }
        if ppid != 0 {
            let mut parent = self.process_ref(ppid);
            // Until this exec the process ran its parent's image: when the parent is
            // already forgotten, that copy still names it.
            if parent.executable.is_none() && known.ppid == ppid {
                parent.name = known.name.as_deref().map(str::to_owned);
                parent.executable = known.exe.as_deref().map(str::to_owned);
                if let Some(args) = &known.args {
                    parent.command_line = Some(procfs::command_line(args));
                    parent.args = Some(args.to_vec());
                }
            }
            p.parent = Some(parent);
        }
        if let Some(reason) = incomplete {
            ev.hids.incomplete = Some(reason.to_owned());
            *self.tally.incomplete.entry(reason).or_default() += 1;
        }
        self.table.exec(
            pid,
            Entry {
                ppid,
                start_ticks: facts.start_ticks.or(known.start_ticks),
                name: p.name.as_deref().map(Arc::from),
                exe: p.executable.as_deref().map(Arc::from),
                args: args_kept,
                exited_at: None,
                forked: false,
            },
        );
        ev.process = Some(p);
        self.emit(ev)
    }

    /// The proc connector's exec: everything but the pid comes from the snapshot.
    fn facts_from_proc(
        &self,
        ts_ns: u64,
        snapshot: Result<Box<Snapshot>, Gap>,
        superseded: bool,
        incomplete: &mut Option<&'static str>,
    ) -> Facts {
        let snap = match snapshot {
            Ok(_) if superseded => {
                *incomplete = Some("superseded");
                return Facts::default();
            }
            Ok(s) => s,
            Err(gap) => {
                *incomplete = Some(gap.reason());
                return Facts::default();
            }
        };
        let stat = snap
            .stat
            .as_deref()
            .and_then(|b| procfs::parse_stat(b).ok());
        // A pinned /proc dir cannot mix two processes, but the pid may already have
        // belonged to a new process when we opened it.
        if let Some(st) = &stat {
            if self.clocks.started_after(st.start_ticks, ts_ns) {
                *incomplete = Some("reused");
                return Facts::default();
            }
        }
        let mut facts = Facts::default();
        let args = procfs::parse_cmdline(&snap.cmdline);
        if args.is_empty() {
            // The argument area is released at exit: only a zombie reads empty.
            incomplete.get_or_insert("exited");
        } else {
            facts.args = Some(args);
            facts.args_truncated = snap.cmdline_truncated;
        }
        facts.exe = snap.exe.as_deref().map(lossy);
        facts.cwd = snap.cwd.as_deref().map(lossy);
        facts.container = snap
            .cgroup
            .as_deref()
            .and_then(procfs::container_id_from_cgroup);
        facts.pid_ns = snap.pid_ns.as_deref().and_then(procfs::parse_ns_link);
        if let Some(st) = snap
            .status
            .as_deref()
            .and_then(|b| procfs::parse_status(b).ok())
        {
            facts.ids = Some(Ids {
                ruid: st.uid[0],
                euid: st.uid[1],
                rgid: st.gid[0],
            });
        }
        facts.login = snap.loginuid.as_deref().and_then(procfs::parse_loginuid);
        if let Some(st) = stat {
            facts.ppid = Some(st.ppid);
            facts.start_ticks = Some(st.start_ticks);
            facts.comm = Some(st.comm);
            facts.session = Some(st.session);
            facts.tty = procfs::tty_device(st.tty_nr);
        }
        facts
    }

    fn process_ref(&self, pid: u32) -> ProcessRef {
        let mut r = ProcessRef {
            pid,
            ..Default::default()
        };
        if let Some(e) = self.table.get(pid) {
            r.entity_id = e.entity_id(pid);
            r.name = e.name.as_deref().map(str::to_owned);
            r.executable = e.exe.as_deref().map(str::to_owned);
            if let Some(args) = &e.args {
                r.command_line = Some(procfs::command_line(args));
                r.args = Some(args.to_vec());
            }
        }
        r
    }

    /// A process as the table knows it, for events that carry no snapshot.
    fn known_process(&self, pid: u32) -> Process {
        let mut p = Process {
            pid,
            ..Default::default()
        };
        if let Some(e) = self.table.get(pid) {
            p.entity_id = e.entity_id(pid);
            p.name = e.name.as_deref().map(str::to_owned);
            p.executable = e.exe.as_deref().map(str::to_owned);
            if e.ppid != 0 {
                p.parent = Some(ProcessRef {
                    pid: e.ppid,
                    ..Default::default()
                });
            }
        }
        p
    }

    fn user(&mut self, ruid: u32, euid: u32, login: Option<u32>) -> User {
        let name = |users: &mut Names, id: u32| users.get(id).map(|n| n.to_string());
        User {
            id: ruid.to_string(),
            name: name(&mut self.users, ruid),
            effective: (euid != ruid).then(|| UserRef {
                id: euid.to_string(),
                name: name(&mut self.users, euid),
            }),
            audit: login.map(|id| UserRef {
                id: id.to_string(),
                name: name(&mut self.users, id),
            }),
        }
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
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &ev).map_err(std::io::Error::other)?;
        self.out.event(&self.buf)?;
        self.tally.emitted += 1;
        Ok(())
    }

    /// The periodic stats record: what was produced, dropped (and why) and incomplete.
    /// It is also the health frame the master shows in its status.
    fn emit_stats(&mut self) -> std::io::Result<()> {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let stats = serde_json::json!({
            "capture": self.cfg.capture,
            "capture_fallback": self.cfg.capture_fallback,
            "events_emitted": self.tally.emitted,
            "execs_seen": get(&c.execs_seen),
            "dropped": {
                "capture_queue_full": get(&c.queue_full),
                "kernel_lost": get(&c.kernel_lost),
                "ring_buffer_full": get(&c.ring_drops.execs) + get(&c.ring_drops.other),
            },
            "dropped_execs": get(&c.queue_full_execs) + get(&c.ring_drops.execs),
            "enobufs": get(&c.enobufs),
            "incomplete": self.tally.incomplete,
            "args_truncated": self.tally.args_truncated,
            "parse_errors": get(&c.parse_errors),
            "netlink_datagrams": get(&c.netlink_datagrams),
            "ring_records": get(&c.ring_records),
            "forced_batches": get(&c.forced_batches),
            "queue_bytes": c.queue_bytes.load(Ordering::Relaxed),
            "table": { "entries": self.table.len(), "evicted": self.table.evicted },
        });
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

/// What one exec tells, whichever backend saw it. All of it describes one process.
#[derive(Debug, Default)]
struct Facts {
    ppid: Option<u32>,
    start_ticks: Option<u64>,
    comm: Option<String>,
    session: Option<u32>,
    tty: Option<(u32, u32)>,
    args: Option<Vec<String>>,
    args_truncated: bool,
    exe: Option<String>,
    cwd: Option<String>,
    container: Option<String>,
    pid_ns: Option<u64>,
    ids: Option<Ids>,
    login: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Ids {
    ruid: u32,
    euid: u32,
    rgid: u32,
}

/// The eBPF backend's exec: the kernel record, plus from `/proc` what it lacks, used
/// only when `/proc/<pid>` still holds the process that exec'd (same start time).
fn facts_from_kernel(
    k: &KernelExec,
    supplement: Option<Box<Snapshot>>,
    incomplete: &mut Option<&'static str>,
) -> Facts {
    let mut facts = Facts {
        ppid: Some(k.ppid),
        start_ticks: Some(k.start_ticks()),
        comm: Some(lossy(&k.comm)),
        session: Some(k.sid),
        tty: (k.tty.0 != 0).then_some(k.tty),
        pid_ns: (k.pid_ns != 0).then_some(u64::from(k.pid_ns)),
        ids: Some(Ids {
            ruid: k.uid,
            euid: k.euid,
            rgid: k.gid,
        }),
        login: (k.loginuid != u32::MAX).then_some(k.loginuid),
        ..Facts::default()
    };
    if k.args_unreadable {
        *incomplete = Some("args_unreadable");
    } else {
        facts.args = Some(procfs::parse_cmdline(&k.args));
        facts.args_truncated = k.args_truncated;
    }
    let same_process = supplement.filter(|s| {
        s.stat
            .as_deref()
            .and_then(|b| procfs::parse_stat(b).ok())
            .is_some_and(|st| st.start_ticks == k.start_ticks())
    });
    if let Some(s) = &same_process {
        facts.cwd = s.cwd.as_deref().map(lossy);
        facts.container = s
            .cgroup
            .as_deref()
            .and_then(procfs::container_id_from_cgroup);
    }
    // Left empty when the process is gone: the caller resolves the kernel's path.
    facts.exe = same_process
        .as_ref()
        .and_then(|s| s.exe.as_deref())
        .map(lossy);
    facts
}

/// Resolves the path given to execve the way `/proc/<pid>/exe` would show it (symlinks
/// followed: `/bin/sh` is `/usr/bin/dash`), for processes gone before `/proc` could say.
/// Only for processes in our own pid namespace (a container's paths are not ours to
/// resolve) and absolute paths. Cached, bounded, and forgotten every minute so a changed
/// symlink is seen.
struct ExePaths {
    own_pid_ns: Option<u64>,
    cache: HashMap<Vec<u8>, Option<Arc<str>>>,
    cleared: Instant,
}

impl ExePaths {
    const MAX: usize = 4096;

    fn new(proc_root: &str) -> Self {
        let own_pid_ns = std::fs::read_link(format!("{proc_root}/self/ns/pid"))
            .ok()
            .and_then(|l| procfs::parse_ns_link(l.as_os_str().as_encoded_bytes()));
        ExePaths {
            own_pid_ns,
            cache: HashMap::new(),
            cleared: Instant::now(),
        }
    }

    fn resolve(&mut self, given: &[u8], pid_ns: u32) -> Option<String> {
        if given.is_empty() {
            return None;
        }
        let ours = self.own_pid_ns == Some(u64::from(pid_ns));
        if !ours || !given.starts_with(b"/") {
            return Some(lossy(given));
        }
        if self.cache.len() >= Self::MAX || self.cleared.elapsed() >= Duration::from_secs(60) {
            self.cache.clear();
            self.cleared = Instant::now();
        }
        let resolved = self.cache.entry(given.to_vec()).or_insert_with(|| {
            let path = std::path::Path::new(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(given),
            );
            std::fs::canonicalize(path)
                .ok()
                .map(|p| Arc::from(p.to_string_lossy().as_ref()))
        });
        Some(
            resolved
                .as_deref()
                .map_or_else(|| lossy(given), str::to_owned),
        )
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
