use std::os::unix::fs::MetadataExt;

use super::*;

const ID: &str = "5ff5302be688f4724435bbe964c640605ff5302be688f4724435bbe964c64060";

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// A directory tree shaped like a cgroup2 hierarchy with one Docker scope.
fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let scope = root.path().join(format!("system.slice/docker-{ID}.scope"));
    let host = root.path().join("user.slice/user-1000.slice");
    std::fs::create_dir_all(&scope).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    (root, scope, host)
}

#[test]
fn without_cgroup2_every_id_is_unknown() {
    let mut cgroups = Cgroups::with_mounts(None, Some("/nonexistent".into()));
    assert_eq!(cgroups.container(42), Lookup::Unknown);
    assert_eq!(cgroups.stats().entries, 0);
}

#[test]
fn ids_resolved_by_walking_the_tree_are_cached() {
    let (root, scope, host) = tree();
    let mut cgroups = Cgroups::with_mounts(Some(root.path().into()), None).without_handles();
    assert_eq!(cgroups.container(0), Lookup::Unknown, "no id recorded");
    assert_eq!(cgroups.container(ino(&scope)), Lookup::Container(ID.into()));
    // A second unknown id within the second: no walk, the caller falls back.
    assert_eq!(cgroups.container(ino(&host)), Lookup::Unknown);
    // The first is cached.
    assert_eq!(cgroups.container(ino(&scope)), Lookup::Container(ID.into()));
    let stats = cgroups.stats();
    assert_eq!(
        (stats.entries, stats.by_walk, stats.walks, stats.misses),
        (1, 1, 1, 1)
    );
    // Once a walk is due again: a host cgroup, then one that does not exist (gone for
    // good: cached, still a miss).
    cgroups.last_walk = None;
    assert_eq!(cgroups.container(ino(&host)), Lookup::Host);
    cgroups.last_walk = None;
    assert_eq!(cgroups.container(u64::MAX), Lookup::Unknown);
    assert_eq!(cgroups.container(u64::MAX), Lookup::Unknown);
    let stats = cgroups.stats();
    assert_eq!((stats.entries, stats.walks, stats.misses), (3, 3, 3));
}

#[test]
fn a_v1_hierarchy_holding_containers_makes_host_paths_unknown() {
    let (root, _, host) = tree();
    let v1 = tempfile::tempdir().unwrap();
    let mut cgroups =
        Cgroups::with_mounts(Some(root.path().into()), Some(v1.path().into())).without_handles();
    assert_eq!(cgroups.container(ino(&host)), Lookup::Host);
    // Docker's cgroupfs driver on a v1 host: /docker/<id> in every v1 hierarchy.
    std::fs::create_dir_all(v1.path().join("docker").join(ID)).unwrap();
    assert_eq!(
        cgroups.container(ino(&host)),
        Lookup::Host,
        "looked at once a second"
    );
    cgroups.tick();
    assert_eq!(cgroups.container(ino(&host)), Lookup::Unknown);
}

#[test]
fn walks_are_bounded() {
    let (root, scope, _) = tree();
    assert!(matches!(
        find_dir(root.path(), 1, |_, i| i == ino(&scope)),
        Walk::CutShort
    ));
    assert!(matches!(
        find_dir(root.path(), 100, |_, i| i == ino(&scope)),
        Walk::Found(p) if p == scope
    ));
    assert!(matches!(
        find_dir(root.path(), 100, |_, _| false),
        Walk::Absent
    ));
}

#[test]
fn the_cache_is_bounded_and_counts_evictions() {
    let mut cgroups = Cgroups::with_mounts(None, None);
    for id in 0..MAX_ENTRIES as u64 + 10 {
        cgroups.insert(id, Known::Gone);
    }
    let stats = cgroups.stats();
    assert_eq!((stats.entries, stats.evicted), (MAX_ENTRIES, 10));
}

/// Kills and reaps the `sleep`, then removes the cgroup, whatever the test's outcome.
struct Scope {
    dir: PathBuf,
    sleep: std::process::Child,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = self.sleep.kill();
        let _ = self.sleep.wait();
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("left {}: {e}", self.dir.display());
        }
    }
}

/// Needs root and a cgroup2 mount: a real cgroup named like a Docker scope, a process
/// in it, its id (the directory's inode number, what the kernel records) resolved.
#[test]
fn a_real_cgroup_named_like_a_docker_scope() {
    let mounts = std::fs::read("/proc/self/mountinfo")
        .map(|b| procfs::parse_cgroup_mounts(&b))
        .unwrap_or_default();
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "{why}");
        eprintln!("skipped: {why}");
    };
    let Some(mount) = mounts.v2.clone() else {
        return skip("no cgroup2 mount");
    };
    if !rustix::process::geteuid().is_root() {
        return skip("not root");
    }
    let dir = mount.join(format!(
        "hids-test-{}-docker-{ID}.scope",
        std::process::id()
    ));
    if let Err(e) = std::fs::create_dir(&dir) {
        return skip(&format!("cannot create {}: {e}", dir.display()));
    }
    let sleep = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let scope = Scope { dir, sleep };
    std::fs::write(scope.dir.join("cgroup.procs"), scope.sleep.id().to_string()).unwrap();
    let cgroup = std::fs::read(format!("/proc/{}/cgroup", scope.sleep.id())).unwrap();
    let name = scope.dir.file_name().unwrap().to_str().unwrap();
    assert!(
        String::from_utf8_lossy(&cgroup).contains(&format!("0::/{name}\n")),
        "{}",
        String::from_utf8_lossy(&cgroup)
    );
    let id = ino(&scope.dir);

    let mut cgroups = Cgroups::new("/proc");
    assert_eq!(cgroups.container(id), Lookup::Container(ID.into()));
    assert_eq!(cgroups.stats().by_handle, 1, "{:?}", cgroups.stats());

    let mut walking = Cgroups::with_mounts(mounts.v2, mounts.v1).without_handles();
    assert_eq!(walking.container(id), Lookup::Container(ID.into()));
    assert_eq!(walking.stats().by_walk, 1);
}
