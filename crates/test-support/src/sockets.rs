//! A socket farm: many loopback TCP connections held by a few real processes, and what
//! each of them says it holds (the ground truth a test checks a snapshot against, learnt
//! from the holders themselves rather than from the kernel the way the plugin asks it).
//!
//! The processes are `hids-socket-farm` (this crate's binary): one coordinator that
//! starts the workers in a ring, worker `i` connecting to worker `i + 1`'s listeners, so
//! the two ends of every connection belong to different pids and a snapshot that swapped
//! local and peer would name the wrong owner. The coordinator writes the ground truth
//! (see [`format_truth`]) to its `--ready-file` once every connection is accepted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fds one farm process may hold: the hard limit here is 20,000, minus a margin for
/// stdio, listeners and whatever the runtime opens.
pub const MAX_FDS_PER_PROCESS: usize = 18_600;

/// Sockets a worker is planned for; the coordinator starts enough workers to stay
/// under it (and under [`MAX_FDS_PER_PROCESS`]).
pub const SOCKETS_PER_WORKER: usize = 18_000;

/// Every this-many connections one goes over IPv6 (`[::1]`).
pub const IPV6_EVERY: usize = 16;

/// What a farm socket is, as its holder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FarmState {
    /// A connected TCP socket (either end).
    Established,
    /// A TCP listener.
    Listen,
    /// A UDP socket bound to a local address, with no peer.
    Unconnected,
}

impl FarmState {
    fn as_str(self) -> &'static str {
        match self {
            FarmState::Established => "established",
            FarmState::Listen => "listen",
            FarmState::Unconnected => "unconn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "established" => Some(FarmState::Established),
            "listen" => Some(FarmState::Listen),
            "unconn" => Some(FarmState::Unconnected),
            _ => None,
        }
    }

    /// TCP or UDP.
    pub fn transport(self) -> &'static str {
        match self {
            FarmState::Unconnected => "udp",
            FarmState::Established | FarmState::Listen => "tcp",
        }
    }
}

/// One socket of the farm: which process holds it, its local end and its peer (as `ss`
/// prints Local and Peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FarmSocket {
    pub pid: u32,
    pub state: FarmState,
    pub local: SocketAddr,
    /// `None` for listeners and unconnected UDP sockets.
    pub peer: Option<SocketAddr>,
}

impl FarmSocket {
    /// A listener (TCP listen or unconnected UDP), as opposed to a connection.
    pub fn is_listener(&self) -> bool {
        self.state != FarmState::Established
    }
}

/// The first line of a ground-truth file.
pub const TRUTH_HEADER: &str =
    "# hids-socket-farm ground truth: pid transport state local_ip local_port peer_ip peer_port";

