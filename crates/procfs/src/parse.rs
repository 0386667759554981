use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("{file}: {what}")]
    Malformed {
        file: &'static str,
        what: &'static str,
    },
}

fn malformed(file: &'static str, what: &'static str) -> ParseError {
    ParseError::Malformed { file, what }
}

/// The fields of `/proc/<pid>/stat` that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// The kernel's 16-byte task name, lossily decoded.
    pub comm: String,
    pub state: u8,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// Controlling terminal, `major << 8 | minor` in the kernel's odd encoding; 0 for none.
    pub tty_nr: u32,
    /// The kernel's `PF_*` flags of the task.
    pub flags: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// CPU of children it has waited for.
    pub cutime_ticks: u64,
    pub cstime_ticks: u64,
    pub num_threads: u32,
    /// Start time in clock ticks after boot: with the pid, unique on this host.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// A kernel thread (`PF_KTHREAD`): nobody ran it, and it has no argument list.
    pub fn is_kernel_thread(&self) -> bool {
        const PF_KTHREAD: u32 = 0x0020_0000;
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/<pid>/stat`. The command name sits between the first `(` and the
/// *last* `)`, and may itself hold spaces and parentheses.
///
/// # Errors
/// When a field we need is missing or not a number.
pub fn parse_stat(b: &[u8]) -> Result<Stat, ParseError> {
    const F: &str = "stat";
    let open = b
        .iter()
        .position(|&c| c == b'(')
        .ok_or(malformed(F, "no '('"))?;
    let close = b
        .iter()
        .rposition(|&c| c == b')')
        .ok_or(malformed(F, "no ')'"))?;
    if close < open {
        return Err(malformed(F, "')' before '('"));
    }
    let pid = parse_num(trim(&b[..open])).ok_or(malformed(F, "bad pid"))?;
    let comm = String::from_utf8_lossy(&b[open + 1..close]).into_owned();
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let mut fields = b[close + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty());
    let mut nth = |skip: usize| -> Option<&[u8]> {
        for _ in 0..skip {
            fields.next()?;
        }
        fields.next()
    };
    let state = nth(0)
        .and_then(|f| f.first().copied())
        .ok_or(malformed(F, "no state"))?;
    let num = |f: Option<&[u8]>, what| {
        f.and_then(|f| parse_num::<u64>(trim(f)))
            .ok_or(malformed(F, what))
    };
    let ppid = num(nth(0), "no ppid")? as u32;
    let pgrp = num(nth(0), "no pgrp")? as u32;
    let session = num(nth(0), "no session")? as u32;
    let tty_nr = num(nth(0), "no tty_nr")? as u32;
    // 8 tpgid 9 flags 10 minflt 11 cminflt 12 majflt 13 cmajflt 14 utime
    let flags = num(nth(1), "no flags")? as u32;
    let utime_ticks = num(nth(4), "no utime")?;
    let stime_ticks = num(nth(0), "no stime")?;
    // 16 cutime 17 cstime 18 priority 19 nice 20 num_threads
    let cutime_ticks = num(nth(0), "no cutime")?;
    let cstime_ticks = num(nth(0), "no cstime")?;
    let num_threads = num(nth(2), "no num_threads")? as u32;
    // 21 itrealvalue 22 starttime
    let start_ticks = num(nth(1), "no starttime")?;
    // 23 vsize 24 rss
    let rss_pages = num(nth(1), "no rss")?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        session,
        tty_nr,
        flags,
        utime_ticks,
        stime_ticks,
        cutime_ticks,
        cstime_ticks,
        num_threads,
        start_ticks,
        rss_pages,
    })
}

/// The fields of `/proc/<pid>/status` that we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    /// The pid in each nested pid namespace, outermost first; one entry outside
    /// containers. Absent before Linux 4.1.
    pub ns_pids: Vec<u32>,
}

/// Parses `/proc/<pid>/status`.
///
/// # Errors
/// When the `Uid:` or `Gid:` line is missing or malformed.
pub fn parse_status(b: &[u8]) -> Result<Status, ParseError> {
    const F: &str = "status";
    let mut uid = None;
    let mut gid = None;
    let mut ns_pids = Vec::new();
    for line in b.split(|&c| c == b'\n') {
        if let Some(rest) = line.strip_prefix(b"Uid:") {
            uid = Some(four(rest).ok_or(malformed(F, "bad Uid line"))?);
        } else if let Some(rest) = line.strip_prefix(b"Gid:") {
            gid = Some(four(rest).ok_or(malformed(F, "bad Gid line"))?);
        } else if let Some(rest) = line.strip_prefix(b"NSpid:") {
            ns_pids = rest
                .split(|c| c.is_ascii_whitespace())
                .filter(|f| !f.is_empty())
                .filter_map(parse_num)
                .collect();
        }
    }
    Ok(Status {
        uid: uid.ok_or(malformed(F, "no Uid line"))?,
        gid: gid.ok_or(malformed(F, "no Gid line"))?,
        ns_pids,
    })
}

fn four(rest: &[u8]) -> Option<[u32; 4]> {
    let mut it = rest
        .split(|c| c.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .map(parse_num::<u32>);
    Some([it.next()??, it.next()??, it.next()??, it.next()??])
}

/// Splits `/proc/<pid>/cmdline` into arguments, decoding each lossily.
///
/// A process may rewrite its argument area (`setproctitle`), leaving one string with
/// spaces and no NULs; we report what is there.
pub fn parse_cmdline(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Joins arguments as a shell would show them, quoting those that need it, for ECS
/// `process.command_line`. Quoting keeps `a "b c"` apart from `a b c`.
pub fn command_line(args: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let plain = !a.is_empty()
            && a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&c));
        if plain {
            out.push_str(a);
        } else {
            out.push('\'');
            out.push_str(&a.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    out
}

/// The container id from `/proc/<pid>/cgroup`, for the runtimes that put a 64-hex id in
/// the cgroup path: Docker (`/docker/<id>`, `docker-<id>.scope`), containerd
/// (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), Podman (`libpod-<id>.scope`)
/// and Kubernetes pods (`/kubepods/.../<id>`).
pub fn container_id_from_cgroup(b: &[u8]) -> Option<String> {
    for line in b.split(|&c| c == b'\n') {
        // hierarchy-id:controllers:path
        let path = line.splitn(3, |&c| c == b':').nth(2)?;
        if let Some(id) = container_id_from_cgroup_path(path) {
            return Some(id);
        }
    }
    None
}

/// The container id in one cgroup path (`/system.slice/docker-<id>.scope`), by the rules
/// of [`container_id_from_cgroup`]: the innermost component that names one.
pub fn container_id_from_cgroup_path(path: &[u8]) -> Option<String> {
    path.rsplit(|&c| c == b'/').find_map(hex64_in)
}

fn hex64_in(component: &[u8]) -> Option<String> {
    let stem = component.strip_suffix(b".scope").unwrap_or(component);
    let id = match stem.iter().rposition(|&c| c == b'-') {
        Some(dash) => &stem[dash + 1..],
        None => stem,
    };
    (id.len() == 64 && id.iter().all(|c| c.is_ascii_hexdigit()))
        .then(|| String::from_utf8_lossy(id).into_owned())
}

/// Where the cgroup file systems are mounted, from `/proc/<pid>/mountinfo`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The cgroup v2 (unified) hierarchy: `/sys/fs/cgroup` on a v2 host,
    /// `/sys/fs/cgroup/unified` on a hybrid one; `None` on a v1-only host.
    pub v2: Option<std::path::PathBuf>,
    /// A v1 hierarchy, `memory` preferred (every container runtime on a v1 host creates
    /// its cgroups there); `None` on a v2-only host.
    pub v1: Option<std::path::PathBuf>,
}

/// The cgroup mounts in `/proc/<pid>/mountinfo` (`id parent dev root mountpoint options
/// [optional...] - fstype source superoptions`); the first of each kind.
pub fn parse_cgroup_mounts(b: &[u8]) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    let mut v1_memory = false;
    for line in b.split(|&c| c == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
            continue;
        };
        let path = || {
            use std::os::unix::ffi::OsStringExt;
            std::path::PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(mount_point)))
        };
        match *fstype {
            b"cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(path()),
            b"cgroup" if !v1_memory => {
                let memory = fields
                    .get(dash + 3)
                    .is_some_and(|o| o.split(|&c| c == b',').any(|o| o == b"memory"));
                if memory || mounts.v1.is_none() {
                    mounts.v1 = Some(path());
                    v1_memory = memory;
                }
            }
            _ => {}
        }
    }
    mounts
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape_octal(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits {
            Some(d) if b[i] == b'\\' => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The inode of a namespace link (`pid:[4026531836]`).
pub fn parse_ns_link(b: &[u8]) -> Option<u64> {
    let open = b.iter().position(|&c| c == b'[')?;
    let close = b.iter().rposition(|&c| c == b']')?;
    parse_num(b.get(open + 1..close)?)
}

/// Decodes `tty_nr` into (major, minor) as the kernel packs it: minor bits 0-7 and
/// 20-31, major bits 8-19.
pub fn tty_device(tty_nr: u32) -> Option<(u32, u32)> {
    if tty_nr == 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    Some((major, minor))
}

/// A terminal's name for the common devices: `pts/N` (major 136-143), `ttyN` (4, minor
/// below 64), `ttySN` (4, from 64).
pub fn tty_name(major: u32, minor: u32) -> Option<String> {
    match major {
        136..=143 => Some(format!("pts/{}", (major - 136) * 256 + minor)),
        4 if minor < 64 => Some(format!("tty{minor}")),
        4 => Some(format!("ttyS{}", minor - 64)),
        _ => None,
    }
}

/// `/proc/<pid>/loginuid`: the audit login user, `None` when unset (4294967295).
pub fn parse_loginuid(b: &[u8]) -> Option<u32> {
    parse_num::<u32>(trim(b)).filter(|&u| u != u32::MAX)
}

/// Entries of `/etc/passwd` or `/etc/group`: (name, numeric id). Malformed lines are
/// skipped.
pub fn parse_id_file(b: &[u8]) -> impl Iterator<Item = (String, u32)> + '_ {
    b.split(|&c| c == b'\n').filter_map(|line| {
        if line.first() == Some(&b'#') {
            return None;
        }
        let mut f = line.split(|&c| c == b':');
        let name = f.next().filter(|n| !n.is_empty())?;
        let _password = f.next()?;
        let id = parse_num::<u32>(f.next()?)?;
        Some((String::from_utf8_lossy(name).into_owned(), id))
    })
}

/// Local IPv4 addresses from `/proc/net/fib_trie`: a `|-- a.b.c.d` line followed by a
/// `/32 host LOCAL` line.
pub fn parse_fib_trie_local(b: &[u8]) -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in b.split(|&c| c == b'\n') {
        let text = String::from_utf8_lossy(line);
        let t = text.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.contains("/32 host LOCAL") {
            if let Some(a) = last.take() {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Global-scope IPv6 addresses from `/proc/net/if_inet6` (32 hex digits, ifindex,
/// prefix length, scope, flags, name).
pub fn parse_if_inet6_global(b: &[u8]) -> Vec<std::net::Ipv6Addr> {
    let mut out = Vec::new();
    for line in b.split(|&c| c == b'\n') {
        let text = String::from_utf8_lossy(line);
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() < 4 || f[0].len() != 32 || f[3] != "00" {
            continue;
        }
        if let Ok(v) = u128::from_str_radix(f[0], 16) {
            out.push(std::net::Ipv6Addr::from(v));
        }
    }
    out
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn parse_num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
