//! The eBPF backend's execs completed without `/proc`: the kernel resolved the
//! executable and working directory, and the container follows from the cgroup id
//! through [`Cgroups`]. `/proc/<pid>` is read only for what these could not give, and
//! every such read is counted ([`ProcFallbacks`]): a process that exits at once is still
//! reported whole.

use super::cgroups::{CgroupStats, Cgroups, Lookup};
use super::exe::ExePaths;
use super::facts::{self, Facts};
use super::stats::ProcFallbacks;
use crate::capture::snapshot::{self, Wanted};
use crate::capture::KernelExec;

pub struct KernelFacts {
    proc_root: String,
    exe_paths: ExePaths,
    cgroups: Cgroups,
    fallbacks: ProcFallbacks,
}

impl KernelFacts {
    pub fn new(proc_root: &str) -> Self {
        KernelFacts {
            proc_root: proc_root.to_owned(),
            exe_paths: ExePaths::new(proc_root),
            cgroups: Cgroups::new(proc_root),
            fallbacks: ProcFallbacks::default(),
        }
    }

    /// What the exec of `pid` recorded in `k` tells.
    pub fn facts(&mut self, pid: u32, k: &KernelExec) -> Facts {
        let mut facts = facts::from_kernel(k);
        let container = self.cgroups.container(k.cgroup_id);
        if let Lookup::Container(id) = &container {
            facts.container = Some(id.to_string());
        }
        let wanted = Wanted {
            exe: facts.exe.is_none(),
            cwd: facts.cwd.is_none(),
            cgroup: container == Lookup::Unknown,
        };
        if wanted.any() {
            self.fill_from_proc(pid, k, &mut facts, wanted);
        }
        facts
    }

    fn fill_from_proc(&mut self, pid: u32, k: &KernelExec, facts: &mut Facts, wanted: Wanted) {
        let counts = &mut self.fallbacks;
        counts.exe += u64::from(wanted.exe);
        counts.cwd += u64::from(wanted.cwd);
        counts.container += u64::from(wanted.cgroup);
        let found = snapshot::supplement(&self.proc_root, pid, wanted)
            .is_ok_and(|snap| facts::supplement(facts, k, &snap));
        if !found {
            counts.gone += 1;
            // What the kernel could not say is lost with the process: said, as for the
            // proc connector's execs.
            facts.incomplete.get_or_insert("exited");
        }
        if facts.exe.is_none() {
            facts.exe = self.exe_paths.resolve(&k.filename, k.pid_ns);
        }
    }

    /// Once a second: lets the cached executable paths and the v1 hierarchy's state
    /// expire.
    pub fn tick(&mut self) {
        self.exe_paths.expire();
        self.cgroups.tick();
    }

    pub fn fallbacks(&self) -> &ProcFallbacks {
        &self.fallbacks
    }

    pub fn cgroup_stats(&self) -> CgroupStats {
        self.cgroups.stats()
    }

    #[cfg(test)]
    fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = cgroups;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// Above the kernel's largest pid_max (2^22): never a live process.
    const GONE: u32 = 1 << 23;

    fn exited(exe: &[u8], cwd: &[u8]) -> KernelExec {
        KernelExec {
            ppid: 1,
            start_boottime_ns: 5_000_000_000,
            cgroup_id: 4242,
            comm: b"true".to_vec(),
            args: b"/bin/true\0".to_vec(),
            filename: b"/nonexistent/true".to_vec(),
            exe: exe.to_vec(),
            cwd: cwd.to_vec(),
            ..KernelExec::default()
        }
    }

    /// The cache of a cgroup2 host (a directory stands for the mount), holding `id`.
    fn cached(id: u64, container: Option<&str>) -> (tempfile::TempDir, KernelFacts) {
        let mount = tempfile::tempdir().unwrap();
        let mut cgroups = Cgroups::with_mounts(Some(mount.path().into()), None);
        cgroups.cache(id, container);
        (mount, KernelFacts::new("/proc").with_cgroups(cgroups))
    }

    #[test]
    fn a_process_gone_before_any_proc_read_is_reported_whole() {
        let (_mount, mut kf) = cached(4242, Some(ID));
        let f = kf.facts(GONE, &exited(b"/usr/bin/true", b"/srv/build"));
        assert_eq!(f.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(f.cwd.as_deref(), Some("/srv/build"));
        assert_eq!(f.container.as_deref(), Some(ID));
        assert_eq!(f.args, Some(vec!["/bin/true".to_string()]));
        assert_eq!(kf.fallbacks(), &ProcFallbacks::default(), "no /proc read");
    }

    #[test]
    fn what_the_kernel_left_out_of_a_gone_process_is_counted() {
        let (_mount, mut kf) = cached(4242, None);
        let f = kf.facts(GONE, &exited(b"", b""));
        assert_eq!(f.exe.as_deref(), Some("/nonexistent/true"), "as given");
        assert_eq!(f.cwd, None);
        assert_eq!(f.incomplete, Some("exited"));
        let counted = kf.fallbacks();
        assert_eq!(
            (counted.exe, counted.cwd, counted.container, counted.gone),
            (1, 1, 0, 1),
            "{counted:?}"
        );
    }

    #[test]
    fn what_the_kernel_left_out_of_a_live_process_comes_from_proc() {
        let stat = std::fs::read("/proc/self/stat").unwrap();
        let start_ticks = hids_procfs::parse_stat(&stat).unwrap().start_ticks;
        let mut k = exited(b"", b"");
        k.start_boottime_ns = start_ticks * (1_000_000_000 / hids_procfs::TICKS_PER_SEC);
        // An id no cgroup has: the container from /proc/self/cgroup.
        k.cgroup_id = u64::MAX;
        let mut kf = KernelFacts::new("/proc");
        let f = kf.facts(std::process::id(), &k);
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(f.exe, Some(me.display().to_string()));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(f.cwd, Some(cwd.display().to_string()));
        let counted = kf.fallbacks();
        assert_eq!(
            (counted.exe, counted.cwd, counted.container, counted.gone),
            (1, 1, 1, 0)
        );
    }
}
