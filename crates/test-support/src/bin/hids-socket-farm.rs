//! `hids-socket-farm --connections N --ready-file PATH [--processes K] [--timeout-secs S]
//! [--exit-on-stdin-eof]`: holds N loopback TCP connections (2N sockets) in K worker
//! processes until killed, and writes the ground truth (every socket with the pid that
//! holds it, see `hids_test_support::sockets`) to PATH once all of them are connected and
//! accepted. The file appears whole (written aside, then renamed): its existence is the
//! readiness signal.
//!
//! Workers form a ring: worker `i` connects to worker `i + 1`'s listeners (one on its own
//! 127.0.0.x, one on [::1]), so the two ends of a connection have different owners.
//! Each worker also holds one unconnected UDP socket. Workers die with the coordinator
//! (parent-death signal, and end of file on their stdin).

use std::io::{BufReader, BufWriter, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hids_test_support::sockets::{
    format_truth, worker_ip, FarmSocket, FarmState, IPV6_EVERY, MAX_FDS_PER_PROCESS,
    SOCKETS_PER_WORKER, TRUTH_HEADER,
};

/// The kernel caps it at net.core.somaxconn (4096 here); peers accept while others
/// connect, so this only has to absorb a scheduling hiccup.
const BACKLOG: i32 = 4096;
/// Fds a worker has besides its connections: stdio, listeners, the UDP socket.
const FD_MARGIN: usize = 32;

/// Set once the ready file is written: the watchdog then stands down.
static READY: AtomicBool = AtomicBool::new(false);

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--worker") => worker(),
        _ => parse_args(&args).and_then(|a| coordinator(&a)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hids-socket-farm: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    connections: usize,
    processes: Option<usize>,
    ready_file: std::path::PathBuf,
    timeout: Duration,
    exit_on_stdin_eof: bool,
}

const USAGE: &str = "usage: hids-socket-farm --connections N --ready-file PATH \
                     [--processes K] [--timeout-secs S] [--exit-on-stdin-eof]";

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        connections: 0,
        processes: None,
        ready_file: Default::default(),
        timeout: Duration::from_secs(300),
        exit_on_stdin_eof: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        let number = |v: &String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--connections" => a.connections = number(value()?)?,
            "--processes" => a.processes = Some(number(value()?)?.max(1)),
            "--ready-file" => a.ready_file = value()?.into(),
            "--timeout-secs" => a.timeout = Duration::from_secs(number(value()?)? as u64),
            "--exit-on-stdin-eof" => a.exit_on_stdin_eof = true,
            _ => return Err(format!("unknown argument {flag}; {USAGE}")),
        }
    }
    if a.connections == 0 || a.ready_file.as_os_str().is_empty() {
        return Err(USAGE.to_owned());
    }
    Ok(a)
}

/// What one worker is told to do once every listener is up.
#[derive(Clone, Copy)]
struct Plan {
    peer_ip: IpAddr,
    peer_port_v4: u16,
    peer_port_v6: u16,
    out_v4: usize,
    out_v6: usize,
    in_v4: usize,
    in_v6: usize,
}

/// Connections each worker opens: N spread evenly, one in [`IPV6_EVERY`] over IPv6.
fn outgoing(connections: usize, workers: usize) -> Vec<(usize, usize)> {
    (0..workers)
        .map(|i| {
            let n = connections / workers + usize::from(i < connections % workers);
            (n - n / IPV6_EVERY, n / IPV6_EVERY)
        })
        .collect()
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn coordinator(a: &Args) -> Result<()> {
    let workers = a
        .processes
        .unwrap_or_else(|| (2 * a.connections).div_ceil(SOCKETS_PER_WORKER).max(1));
    let out = outgoing(a.connections, workers);
    for i in 0..workers {
        let (in4, in6) = out[(i + workers - 1) % workers];
        let fds = out[i].0 + out[i].1 + in4 + in6 + FD_MARGIN;
        if fds > MAX_FDS_PER_PROCESS {
            return Err(format!(
                "{fds} fds per worker is over {MAX_FDS_PER_PROCESS}: use more --processes"
            ));
        }
    }
    let timeout = a.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        if !READY.load(Ordering::SeqCst) {
            // Exiting kills the workers (their parent-death signal).
            eprintln!("hids-socket-farm: not ready after {timeout:?}");
            std::process::exit(2);
        }
    });
    let mut ws = (0..workers).map(spawn_worker).collect::<Result<Vec<_>>>()?;
    let mut ports = Vec::new();
    for (i, w) in ws.iter_mut().enumerate() {
        let line = read_line(&mut w.stdout).map_err(|e| format!("worker {i}: {e}"))?;
        ports.push(parse_ports(&line).ok_or_else(|| format!("worker {i} said {line:?}"))?);
    }
    for (i, w) in ws.iter_mut().enumerate() {
        let next = (i + 1) % workers;
        let prev = (i + workers - 1) % workers;
        let plan = Plan {
            peer_ip: worker_ip(next),
            peer_port_v4: ports[next].0,
            peer_port_v6: ports[next].1,
            out_v4: out[i].0,
            out_v6: out[i].1,
            in_v4: out[prev].0,
            in_v6: out[prev].1,
        };
        send_plan(&mut w.stdin, &plan).map_err(|e| format!("worker {i}: {e}"))?;
    }
    let truth = collect_truth(&mut ws)?;
    write_ready_file(&a.ready_file, &truth)?;
    READY.store(true, Ordering::SeqCst);
    hold(ws, a.exit_on_stdin_eof)
}

