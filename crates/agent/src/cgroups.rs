//! Per-plugin CPU quota and memory limit through cgroups: v2 where the host has the cpu
//! and memory controllers there, else v1 (hybrid hosts keep them on v1). Plugin cgroups
//! are created under the agent's own cgroup (`<own>/hids/<plugin>`), so systemd's view
//! of the service stays whole, and removed when the agent stops.
//!
//! A plugin enters its cgroup in the forked child before exec (a write of "0" to the
//! `cgroup.procs` files opened beforehand), so it never runs a moment unlimited.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The limits of one plugin, from its `[[plugins]]` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<u64>,
}

impl Eq for Limits {}

impl Limits {
    pub fn any(&self) -> bool {
        self.cpu_percent.is_some() || self.memory_mb.is_some()
    }
}

#[derive(Debug, Clone)]
pub enum Cgroups {
    V2 {
        base: PathBuf,
    },
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
    Unavailable(String),
}

const CFS_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds where the agent's plugin cgroups go. Nothing is created yet.
    pub fn detect() -> Cgroups {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2_has = |c: &str| {
            std::fs::read_to_string(v2_root.join("cgroup.controllers"))
                .is_ok_and(|s| s.split_whitespace().any(|x| x == c))
        };
        if v2_has("cpu") && v2_has("memory") {
            if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
                return Cgroups::V2 {
                    base: v2_root.join(path.trim_start_matches('/')).join("hids"),
                };
            }
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let mount = v2_root.join(controller);
            if !mount.join("cgroup.procs").exists() {
                return None;
            }
            own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| mount.join(path.trim_start_matches('/')).join("hids"))
            })
        };
        let (cpu, memory) = (v1("cpu"), v1("memory"));
        if cpu.is_none() && memory.is_none() {
            return Cgroups::Unavailable("no cpu or memory cgroup controller is mounted".into());
        }
        Cgroups::V1 { cpu, memory }
    }

    /// Creates (or reuses) the plugin's cgroup with its limits.
    ///
    /// # Errors
    /// A message saying what could not be written; the caller runs the plugin without.
    pub fn prepare(&self, plugin: &str, limits: &Limits) -> Result<PluginCgroup, String> {
        let mut cg = PluginCgroup::default();
        match self {
            Cgroups::Unavailable(why) => return Err(why.clone()),
            Cgroups::V2 { base } => {
                let dir = base.join(plugin);
                make_dir(base)?;
                // Controllers must be enabled in every parent's subtree_control.
                if let Some(parent) = base.parent() {
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
                }
                write(&base.join("cgroup.subtree_control"), "+cpu +memory")?;
                make_dir(&dir)?;
                if let Some(p) = limits.cpu_percent {
                    let quota = (p * CFS_PERIOD_US as f64 / 100.0).max(1000.0) as u64;
                    write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                }
                if let Some(mb) = limits.memory_mb {
                    write(&dir.join("memory.max"), &(mb << 20).to_string())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                cg.oom_file = Some((dir.join("memory.events"), "oom_kill"));
                cg.procs.push(dir.join("cgroup.procs"));
            }
            Cgroups::V1 { cpu, memory } => {
                if let Some(p) = limits.cpu_percent {
                    let base = cpu.as_ref().ok_or("the cpu controller is not mounted")?;
                    let dir = base.join(plugin);
                    make_dir(base)?;
                    make_dir(&dir)?;
                    let quota = (p * CFS_PERIOD_US as f64 / 100.0).max(1000.0) as u64;
                    write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    cg.procs.push(dir.join("cgroup.procs"));
                }
                if let Some(mb) = limits.memory_mb {
                    let base = memory
                        .as_ref()
                        .ok_or("the memory controller is not mounted")?;
                    let dir = base.join(plugin);
                    make_dir(base)?;
                    make_dir(&dir)?;
                    write(&dir.join("memory.limit_in_bytes"), &(mb << 20).to_string())?;
                    // Without swap accounting this file is absent: no swap to limit then.
                    let _ = std::fs::write(
                        dir.join("memory.memsw.limit_in_bytes"),
                        (mb << 20).to_string(),
                    );
                    cg.oom_file = Some((dir.join("memory.oom_control"), "oom_kill"));
                    cg.procs.push(dir.join("cgroup.procs"));
                }
            }
        }
        Ok(cg)
    }

    fn bases(&self) -> Vec<&PathBuf> {
        match self {
            Cgroups::V2 { base } => vec![base],
            Cgroups::V1 { cpu, memory } => cpu.iter().chain(memory.iter()).collect(),
            Cgroups::Unavailable(_) => Vec::new(),
        }
    }

    /// Removes plugin cgroups left empty by an agent that was killed outright (a busy
    /// cgroup cannot be removed, so this never touches one in use).
    pub fn sweep_stale(&self) {
        for base in self.bases() {
            if let Ok(entries) = std::fs::read_dir(base) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
    }

    /// Removes the plugin cgroups and the `hids` group (after every plugin has exited).
    pub fn remove_all(&self, plugins: &[String]) {
        for base in self.bases() {
            for p in plugins {
                let _ = std::fs::remove_dir(base.join(p));
            }
            let _ = std::fs::remove_dir(base);
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2 { base } => format!("cgroup v2 under {}", base.display()),
            Cgroups::V1 { cpu, memory } => format!(
                "cgroup v1 (cpu: {}, memory: {})",
                cpu.as_ref().map_or("-".into(), |p| p.display().to_string()),
                memory
                    .as_ref()
                    .map_or("-".into(), |p| p.display().to_string())
            ),
            Cgroups::Unavailable(why) => format!("no cgroups ({why})"),
        }
    }
}

fn make_dir(p: &Path) -> Result<(), String> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", p.display())),
    }
}

fn write(p: &Path, value: &str) -> Result<(), String> {
    std::fs::write(p, value).map_err(|e| format!("cannot write {value:?} to {}: {e}", p.display()))
}

/// One plugin's cgroup(s): one per v1 controller, or one v2 group.
#[derive(Debug, Default, Clone)]
pub struct PluginCgroup {
    procs: Vec<PathBuf>,
    oom_file: Option<(PathBuf, &'static str)>,
}

impl PluginCgroup {
    /// The `cgroup.procs` files, opened for the child to write its own pid ("0") into.
    ///
    /// # Errors
    /// When a file cannot be opened.
    pub fn open_procs(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.procs
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map(OwnedFd::from)
            })
            .collect()
    }

    /// Times the kernel's OOM killer acted on this cgroup (cumulative).
    pub fn oom_kills(&self) -> u64 {
        let Some((file, key)) = &self.oom_file else {
            return 0;
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }
}