/// One ground-truth line: tab-separated `pid transport state local_ip local_port peer_ip
/// peer_port`, `-` for a missing peer. Plain text, so the benchmark's Python reads it
/// with `split()`.
pub fn format_truth(s: &FarmSocket) -> String {
    let (peer_ip, peer_port) = match s.peer {
        Some(p) => (p.ip().to_string(), p.port().to_string()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{peer_ip}\t{peer_port}",
        s.pid,
        s.state.transport(),
        s.state.as_str(),
        s.local.ip(),
        s.local.port()
    )
}

/// Parses what [`format_truth`] wrote, one socket a line; `#` lines are comments.
pub fn parse_truth(text: &str) -> Result<Vec<FarmSocket>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_truth_line(line).ok_or_else(|| format!("line {}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_truth_line(line: &str) -> Option<FarmSocket> {
    let f: Vec<&str> = line.split('\t').collect();
    let [pid, transport, state, lip, lport, pip, pport] = f[..] else {
        return None;
    };
    let state = FarmState::parse(state)?;
    if state.transport() != transport {
        return None;
    }
    let local = SocketAddr::new(lip.parse().ok()?, lport.parse().ok()?);
    let peer = match (pip, pport) {
        ("-", "-") => None,
        _ => Some(SocketAddr::new(pip.parse().ok()?, pport.parse().ok()?)),
    };
    Some(FarmSocket {
        pid: pid.parse().ok()?,
        state,
        local,
        peer,
    })
}

/// `127.0.0.<2 + i>` (then on into 127.0.1.x): each worker's own listening address, so
/// every (source, destination, port) triple has the whole ephemeral range to itself.
pub fn worker_ip(index: usize) -> IpAddr {
    let n = index + 2;
    IpAddr::from([127, 0, (n / 250) as u8, (n % 250) as u8])
}

/// N loopback TCP connections (2N sockets) held by real processes until dropped; on
/// drop the whole process group is killed and waited for, also when the test panics.
pub struct SocketFarm {
    coordinator: Child,
    /// Held open: when this process dies without dropping the farm (SIGKILL), the
    /// coordinator sees the end of its stdin and exits, and its workers with it.
    _lifeline: Option<std::process::ChildStdin>,
    pgid: u32,
    sockets: Vec<FarmSocket>,
    _dir: tempfile::TempDir,
}

impl SocketFarm {
    /// A farm of `connections` connections; panics (after killing whatever started)
    /// when it is not ready within a generous deadline.
    pub fn start(connections: usize) -> SocketFarm {
        let timeout = Duration::from_secs(60 + (connections / 2_000) as u64);
        SocketFarm::start_with(connections, timeout)
    }

    pub fn start_with(connections: usize, timeout: Duration) -> SocketFarm {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("truth.tsv");
        let log = dir.path().join("farm.log");
        let mut coordinator = Command::new(farm_binary())
            .arg("--connections")
            .arg(connections.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--timeout-secs")
            .arg(timeout.as_secs().to_string())
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own group: drop kills the workers with it in one call.
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = coordinator.id();
        let lifeline = coordinator.stdin.take();
        let mut farm = SocketFarm {
            coordinator,
            _lifeline: lifeline,
            pgid,
            sockets: Vec::new(),
            _dir: dir,
        };
        farm.wait_ready(&ready, &log, timeout);
        farm
    }

    fn wait_ready(&mut self, ready: &Path, log: &Path, timeout: Duration) {
        let start = Instant::now();
        while !ready.exists() {
            let exited = self.coordinator.try_wait().unwrap();
            let why = match exited {
                Some(status) => format!("it exited ({status})"),
                None if start.elapsed() > timeout => format!("not ready after {timeout:?}"),
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            panic!(
                "socket farm failed: {why}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let text = std::fs::read_to_string(ready).unwrap();
        self.sockets = parse_truth(&text).unwrap_or_else(|e| panic!("bad ground truth: {e}"));
    }

    /// Every socket of the farm with its holder.
    pub fn sockets(&self) -> &[FarmSocket] {
        &self.sockets
    }

    /// The connected TCP sockets (both ends of every connection).
    pub fn established(&self) -> impl Iterator<Item = &FarmSocket> {
        self.sockets.iter().filter(|s| !s.is_listener())
    }

    /// TCP listeners and unconnected UDP sockets.
    pub fn listeners(&self) -> impl Iterator<Item = &FarmSocket> {
        self.sockets.iter().filter(|s| s.is_listener())
    }

    /// The pids of the worker processes that hold the sockets.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.sockets.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for SocketFarm {
    fn drop(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pgid as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.coordinator.wait();
        // The workers were the coordinator's children: init reaps them. Wait until they
        // are gone so the next test does not count their sockets.
        let start = Instant::now();
        while !crate::group_members(self.pgid).is_empty() && start.elapsed().as_secs() < 20 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `hids-socket-farm`: beside the test executable when the workspace was built (as
/// scripts/test does); otherwise built here once, since cargo builds another crate's
/// binaries only for that crate's own tests.
pub fn farm_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
        let path = profile_dir.join("hids-socket-farm");
        if !path.exists() {
            build_farm_binary(profile_dir);
        }
        assert!(
            path.exists(),
            "{} is missing after building it",
            path.display()
        );
        path
    })
    .clone()
}

fn build_farm_binary(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let profile = if profile == "debug" {
        "dev".to_owned()
    } else {
        profile
    };
    let target_dir = profile_dir.parent().unwrap();
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--bin",
            "hids-socket-farm",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building hids-socket-farm failed: run `cargo build -p hids-test-support` and retry"
    );
}

/// How a `--once` snapshot compares with a farm's ground truth.
#[derive(Debug, Default)]
pub struct SnapshotCheck {
    /// JSON lines read.
    pub lines: usize,
    /// The stats record (the last line), if there was one.
    pub stats: Option<serde_json::Value>,
    /// Farm sockets reported once with the right owner.
    pub matched: usize,
    /// Farm sockets expected (established ends plus listeners).
    pub expected: usize,
    /// Farm sockets with no line, first few.
    pub missing: Vec<FarmSocket>,
    pub missing_count: usize,
    /// Lines for farm sockets that name another pid or action, first few.
    pub wrong: Vec<String>,
    pub wrong_count: usize,
    /// Farm sockets with more than one line.
    pub duplicated: usize,
    /// Lines that are not JSON.
    pub unparsable: usize,
}

impl SnapshotCheck {
    /// Every farm socket had exactly one line, with its holder's pid.
    pub fn passed(&self) -> bool {
        self.matched == self.expected && self.wrong_count == 0 && self.unparsable == 0
    }

    /// Percentage of farm sockets reported once with the right owner.
    pub fn agreement_percent(&self) -> f64 {
        100.0 * self.matched as f64 / self.expected.max(1) as f64
    }
}

type Key = (&'static str, SocketAddr, Option<SocketAddr>);

/// Checks the JSON lines of `hids-plugin-network --once` against the farm's ground
/// truth: each established end must be one "connection" line (`source` its local end,
/// `destination` its peer) and each listener one "listening" line, with `process.pid`
/// the worker that holds it and the right `network.transport`. Sockets not of the farm
/// are ignored.
pub fn check_snapshot(truth: &[FarmSocket], stdout: &[u8]) -> SnapshotCheck {
    // Per farm socket: lines seen for it, and how many of them were right.
    let mut want: HashMap<Key, (&FarmSocket, usize, usize)> = truth
        .iter()
        .map(|s| ((s.state.transport(), s.local, s.peer), (s, 0, 0)))
        .collect();
    let mut check = SnapshotCheck {
        expected: want.len(),
        ..SnapshotCheck::default()
    };
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        check.lines += 1;
        let Ok(ev) = serde_json::from_slice::<serde_json::Value>(line) else {
            check.unparsable += 1;
            continue;
        };
        if ev["event"]["action"] == "stats" {
            check.stats = Some(ev);
            continue;
        }
        let Some(key) = line_key(&ev) else { continue };
        let Some((sock, seen, right)) = want.get_mut(&key) else {
            continue;
        };
        *seen += 1;
        let action = if sock.is_listener() {
            "listening"
        } else {
            "connection"
        };
        if ev["process"]["pid"] == sock.pid && ev["event"]["action"] == action {
            *right += 1;
        } else {
            check.wrong_count += 1;
            if check.wrong.len() < 10 {
                check
                    .wrong
                    .push(format!("want pid {} {action}: {ev}", sock.pid));
            }
        }
    }
    for (sock, seen, right) in want.values() {
        match (seen, right) {
            (0, _) => {
                check.missing_count += 1;
                if check.missing.len() < 10 {
                    check.missing.push(**sock);
                }
            }
            (1, 1) => check.matched += 1,
            (1, _) => {}
            _ => check.duplicated += 1,
        }
    }
    check
}

/// (transport, local, peer) of a snapshot line; `None` when it is not a socket line.
/// A listener's peer is absent, or the unspecified address with port 0 as `ss` prints
/// it.
fn line_key(ev: &serde_json::Value) -> Option<Key> {
    let transport = match ev["network"]["transport"].as_str()? {
        "tcp" => "tcp",
        "udp" => "udp",
        _ => return None,
    };
    let local = endpoint(&ev["source"])?;
    let peer = endpoint(&ev["destination"]).filter(|p| p.port() != 0 || !p.ip().is_unspecified());
    Some((transport, local, peer))
}

fn endpoint(v: &serde_json::Value) -> Option<SocketAddr> {
    let ip: IpAddr = v["ip"].as_str()?.parse().ok()?;
    let port = u16::try_from(v["port"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests;