fn spawn_worker(index: usize) -> Result<Worker> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--worker", &index.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting worker {index}: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("worker pipes missing".to_owned());
    };
    Ok(Worker {
        child,
        stdin,
        stdout: BufReader::new(stdout),
    })
}

fn read_line(r: &mut impl std::io::BufRead) -> Result<String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("exited early (see its error above)".to_owned()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_ports(line: &str) -> Option<(u16, u16)> {
    let mut f = line.strip_prefix("ports ")?.split(' ');
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn send_plan(w: &mut ChildStdin, p: &Plan) -> Result<()> {
    writeln!(
        w,
        "plan {} {} {} {} {} {} {}",
        p.peer_ip, p.peer_port_v4, p.peer_port_v6, p.out_v4, p.out_v6, p.in_v4, p.in_v6
    )
    .and_then(|()| w.flush())
    .map_err(|e| e.to_string())
}

fn parse_plan(line: &str) -> Option<Plan> {
    let f: Vec<&str> = line.strip_prefix("plan ")?.split(' ').collect();
    let [ip, p4, p6, o4, o6, i4, i6] = f[..] else {
        return None;
    };
    Some(Plan {
        peer_ip: ip.parse().ok()?,
        peer_port_v4: p4.parse().ok()?,
        peer_port_v6: p6.parse().ok()?,
        out_v4: o4.parse().ok()?,
        out_v6: o6.parse().ok()?,
        in_v4: i4.parse().ok()?,
        in_v6: i6.parse().ok()?,
    })
}

/// Every worker's ground-truth lines, read in parallel (each blocks writing until read).
fn collect_truth(ws: &mut [Worker]) -> Result<Vec<String>> {
    std::thread::scope(|s| {
        let readers: Vec<_> = ws
            .iter_mut()
            .enumerate()
            .map(|(i, w)| {
                s.spawn(move || -> Result<Vec<String>> {
                    let mut lines = Vec::new();
                    loop {
                        let line =
                            read_line(&mut w.stdout).map_err(|e| format!("worker {i}: {e}"))?;
                        if line == "ready" {
                            return Ok(lines);
                        }
                        lines.push(line);
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for r in readers {
            all.extend(
                r.join()
                    .map_err(|_| "a reader thread panicked".to_owned())??,
            );
        }
        Ok(all)
    })
}

fn write_ready_file(path: &std::path::Path, lines: &[String]) -> Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".part");
    let write = || -> std::io::Result<()> {
        let mut f = BufWriter::new(std::fs::File::create(&aside)?);
        writeln!(f, "{TRUTH_HEADER}")?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&aside, path)
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Holds the sockets until killed; a worker that dies ends the farm (with an error), and
/// so does the end of our stdin when asked, so a killed test leaks nothing.
fn hold(mut ws: Vec<Worker>, exit_on_stdin_eof: bool) -> Result<()> {
    if exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    loop {
        for w in &mut ws {
            if let Some(status) = w.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("worker {} exited ({status})", w.child.id()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- worker ----

fn worker() -> Result<()> {
    // The kernel kills us when the coordinator goes, whatever way it goes.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("prctl: {e}"))?;
    raise_fd_limit()?;
    let index: usize = std::env::args()
        .nth(2)
        .and_then(|i| i.parse().ok())
        .ok_or("--worker needs its index")?;
    let my_ip = worker_ip(index);
    let v4 = tcp_listener(SocketAddr::new(my_ip, 0))?;
    let v6 = tcp_listener(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0))?;
    let udp = UdpSocket::bind((my_ip, 0)).map_err(|e| format!("udp bind {my_ip}: {e}"))?;
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    println!("ports {} {}", port(&v4)?, port(&v6)?);
    let mut stdin = std::io::stdin().lock();
    let line = read_line(&mut stdin).map_err(|_| "the coordinator went away".to_owned())?;
    let plan = parse_plan(&line).ok_or_else(|| format!("bad plan {line:?}"))?;
    let (connected, accepted) = std::thread::scope(|s| {
        let acc4 = s.spawn(|| accept_n(&v4, plan.in_v4));
        let acc6 = s.spawn(|| accept_n(&v6, plan.in_v6));
        let connected = connect_all(&plan);
        let mut accepted = join(acc4)?;
        accepted.extend(join(acc6)?);
        Ok::<_, String>((connected?, accepted))
    })?;
    report(&[&v4, &v6], &udp, connected.iter().chain(&accepted))?;
    // Hold everything until the coordinator closes our stdin (or kills us).
    let _ = std::io::copy(&mut stdin, &mut std::io::sink());
    Ok(())
}

fn join(h: std::thread::ScopedJoinHandle<'_, Result<Vec<TcpStream>>>) -> Result<Vec<TcpStream>> {
    h.join()
        .map_err(|_| "an accept thread panicked".to_owned())?
}

fn raise_fd_limit() -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .map_err(|e| format!("raising RLIMIT_NOFILE to its hard limit: {e}"))
}

fn tcp_listener(addr: SocketAddr) -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let listen = || -> rustix::io::Result<TcpListener> {
        let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&fd, &addr)?;
        rustix::net::listen(&fd, BACKLOG)?;
        Ok(TcpListener::from(fd))
    };
    listen().map_err(|e| format!("listening on {addr}: {e}"))
}

/// Closing with a zero linger sends a reset instead of leaving 2N sockets in TIME_WAIT,
/// which would fill the next farm's snapshot (and the ephemeral ports) for a minute.
fn no_time_wait(s: &TcpStream) -> Result<()> {
    rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO))
        .map_err(|e| format!("SO_LINGER: {e}"))
}

fn accept_n(l: &TcpListener, n: usize) -> Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        no_time_wait(&s)?;
        out.push(s);
    }
    Ok(out)
}

fn connect_all(p: &Plan) -> Result<Vec<TcpStream>> {
    let v4 = SocketAddr::new(p.peer_ip, p.peer_port_v4);
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p.peer_port_v6);
    let mut out = Vec::with_capacity(p.out_v4 + p.out_v6);
    for (addr, n) in [(v4, p.out_v4), (v6, p.out_v6)] {
        for _ in 0..n {
            let s = TcpStream::connect(addr).map_err(|e| {
                format!(
                    "connect to {addr} after {} connections: {e} (EADDRNOTAVAIL: the \
                     ephemeral ports are used up; wait for old sockets to go)",
                    out.len()
                )
            })?;
            no_time_wait(&s)?;
            out.push(s);
        }
    }
    Ok(out)
}

/// Prints every socket we hold (ground truth), then `ready`.
fn report<'a>(
    listeners: &[&TcpListener],
    udp: &UdpSocket,
    streams: impl Iterator<Item = &'a TcpStream>,
) -> Result<()> {
    let pid = std::process::id();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut emit = |state, local: std::io::Result<SocketAddr>, peer: Option<SocketAddr>| {
        let local = local.map_err(|e| format!("getsockname: {e}"))?;
        let line = format_truth(&FarmSocket {
            pid,
            state,
            local,
            peer,
        });
        writeln!(out, "{line}").map_err(|e| format!("stdout: {e}"))
    };
    for l in listeners {
        emit(FarmState::Listen, l.local_addr(), None)?;
    }
    emit(FarmState::Unconnected, udp.local_addr(), None)?;
    for s in streams {
        let peer = s.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
        emit(FarmState::Established, s.local_addr(), Some(peer))?;
    }
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}
