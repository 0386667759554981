//! Container ids from the cgroup v2 id the kernel records at exec, through a cache of
//! cgroup ids, so an exec costs no `/proc/<pid>/cgroup` read.
//!
//! An unknown id is resolved once, in the cgroup2 file system: by file handle (kernfs
//! ids are file handles, which needs CAP_DAC_READ_SEARCH) or, failing that, by a bounded
//! walk of the tree matching directory inode numbers (a cgroup's inode number is its id).
//! The container id follows from the path by the rules of
//! [`procfs::container_id_from_cgroup_path`].
//!
//! Ids are 64-bit and never reused, so an entry never goes stale; the cache is bounded
//! and what it evicts is counted. Deliberately left to `/proc/<pid>/cgroup` (the caller's
//! counted fallback): hosts without cgroup2, and hybrid hosts whose v1 hierarchy holds
//! containers (the v2 path of a container there may be its runtime's service).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_procfs as procfs;
use rustix::io::Errno;
use serde::Serialize;

/// Cgroups kept; far more than a host runs (a busy Kubernetes node: a few thousand).
const MAX_ENTRIES: usize = 16_384;
/// Directories one walk visits at most.
const MAX_WALK_DIRS: usize = 4096;
/// Walks of each hierarchy start at most this often.
const WALK_EVERY: Duration = Duration::from_secs(1);
/// `FILEID_KERNFS` (include/linux/exportfs.h): a kernfs node's 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

/// What a cgroup id says of a process's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Container(Arc<str>),
    /// In no container.
    Host,
    /// The cgroup v2 id cannot say: read `/proc/<pid>/cgroup`.
    Unknown,
}

/// What is known of one cgroup id.
#[derive(Debug, Clone)]
enum Known {
    /// The container its path names, if any.
    Path(Option<Arc<str>>),
    /// Removed before it could be resolved (ids are never reused: it stays gone).
    Gone,
    /// Outside the part of the hierarchy we see: `/proc/<pid>/cgroup` says.
    Outside,
}

/// The cache's counters, in the stats record (`hids.stats.cgroups`), by name as the
/// record's fields are.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CgroupStats {
    /// Resolved by file handle.
    pub by_handle: u64,
    /// Resolved by walking the cgroup2 tree (file handles refused).
    pub by_walk: u64,
    /// Cgroup ids cached.
    pub entries: usize,
    /// Evicted at the bound (16,384 ids).
    pub evicted: u64,
    /// Lookups of ids that could not be resolved (removed, outside our view of the
    /// hierarchy, walk cut short or not due): those execs fell back to
    /// `/proc/<pid>/cgroup`.
    pub misses: u64,
    /// Walks of a cgroup tree (at most one a second per hierarchy).
    pub walks: u64,
}

/// The cgroup2 hierarchy, pinned.
struct V2 {
    path: PathBuf,
    dir: OwnedFd,
}

pub struct Cgroups {
    v2: Option<V2>,
    /// A v1 hierarchy (hybrid or v1-only host).
    v1: Option<PathBuf>,
    /// False once the kernel refused a file handle (no CAP_DAC_READ_SEARCH).
    handles: bool,
    ids: HashMap<u64, Known>,
    /// Whether the v1 hierarchy held a container's cgroup at the last look; forgotten
    /// every second ([`Cgroups::tick`]), so no clock is read per exec.
    v1_containers: Option<bool>,
    last_walk: Option<Instant>,
    stats: CgroupStats,
}

impl Cgroups {
    /// The hierarchies this process sees, from `<proc_root>/self/mountinfo`.
    pub fn new(proc_root: &str) -> Self {
        let mounts = std::fs::read(format!("{proc_root}/self/mountinfo"))
            .map(|b| procfs::parse_cgroup_mounts(&b))
            .unwrap_or_default();
        Self::with_mounts(mounts.v2, mounts.v1)
    }

