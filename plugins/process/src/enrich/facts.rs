//! What one exec tells about its process, from whichever backend saw it: the eBPF
//! kernel record (plus `/proc`, as a fallback, for what it lacks) or the proc
//! connector's `/proc` snapshot. Each source is checked to describe the process that exec'd, or left out
//! with the reason (`incomplete`).

use hids_procfs as procfs;

use super::clocks::Clocks;
use crate::capture::snapshot::{Gap, Snapshot};
use crate::capture::KernelExec;

/// What one exec tells, whichever backend saw it. All of it describes one process.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub ppid: Option<u32>,
    pub start_ticks: Option<u64>,
    pub comm: Option<String>,
    pub session: Option<u32>,
    pub tty: Option<(u32, u32)>,
    pub args: Option<Vec<String>>,
    pub args_truncated: bool,
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub container: Option<String>,
    pub pid_ns: Option<u64>,
    pub ids: Option<Ids>,
    pub login: Option<u32>,
    /// Why some of it is missing (`hids.incomplete`).
    pub incomplete: Option<&'static str>,
}

/// Real user, effective user, real group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
}

impl Facts {
    fn missing(reason: &'static str) -> Self {
        Facts {
            incomplete: Some(reason),
            ..Facts::default()
        }
    }
}

/// The eBPF backend's exec, from the kernel record alone: the executable and working
/// directory the kernel resolved (absent when its path walk was cut short). The
/// container comes from the cgroup id (the caller's cache); what is still missing, the
/// caller may take from `/proc` ([`supplement`]).
pub fn from_kernel(k: &KernelExec) -> Facts {
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
        exe: (!k.exe.is_empty()).then(|| lossy(&k.exe)),
        cwd: (!k.cwd.is_empty()).then(|| lossy(&k.cwd)),
        ..Facts::default()
    };
    if k.args_unreadable {
        facts.incomplete = Some("args_unreadable");
    } else if k.shed {
        facts.incomplete = Some("backlog");
    } else {
        facts.args = Some(procfs::parse_cmdline(&k.args));
        facts.args_truncated = k.args_truncated;
    }
    facts
}

/// Fills what the kernel record left out (`exe`, `cwd`, `container`) from a `/proc`
/// snapshot, only when it holds the process that exec'd (the same start time). False
/// when it does not: the process is gone, or the pid already another's.
pub fn supplement(facts: &mut Facts, k: &KernelExec, snap: &Snapshot) -> bool {
    let same_process = snap
        .stat
        .as_deref()
        .and_then(|b| procfs::parse_stat(b).ok())
        .is_some_and(|st| st.start_ticks == k.start_ticks());
    if !same_process {
        return false;
    }
    if facts.exe.is_none() {
        facts.exe = snap.exe.as_deref().map(lossy);
    }
    if facts.cwd.is_none() {
        facts.cwd = snap.cwd.as_deref().map(lossy);
    }
    if facts.container.is_none() {
        facts.container = snap
            .cgroup
            .as_deref()
            .and_then(procfs::container_id_from_cgroup);
    }
    true
}

/// The proc connector's exec: everything but the pid comes from the snapshot, taken
/// after the exec at `ts_ns`.
pub fn from_proc(
    clocks: &Clocks,
    ts_ns: u64,
    snapshot: Result<Box<Snapshot>, Gap>,
    superseded: bool,
) -> Facts {
    let snap = match snapshot {
        Ok(_) if superseded => return Facts::missing("superseded"),
        Ok(s) => s,
        Err(gap) => return Facts::missing(gap.reason()),
    };
    let stat = snap
        .stat
        .as_deref()
        .and_then(|b| procfs::parse_stat(b).ok());
    // A pinned /proc dir cannot mix two processes, but the pid may already have
    // belonged to a new process when we opened it.
    if let Some(st) = &stat {
        if clocks.started_after(st.start_ticks, ts_ns) {
            return Facts::missing("reused");
        }
    }
    let mut facts = Facts::default();
    let args = procfs::parse_cmdline(&snap.cmdline);
    if args.is_empty() {
        // The argument area is released at exit: only a zombie reads empty.
        facts.incomplete = Some("exited");
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

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests;
