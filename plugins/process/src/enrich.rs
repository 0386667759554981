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
    CharDevice, Container, Event, EventMeta, Group, Hids, Host, Process, ProcessRef, Tty, User,
    UserRef,
};
use hids_types::Timestamp;

use crate::capture::{monotonic_ns, Batch, Counters, Raw};
use crate::snapshot::{Gap, Snapshot};
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

pub struct EnrichConfig {
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
    host: Host,
    plugin: Arc<str>,
    run_id: Arc<str>,
    capture: &'static str,
    out: Output,
    counters: Arc<Counters>,
    table: Table,
    users: Names,
    groups: Names,
    clocks: Clocks,
    seq: u64,
    tally: Tally,
    buf: Vec<u8>,
}

impl Enricher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: EnrichConfig,
        host: Host,
        plugin: Arc<str>,
        run_id: Arc<str>,
        out: Output,
        counters: Arc<Counters>,
        table: Table,
    ) -> Self {
        Enricher {
            cfg,
            host,
            plugin,
            run_id,
            capture: "cn_proc",
            out,
            counters,
            table,
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
        let mut next_stats =
            Instant::now() + hids_types::stagger::offset(&self.host.id, self.cfg.stats_interval);
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
                snapshot,
                superseded,
                ..
            } => self.on_exec(ts_ns, pid, snapshot, superseded),
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
        snapshot: Result<Box<Snapshot>, Gap>,
        superseded: bool,
    ) -> std::io::Result<()> {
        let known = self.table.get(pid).cloned().unwrap_or_default();
        let mut incomplete: Option<&'static str> = None;
        let snap = match snapshot {
            Ok(_) if superseded => {
                incomplete = Some("superseded");
                None
            }
            Ok(s) => Some(s),
            Err(gap) => {
                incomplete = Some(gap.reason());
                None
            }
        };
        let stat = snap
            .as_ref()
            .and_then(|s| s.stat.as_deref())
            .and_then(|b| procfs::parse_stat(b).ok());
        // A pinned /proc dir cannot mix two processes, but the pid may already have
        // belonged to a new process when we opened it.
        let (snap, stat) = match stat {
            Some(st) if self.clocks.started_after(st.start_ticks, ts_ns) => {
                incomplete = Some("reused");
                (None, None)
            }
            other => (snap, other),
        };

        let mut ev = self.base(ts_ns, "start", "exec");
        ev.hids.capture = Some(self.capture.to_owned());
        let ppid = stat.as_ref().map_or(known.ppid, |s| s.ppid);
        let mut p = Process {
            pid,
            ..Default::default()
        };
        let mut args_kept = None;
        if let Some(s) = &snap {
            let args = procfs::parse_cmdline(&s.cmdline);
            if args.is_empty() {
                // The argument area is released at exit: only a zombie reads empty.
                incomplete.get_or_insert("exited");
            } else {
                if s.cmdline_truncated {
                    ev.hids.args_truncated = Some(true);
                    self.tally.args_truncated += 1;
                }
                p.command_line = Some(procfs::command_line(&args));
                p.args_count = Some(args.len());
                args_kept = Some(keep_args(args.clone()));
                p.args = Some(args);
            }
            p.executable = s.exe.as_deref().map(lossy);
            p.working_directory = s.cwd.as_deref().map(lossy);
            ev.container = s
                .cgroup
                .as_deref()
                .and_then(procfs::container_id_from_cgroup)
                .map(|id| Container { id });
            ev.hids.pid_ns = s.pid_ns.as_deref().and_then(procfs::parse_ns_link);
            let status = s
                .status
                .as_deref()
                .and_then(|b| procfs::parse_status(b).ok());
            let login = s.loginuid.as_deref().and_then(procfs::parse_loginuid);
            if let Some(st) = status {
                ev.user = Some(self.user(st.uid[0], st.uid[1], login));
                ev.group = Some(Group {
                    id: st.gid[0].to_string(),
                    name: self.groups.get(st.gid[0]).map(|n| n.to_string()),
                });
            }
        }
        if let Some(st) = &stat {
            p.entity_id = Some(format!("{pid}-{}", st.start_ticks));
            p.name = Some(st.comm.clone());
            p.start = Some(self.clocks.start_wall(st.start_ticks));
            p.session_leader = Some(ProcessRef {
                pid: st.session,
                ..Default::default()
            });
            if let Some((major, minor)) = procfs::tty_device(st.tty_nr) {
                p.interactive = Some(true);
                p.tty = Some(Tty {
                    char_device: CharDevice { major, minor },
                });
                ev.hids.tty = procfs::tty_name(major, minor);
            } else {
                p.interactive = Some(false);
            }
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
                start_ticks: stat.as_ref().map(|s| s.start_ticks).or(known.start_ticks),
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

    fn base(&self, ts_ns: u64, type_: &str, action: &str) -> Event {
        Event {
            timestamp: self.clocks.wall_from_mono(ts_ns),
            event: EventMeta::new("event", "process", type_, action, &self.plugin),
            host: self.host.clone(),
            process: None,
            user: None,
            group: None,
            container: None,
            hids: Hids::new(self.plugin.clone(), self.run_id.clone()),
        }
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
            "capture": self.capture,
            "events_emitted": self.tally.emitted,
            "execs_seen": get(&c.execs_seen),
            "dropped": {
                "capture_queue_full": get(&c.queue_full),
                "kernel_lost": get(&c.kernel_lost),
            },
            "dropped_execs": get(&c.queue_full_execs),
            "enobufs": get(&c.enobufs),
            "incomplete": self.tally.incomplete,
            "args_truncated": self.tally.args_truncated,
            "parse_errors": get(&c.parse_errors),
            "netlink_datagrams": get(&c.netlink_datagrams),
            "forced_batches": get(&c.forced_batches),
            "queue_bytes": c.queue_bytes.load(Ordering::Relaxed),
            "table": { "entries": self.table.len(), "evicted": self.table.evicted },
        });
        let health = serde_json::to_vec(&stats).map_err(std::io::Error::other)?;
        let mut ev = self.base(monotonic_ns(), "info", "stats");
        ev.event.kind = "metric".to_owned();
        ev.event.category = vec!["host".to_owned()];
        ev.hids.stats = Some(stats);
        self.emit(ev)?;
        self.out.health(&health)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