    pub fn with_mounts(v2: Option<PathBuf>, v1: Option<PathBuf>) -> Self {
        let v2 = v2.and_then(|path| {
            use rustix::fs::{open, Mode, OFlags};
            // Not O_PATH: open_by_handle_at refuses such a descriptor (EBADF).
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            match open(&path, flags, Mode::empty()) {
                Ok(dir) => Some(V2 { path, dir }),
                Err(e) => {
                    tracing::warn!("cgroup2 at {}: {e}", path.display());
                    None
                }
            }
        });
        Cgroups {
            v2,
            v1,
            handles: true,
            ids: HashMap::new(),
            v1_containers: None,
            last_walk: None,
            stats: CgroupStats::default(),
        }
    }

    pub fn stats(&self) -> CgroupStats {
        CgroupStats {
            entries: self.ids.len(),
            ..self.stats.clone()
        }
    }

    /// The container of a process in cgroup `id` (the kernel's cgroup v2 id, 0 unknown).
    pub fn container(&mut self, id: u64) -> Lookup {
        if id == 0 || self.v2.is_none() {
            return Lookup::Unknown;
        }
        let known = match self.ids.get(&id) {
            Some(known) => known.clone(),
            None => match self.resolve(id) {
                Some(known) => {
                    self.insert(id, known.clone());
                    known
                }
                None => {
                    self.stats.misses += 1;
                    return Lookup::Unknown;
                }
            },
        };
        match known {
            Known::Path(Some(container)) => Lookup::Container(container),
            Known::Path(None) if !self.v1_may_hold_containers() => Lookup::Host,
            Known::Path(None) => Lookup::Unknown,
            Known::Gone | Known::Outside => {
                self.stats.misses += 1;
                Lookup::Unknown
            }
        }
    }

    fn insert(&mut self, id: u64, known: Known) {
        if self.ids.len() >= MAX_ENTRIES {
            // Any entry: ids carry no age, and one evicted is only resolved again.
            if let Some(&old) = self.ids.keys().next() {
                self.ids.remove(&old);
                self.stats.evicted += 1;
            }
        }
        self.ids.insert(id, known);
    }

