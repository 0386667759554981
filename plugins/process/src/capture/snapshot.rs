//! What is read from `/proc` the moment an exec is reported, before the process can
//! vanish. Raw bytes only: parsing waits for the enrichment thread, so the capture thread
//! goes back to the socket as fast as it can.

use hids_procfs::{ProcDir, ReadOutcome};

/// Raw contents of a process's `/proc` entries, read through one pinned directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub cmdline: Vec<u8>,
    pub cmdline_truncated: bool,
    pub exe: Option<Vec<u8>>,
    pub stat: Option<Vec<u8>>,
    pub status: Option<Vec<u8>>,
    pub cwd: Option<Vec<u8>>,
    pub cgroup: Option<Vec<u8>>,
    pub pid_ns: Option<Vec<u8>>,
    pub loginuid: Option<Vec<u8>>,
}

/// Why a snapshot is missing or partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The process was gone (or a zombie) before we could read it.
    Exited,
    /// `/proc/<pid>` was there but not readable (hidepid, LSM).
    Unreadable,
    /// The capture queue's byte budget was spent: reported without reading `/proc`.
    Backlog,
}

impl Gap {
    pub fn reason(self) -> &'static str {
        match self {
            Gap::Exited => "exited",
            Gap::Unreadable => "unreadable",
            Gap::Backlog => "backlog",
        }
    }
}

impl Snapshot {
    /// Heap bytes held, for the capture queue's byte budget.
    pub fn heap_bytes(&self) -> usize {
        let opt = |o: &Option<Vec<u8>>| o.as_ref().map_or(0, Vec::capacity);
        self.cmdline.capacity()
            + opt(&self.exe)
            + opt(&self.stat)
            + opt(&self.status)
            + opt(&self.cwd)
            + opt(&self.cgroup)
            + opt(&self.pid_ns)
            + opt(&self.loginuid)
    }
}

/// The first half of a snapshot: what disappears first when a process exits. The
/// argument list is released with the process's memory and `exe` with its files, so
/// these are read for every exec of a burst before anything else is read for any.
pub fn begin(proc_root: &str, pid: u32, max_args_bytes: usize) -> Result<(ProcDir, Snapshot), Gap> {
    let dir = ProcDir::open(proc_root, pid).map_err(|e| classify(&e))?;
    let mut snap = Snapshot::default();
    match dir.read("cmdline", &mut snap.cmdline, max_args_bytes) {
        Ok(outcome) => snap.cmdline_truncated = outcome == ReadOutcome::Truncated,
        Err(e) => return Err(classify(&e)),
    }
    snap.cmdline.shrink_to_fit();
    snap.exe = dir.read_link("exe").ok();
    Ok((dir, snap))
}

/// The second half: what stays readable until the process is reaped.
pub fn finish(dir: &ProcDir, snap: &mut Snapshot) {
    snap.stat = read_small(dir, "stat");
    snap.status = read_small(dir, "status");
    snap.cwd = dir.read_link("cwd").ok();
    snap.cgroup = read_small(dir, "cgroup");
    snap.pid_ns = dir.read_link("ns/pid").ok();
    snap.loginuid = read_small(dir, "loginuid");
}
/// Which of a process's `/proc` entries the eBPF backend's kernel record could not
/// give (see [`supplement`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub exe: bool,
    pub cwd: bool,
    pub cgroup: bool,
}

impl Wanted {
    pub fn any(self) -> bool {
        self.exe || self.cwd || self.cgroup
    }
}

/// What the eBPF backend's kernel record lacked for one exec (its path walks cut short,
/// its cgroup id not resolved): read from `/proc` only when `wanted`. `stat` is read
/// last, to prove that these came from the process that exec'd (its start time).
pub fn supplement(proc_root: &str, pid: u32, wanted: Wanted) -> Result<Snapshot, Gap> {
    let dir = ProcDir::open(proc_root, pid).map_err(|e| classify(&e))?;
    let mut snap = Snapshot::default();
    if wanted.exe {
        snap.exe = dir.read_link("exe").ok();
    }
    if wanted.cwd {
        snap.cwd = dir.read_link("cwd").ok();
    }
    if wanted.cgroup {
        snap.cgroup = read_small(&dir, "cgroup");
    }
    snap.stat = read_small(&dir, "stat");
    Ok(snap)
}

fn read_small(dir: &ProcDir, name: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    dir.read(name, &mut buf, 8192).ok()?;
    buf.shrink_to_fit();
    Some(buf)
}

fn classify(e: &std::io::Error) -> Gap {
    match e.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::ACCESS.raw_os_error()
                || code == rustix::io::Errno::PERM.raw_os_error() =>
        {
            Gap::Unreadable
        }
        _ => Gap::Exited,
    }
}
