//! Who holds which socket: one bounded walk of `/proc/*/fd`, and the network namespaces
//! in use.
//!
//! The walk is what `ss -p` does, minus its cost: `ss` hashes inodes into 256 buckets
//! and did not finish in 60 s at 300,000 sockets; here every socket fd is one
//! `readlinkat` relative to its open `fd` directory, parsed without allocating, into
//! one hash map. The listing of each `fd` directory goes through one reused `getdents`
//! buffer. What the bounds skip is counted, never silently lost.
//!
//! Only thread-group leaders are walked: `/proc` lists nothing else, and threads share
//! their leader's fd table (a thread made without `CLONE_FILES` is not seen).

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{Mode, OFlags, RawDir, CWD};
use rustix::io::Errno;

use crate::list_pids;

/// One holder of a socket: a process and the fd number it holds it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdOwner {
    pub pid: u32,
    pub fd: u32,
}

/// The holders of one socket. Almost every socket has exactly one; the others (a
/// listener shared by forked workers, a dup'd fd) spill into a vector that allocates
/// only when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners {
    first: FdOwner,
    more: Vec<FdOwner>,
}

impl Owners {
    fn new(first: FdOwner) -> Self {
        Owners {
            first,
            more: Vec::new(),
        }
    }

    /// The first holder the walk found (the lowest pid, in `/proc` order).
    pub fn first(&self) -> FdOwner {
        self.first
    }

    pub fn len(&self) -> usize {
        1 + self.more.len()
    }

    /// Always false: an entry exists because a holder was found.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn iter(&self) -> impl Iterator<Item = FdOwner> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
}

/// Socket inode (`socket:[N]`) to its holders.
pub type SocketOwners = HashMap<u64, Owners>;

/// Bounds and parallelism of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOptions {
    /// The fds read from one process: past it the rest of its table is skipped and
    /// counted, so a process with a huge fd table costs bounded work.
    pub max_fds_per_process: usize,
    /// Distinct socket inodes kept: past it new inodes are counted, not kept.
    pub max_inodes: usize,
    /// Threads that walk processes side by side (1: the caller's thread alone). The
    /// walk is kernel time in `readlinkat`, which scales with cores.
    pub threads: usize,
}

impl Default for WalkOptions {
    /// Room for the 300,000-socket proxies the plugin is built for, with headroom;
    /// at most ~100 MB of map. One thread.
    fn default() -> Self {
        WalkOptions {
            max_fds_per_process: 1 << 18,
            max_inodes: 1 << 21,
            threads: 1,
        }
    }
}

/// What one walk did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalkStats {
    /// Processes whose fd directory was listed.
    pub processes_walked: u64,
    /// Processes that exited between the listing of `/proc` and the end of their walk.
    pub processes_vanished: u64,
    /// Processes whose fd directory could not be opened for another reason
    /// (permissions, a hardened `/proc`).
    pub processes_unreadable: u64,
    /// Processes cut short by [`WalkOptions::max_fds_per_process`].
    pub processes_capped: u64,
    /// fd links read.
    pub fds_read: u64,
    /// fds not read because of the per-process cap. Exact on kernels 6.2+ (where the
    /// size of `/proc/<pid>/fd` is the count of open fds); a lower bound before.
    pub fds_skipped: u64,
    /// fd entries whose link could not be read (closed in between, most often).
    pub unreadable_entries: u64,
    /// fds that are sockets (kept or not).
    pub socket_fds: u64,
    /// Socket fds not kept because [`WalkOptions::max_inodes`] was reached.
    pub inodes_dropped: u64,
}

impl WalkStats {
    /// Adds another walk's counts.
    pub fn add(&mut self, other: &WalkStats) {
        self.processes_walked += other.processes_walked;
        self.processes_vanished += other.processes_vanished;
        self.processes_unreadable += other.processes_unreadable;
        self.processes_capped += other.processes_capped;
        self.fds_read += other.fds_read;
        self.fds_skipped += other.fds_skipped;
        self.unreadable_entries += other.unreadable_entries;
        self.socket_fds += other.socket_fds;
        self.inodes_dropped += other.inodes_dropped;
    }
}

/// `getdents` buffer: ~1,000 fd entries per call.
const DIR_BUFFER_BYTES: usize = 32 * 1024;