    /// `None` when it cannot be told now (a walk not due, or cut short).
    fn resolve(&mut self, id: u64) -> Option<Known> {
        let v2 = self.v2.as_ref()?;
        if self.handles {
            match path_of(v2.dir.as_fd(), id) {
                Ok(path) => {
                    // Removed between the open and the readlink: gone, as ESTALE says.
                    if path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
                        return Some(Known::Gone);
                    }
                    // Outside our view of the hierarchy (we run in a cgroup namespace, or
                    // the mount is a subtree): the kernel names it "/" or from elsewhere,
                    // which proves nothing. Kept as such (ids are never reused), so each
                    // exec there reads /proc without asking the kernel again.
                    let Ok(relative) = path.strip_prefix(&v2.path) else {
                        return Some(Known::Outside);
                    };
                    self.stats.by_handle += 1;
                    return Some(Known::Path(container_of(relative)));
                }
                Err(e) if e.raw_os_error() == Some(Errno::STALE.raw_os_error()) => {
                    return Some(Known::Gone);
                }
                // For good: no CAP_DAC_READ_SEARCH, or a kernel without kernfs handles.
                Err(e)
                    if [Errno::PERM, Errno::OPNOTSUPP, Errno::INVAL, Errno::BADF]
                        .iter()
                        .any(|refused| e.raw_os_error() == Some(refused.raw_os_error())) =>
                {
                    tracing::info!(
                        "cgroup ids by file handle refused ({e}): walking {} instead",
                        v2.path.display()
                    );
                    self.handles = false;
                }
                // Out of descriptors or memory: this once, the walk.
                Err(_) => {}
            }
        }
        if !self.walk_due() {
            return None;
        }
        let root = self.v2.as_ref()?.path.clone();
        // The root cgroup is the mount's own directory, which the walk does not list.
        if std::fs::metadata(&root).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == id) {
            self.stats.by_walk += 1;
            return Some(Known::Path(None));
        }
        let found = find_dir(&root, MAX_WALK_DIRS, |_, ino| ino == id);
        match found {
            Walk::Found(path) => {
                self.stats.by_walk += 1;
                let relative = path.strip_prefix(&root).unwrap_or(&path);
                Some(Known::Path(container_of(relative)))
            }
            Walk::Absent => Some(Known::Gone),
            Walk::CutShort | Walk::Unreadable => None,
        }
    }

    /// Once a second: the v1 hierarchy is looked at again when next needed.
    pub fn tick(&mut self) {
        self.v1_containers = None;
    }

    /// On a hybrid host, whether a v1 hierarchy holds a container's cgroup (looked at
    /// at most once a second): then a v2 path that names no container is not proof.
    fn v1_may_hold_containers(&mut self) -> bool {
        let Some(v1) = &self.v1 else {
            return false;
        };
        if let Some(holds) = self.v1_containers {
            return holds;
        }
        let v1 = v1.clone();
        self.stats.walks += 1;
        let holds = match find_dir(&v1, MAX_WALK_DIRS, |name, _| {
            procfs::container_id_from_cgroup_path(name).is_some()
        }) {
            Walk::Found(_) => true,
            Walk::Absent => false,
            // Too many to look through, or not all readable: assume the worst.
            Walk::CutShort | Walk::Unreadable => true,
        };
        self.v1_containers = Some(holds);
        holds
    }

    fn walk_due(&mut self) -> bool {
        if self.last_walk.is_some_and(|at| at.elapsed() < WALK_EVERY) {
            return false;
        }
        self.last_walk = Some(Instant::now());
        self.stats.walks += 1;
        true
    }

    #[cfg(test)]
    pub fn cache(&mut self, id: u64, container: Option<&str>) {
        self.insert(id, Known::Path(container.map(Arc::from)));
    }

    #[cfg(test)]
    fn without_handles(mut self) -> Self {
        self.handles = false;
        self
    }
}

fn container_of(cgroup_path: &Path) -> Option<Arc<str>> {
    procfs::container_id_from_cgroup_path(cgroup_path.as_os_str().as_encoded_bytes()).map(Arc::from)
}

enum Walk {
    Found(PathBuf),
    Absent,
    /// `MAX_WALK_DIRS` visited without finding it.
    CutShort,
    /// Not found, but a directory could not be read: it may be there.
    Unreadable,
}

/// Breadth-first through the directories under `root`, for one whose name and inode
/// number satisfy `wanted`. Inode numbers come from the directory listing: no stat.
fn find_dir(root: &Path, max_dirs: usize, wanted: impl Fn(&[u8], u64) -> bool) -> Walk {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut visited = 0;
    let mut unreadable = false;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > max_dirs {
            return Walk::CutShort;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            unreadable = true;
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                unreadable = true;
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            if wanted(name.as_encoded_bytes(), entry.ino()) {
                return Walk::Found(entry.path());
            }
            // Bounded as the visits are: what could never be visited is not queued.
            if visited + queue.len() >= max_dirs {
                return Walk::CutShort;
            }
            queue.push_back(entry.path());
        }
    }
    if unreadable {
        Walk::Unreadable
    } else {
        Walk::Absent
    }
}

/// The path of cgroup `id` in our mount namespace, by file handle.
fn path_of(mount: BorrowedFd<'_>, id: u64) -> std::io::Result<PathBuf> {
    let dir = open_by_id(mount, id)?;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// `struct file_handle` with the 8 bytes of a kernfs handle.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

#[allow(unsafe_code)]
fn open_by_id(mount: BorrowedFd<'_>, id: u64) -> std::io::Result<OwnedFd> {
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: `handle` is laid out as the kernel's `struct file_handle` (repr(C): u32,
    // i32, then the `handle_bytes` = 8 bytes of f_handle) and outlives the call, which
    // only reads it; `mount` is an open descriptor borrowed for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            std::ptr::addr_of_mut!(handle).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned open by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