/// Walks `<root>/<pid>/fd` of every process once and maps socket inodes to their
/// holders. With `only`, keeps just those inodes (the listeners of a LISTEN dump):
/// the map stays small, but every fd is still read.
///
/// # Errors
/// Only when `root` cannot be listed; everything that happens to one process is counted
/// in [`WalkStats`].
pub fn socket_owners(
    root: &str,
    options: &WalkOptions,
    only: Option<&HashSet<u64>>,
) -> io::Result<(SocketOwners, WalkStats)> {
    let mut pids = list_pids(root)?;
    pids.sort_unstable();
    Ok(socket_owners_of(root, &pids, options, only))
}

/// [`socket_owners`] over the given processes only (those a listen event named, the
/// holders a previous walk found): the cost is their fd tables, not the host's. A pid
/// that is not a live process is counted as vanished.
pub fn socket_owners_of(
    root: &str,
    pids: &[u32],
    options: &WalkOptions,
    only: Option<&HashSet<u64>>,
) -> (SocketOwners, WalkStats) {
    let next = AtomicUsize::new(0);
    let threads = options.threads.clamp(1, 64);
    if threads == 1 {
        return walk_some(root, pids, &next, options, only);
    }
    let parts: Vec<(SocketOwners, WalkStats)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("hids-fd-walk".to_owned())
                    .spawn_scoped(scope, || walk_some(root, pids, &next, options, only))
                    .ok()
            })
            .collect();
        // The caller's thread walks too, so a failure to start helpers only slows it.
        let mut parts = vec![walk_some(root, pids, &next, options, only)];
        parts.extend(helpers.into_iter().filter_map(|h| h.join().ok()));
        parts
    });
    merge(parts, options.max_inodes)
}

/// Walks processes from `pids`, taking the next one from `next` each time, so threads
/// share the work whatever the size of each fd table.
fn walk_some(
    root: &str,
    pids: &[u32],
    next: &AtomicUsize,
    options: &WalkOptions,
    only: Option<&HashSet<u64>>,
) -> (SocketOwners, WalkStats) {
    let mut walk = Walk {
        options: *options,
        only,
        owners: HashMap::new(),
        stats: WalkStats::default(),
        dir_buf: Vec::with_capacity(DIR_BUFFER_BYTES),
    };
    let mut path = String::new();
    while let Some(&pid) = pids.get(next.fetch_add(1, Ordering::Relaxed)) {
        path.clear();
        let _ = write!(path, "{root}/{pid}/fd");
        walk.process(pid, &path);
    }
    (walk.owners, walk.stats)
}

/// Joins the maps of several threads. Holders end sorted by (pid, fd), as one thread
/// walking pids in order would have found them.
fn merge(parts: Vec<(SocketOwners, WalkStats)>, max_inodes: usize) -> (SocketOwners, WalkStats) {
    let mut parts = parts.into_iter();
    let Some((mut owners, mut stats)) = parts.next() else {
        return Default::default();
    };
    let mut shared = HashSet::new();
    for (more, more_stats) in parts {
        stats.add(&more_stats);
        for (inode, theirs) in more {
            if let Some(ours) = owners.get_mut(&inode) {
                ours.more.push(theirs.first);
                ours.more.extend(theirs.more);
                shared.insert(inode);
            } else if owners.len() < max_inodes {
                owners.insert(inode, theirs);
            } else {
                stats.inodes_dropped += theirs.len() as u64;
            }
        }
    }
    for inode in shared {
        if let Some(o) = owners.get_mut(&inode) {
            o.more.push(o.first);
            o.more.sort_unstable_by_key(|h| (h.pid, h.fd));
            o.first = o.more.remove(0);
        }
    }
    (owners, stats)
}

struct Walk<'a> {
    options: WalkOptions,
    only: Option<&'a HashSet<u64>>,
    owners: SocketOwners,
    stats: WalkStats,
    dir_buf: Vec<u8>,
}

impl Walk<'_> {
    fn process(&mut self, pid: u32, fd_dir: &str) {
        let dir = match rustix::fs::openat(
            CWD,
            fd_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => dir,
            Err(Errno::NOENT | Errno::SRCH) => {
                self.stats.processes_vanished += 1;
                return;
            }
            Err(_) => {
                self.stats.processes_unreadable += 1;
                return;
            }
        };
        self.stats.processes_walked += 1;
        let mut read = 0usize;
        let mut link = [0u8; 64];
        let mut buf = std::mem::take(&mut self.dir_buf);
        let mut entries = RawDir::new(&dir, buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(entry) => entry,
                // getdents on the fd directory of a process that has exited.
                Err(_) => {
                    self.stats.processes_vanished += 1;
                    break;
                }
            };
            let Some(fd) = parse_decimal(entry.file_name().to_bytes()) else {
                continue; // "." and ".."
            };
            if read == self.options.max_fds_per_process {
                self.count_skipped(&dir, read);
                break;
            }
            read += 1;
            self.read_fd(&dir, entry.file_name(), FdOwner { pid, fd }, &mut link);
        }
        self.dir_buf = buf;
    }

    fn read_fd(&mut self, dir: &OwnedFd, name: &CStr, owner: FdOwner, link: &mut [u8; 64]) {
        self.stats.fds_read += 1;
        let len = match rustix::fs::readlinkat_raw(dir, name, &mut link[..]) {
            Ok(len) => len,
            Err(_) => {
                self.stats.unreadable_entries += 1;
                return;
            }
        };
        let Some(inode) = parse_socket_link(&link[..len.min(link.len())]) else {
            return;
        };
        self.stats.socket_fds += 1;
        if self.only.is_some_and(|only| !only.contains(&inode)) {
            return;
        }
        if let Some(owners) = self.owners.get_mut(&inode) {
            owners.more.push(owner);
        } else if self.owners.len() < self.options.max_inodes {
            self.owners.insert(inode, Owners::new(owner));
        } else {
            self.stats.inodes_dropped += 1;
        }
    }

    /// Counts the fds past the cap without reading them: since 6.2 the size of a
    /// `/proc/<pid>/fd` directory is its number of open fds. Before, at least one more
    /// entry exists, the one that hit the cap.
    fn count_skipped(&mut self, dir: &OwnedFd, read: usize) {
        self.stats.processes_capped += 1;
        let open = rustix::fs::fstat(dir).map_or(0, |st| st.st_size.max(0) as u64);
        self.stats.fds_skipped += open.saturating_sub(read as u64).max(1);
    }
}

/// Whether `owner` still holds the socket `inode`: one `readlink` of
/// `<root>/<pid>/fd/<fd>`, to confirm owners remembered from an earlier walk in
/// microseconds instead of walking again. False when the process or the fd is gone or
/// now holds something else.
pub fn holds_socket(root: &str, owner: FdOwner, inode: u64) -> bool {
    let mut path = String::new();
    let _ = write!(path, "{root}/{}/fd/{}", owner.pid, owner.fd);
    let mut link = [0u8; 64];
    match rustix::fs::readlinkat_raw(CWD, path.as_str(), &mut link[..]) {
        Ok(len) => parse_socket_link(&link[..len.min(link.len())]) == Some(inode),
        Err(_) => false,
    }
}

/// Parses an fd link target `socket:[12345]` into the socket's inode. Any other target
/// (a file, a pipe, `anon_inode:...`) is `None`.
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    parse_bracketed(target, b"socket:[")
}

/// Parses a namespace link target (`net:[4026531840]` for `kind` `"net"`) into the
/// namespace's inode.
pub fn parse_ns_link(target: &[u8], kind: &str) -> Option<u64> {
    let rest = target.strip_prefix(kind.as_bytes())?;
    parse_bracketed(rest, b":[")
}

fn parse_bracketed(target: &[u8], prefix: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(prefix)?.strip_suffix(b"]")?;
    parse_decimal(digits)
}

/// A non-empty run of ASCII digits that fits the type; nothing else (no sign, no
/// spaces).
fn parse_decimal<T: TryFrom<u64>>(digits: &[u8]) -> Option<T> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    T::try_from(n).ok()
}

/// The network namespaces in use: for each distinct `<root>/<pid>/ns/net`, its inode
/// and one live process in it (the lowest pid, most often the container's init), sorted
/// by inode. Processes that exit during the scan or hide their namespace are left out.
///
/// # Errors
/// Only when `root` cannot be listed.
pub fn net_namespaces(root: &str) -> io::Result<Vec<(u64, u32)>> {
    let mut pids = list_pids(root)?;
    pids.sort_unstable();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut path = String::new();
    let mut link = [MaybeUninit::<u8>::uninit(); 64];
    for pid in pids {
        path.clear();
        let _ = write!(path, "{root}/{pid}/ns/net");
        let Ok((target, _)) = rustix::fs::readlinkat_raw(CWD, path.as_str(), &mut link[..]) else {
            continue;
        };
        if let Some(inode) = parse_ns_link(target, "net") {
            seen.entry(inode).or_insert(pid);
        }
    }
    let mut namespaces: Vec<(u64, u32)> = seen.into_iter().collect();
    namespaces.sort_unstable();
    Ok(namespaces)
}

#[cfg(test)]
mod tests;
