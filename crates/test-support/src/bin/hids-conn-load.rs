//! `hids-conn-load --rate R --secs D [--ports P] [--clients C]`: a steady stream of
//! loopback TCP connections, for bench/connections (the cost of capturing connects and
//! accepts). This process listens on P ports of 127.0.0.1 and accepts; C client
//! processes (this binary again, `--client`) connect R times a second in all, round-robin
//! over the ports, and close at once. So one client and one port make one key per
//! direction for a fold table keyed by (process, direction, peer), and P ports make P.
//!
//! Connections are paced against the clock (the k-th is due at k/R s), not slept
//! between, so a late one is caught up rather than lost; the summary says how late the
//! latest was. The server closes what it accepts at once; the client holds each
//! connection `--hold-ms` (50) and then closes it with a zero linger, a reset, so the
//! R×D connections leave no TIME_WAIT behind to use up the ephemeral ports. The hold
//! keeps that reset after the accept, as with a real client: a connection reset while
//! still in the listen queue is accepted with its local port already cleared by the
//! kernel (`--hold-ms 0` makes such connections). Prints one JSON line at the end.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;

/// Accepts left to come in once every client is done: beyond this the rest are lost.
const DRAIN: Duration = Duration::from_secs(3);
/// The kernel caps it at net.core.somaxconn; deep enough for a scheduling hiccup.
const BACKLOG: i32 = 4096;

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: hids-conn-load [--rate R (10000)] [--secs D (30)] \
                     [--ports P (1)] [--clients C (1)] [--hold-ms H (50)]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--client") => client(&args[1..]),
        _ => parse_args(&args).and_then(|a| server(&a)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hids-conn-load: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    rate: f64,
    secs: f64,
    ports: usize,
    clients: usize,
    hold_ms: u64,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        rate: 10_000.0,
        secs: 30.0,
        ports: 1,
        clients: 1,
        hold_ms: 50,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        let number = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{flag} {value}: not a number >= 0"))
        };
        match flag.as_str() {
            "--rate" => a.rate = number()?.min(1_000_000.0),
            "--secs" => a.secs = number()?.min(86_400.0),
            // Bounded by the fds of one process (the hard limit here is 20,000).
            "--ports" => a.ports = (number()? as usize).clamp(1, 4096),
            "--clients" => a.clients = (number()? as usize).clamp(1, 64),
            // A connection's fd is held this long: R × H / 1000 of them at once.
            "--hold-ms" => a.hold_ms = (number()? as u64).min(10_000),
            _ => return Err(format!("unknown argument {flag}; {USAGE}")),
        }
    }
    if a.rate == 0.0 || a.secs == 0.0 {
        return Err(format!("--rate and --secs must be above 0; {USAGE}"));
    }
    Ok(a)
}

fn server(a: &Args) -> Result<()> {
    let listeners = (0..a.ports).map(|_| listen()).collect::<Result<Vec<_>>>()?;
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|s| s.port().to_string()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("getsockname: {e}"))?;
    let ports = ports.join(",");
    let per_client = a.rate / a.clients as f64;
    let started = Instant::now();
    let mut clients = (0..a.clients)
        .map(|i| spawn_client(i, per_client, a.secs, a.hold_ms, &ports))
        .collect::<Result<Vec<_>>>()?;
    let client_pids: Vec<u32> = clients.iter().map(Child::id).collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reports = std::thread::scope(|s| {
        let waiter = s.spawn(move || {
            let reports = clients.iter_mut().map(wait_client).collect::<Vec<_>>();
            let _ = done_tx.send(());
            reports
        });
        let accepted = accept_until(&listeners, &done_rx);
        (waiter.join(), accepted)
    });
    let (Ok(reports), accepted) = reports else {
        return Err("the client waiter panicked".to_owned());
    };
    let (mut accepted, accept_errors) = accepted?;
    let reports = reports.into_iter().collect::<Result<Vec<_>>>()?;
    let wall = started.elapsed().as_secs_f64();
    let connects: u64 = reports.iter().map(|r| r.connects).sum();
    // Whatever the listen queues still hold once the clients are gone.
    let deadline = Instant::now() + DRAIN;
    while accepted < connects && Instant::now() < deadline {
        accepted += drain_all(&listeners).0;
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{{\"rate_target\":{},\"secs\":{},\"ports\":{},\"clients\":{},\"connects\":{connects},\
         \"connect_errors\":{},\"accepted\":{accepted},\"accept_errors\":{accept_errors},\
         \"wall_secs\":{wall:.3},\"rate\":{:.1},\"max_late_ms\":{:.1},\"server_pid\":{},\
         \"client_pids\":{client_pids:?}}}",
        a.rate,
        a.secs,
        a.ports,
        a.clients,
        reports.iter().map(|r| r.errors).sum::<u64>(),
        connects as f64 / reports.iter().map(|r| r.secs).fold(0.0, f64::max).max(1e-9),
        reports.iter().map(|r| r.max_late_ms).fold(0.0, f64::max),
        std::process::id(),
    );
    Ok(())
}

fn listen() -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let open = || -> rustix::io::Result<TcpListener> {
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &addr)?;
        rustix::net::listen(&fd, BACKLOG)?;
        Ok(TcpListener::from(fd))
    };
    open().map_err(|e| format!("listening on {addr}: {e}"))
}

/// Accepts on every listener until `done` says the clients have finished.
fn accept_until(
    listeners: &[TcpListener],
    done: &std::sync::mpsc::Receiver<()>,
) -> Result<(u64, u64)> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    for (i, l) in listeners.iter().enumerate() {
        epoll::add(
            &ep,
            l.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .map_err(|e| format!("epoll add: {e}"))?;
    }
    let mut events = Vec::with_capacity(listeners.len().min(256));
    let (mut accepted, mut errors) = (0, 0);
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while done.try_recv().is_err() {
        events.clear();
        match epoll::wait(&ep, spare_capacity(&mut events), Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter().copied() {
            let data = ev.data;
            let Some(l) = listeners.get(data.u64() as usize) else {
                continue;
            };
            let (n, e) = drain(l);
            accepted += n;
            errors += e;
        }
    }
    Ok((accepted, errors))
}

fn drain_all(listeners: &[TcpListener]) -> (u64, u64) {
    listeners
        .iter()
        .map(drain)
        .fold((0, 0), |(a, b), (n, e)| (a + n, b + e))
}

/// Accepts (and closes) what one listener's queue holds: (accepted, errors).
fn drain(l: &TcpListener) -> (u64, u64) {
    let (mut n, mut errors) = (0, 0);
    loop {
        match l.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (n, errors),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // ECONNABORTED and the like: that connection is gone, the queue is not.
            Err(_) => errors += 1,
        }
        if errors > 1_000_000 {
            return (n, errors);
        }
    }
}

fn spawn_client(index: usize, rate: f64, secs: f64, hold_ms: u64, ports: &str) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    Command::new(exe)
        .args(["--client", &index.to_string(), &rate.to_string()])
        .args([&secs.to_string(), &hold_ms.to_string(), ports])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting client {index}: {e}"))
}

struct ClientReport {
    connects: u64,
    errors: u64,
    secs: f64,
    max_late_ms: f64,
}

fn wait_client(c: &mut Child) -> Result<ClientReport> {
    let mut line = String::new();
    if let Some(out) = c.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let status = c.wait().map_err(|e| format!("waiting for a client: {e}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let parsed = match f[..] {
        ["done", connects, errors, secs, late] => (|| {
            Some(ClientReport {
                connects: connects.parse().ok()?,
                errors: errors.parse().ok()?,
                secs: secs.parse().ok()?,
                max_late_ms: late.parse().ok()?,
            })
        })(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("client {} ({status}) said {line:?}", c.id()))
}

// ---- client ----

/// `--client INDEX RATE SECS HOLD_MS PORT,PORT,...`: connects RATE times a second for
/// SECS seconds, round-robin over the ports from INDEX on, holds each connection HOLD_MS
/// and closes it with a reset, then prints
/// `done CONNECTS ERRORS SECS MAX_LATE_MS`.
fn client(args: &[String]) -> Result<()> {
    // Dies with the server, whatever way it goes.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("prctl: {e}"))?;
    let [index, rate, secs, hold_ms, ports] = args else {
        return Err("--client INDEX RATE SECS HOLD_MS PORTS".to_owned());
    };
    let bad = |what: &str| format!("--client: bad {what}");
    let index: usize = index.parse().map_err(|_| bad("index"))?;
    let rate: f64 = rate.parse().map_err(|_| bad("rate"))?;
    let secs: f64 = secs.parse().map_err(|_| bad("secs"))?;
    let hold = Duration::from_millis(hold_ms.parse().map_err(|_| bad("hold"))?);
    let ports = ports
        .split(',')
        .map(|p| {
            p.parse::<u16>()
                .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad("ports"))?;
    let total = (rate * secs).round() as u64;
    let started = Instant::now();
    let (mut connects, mut errors, mut max_late) = (0u64, 0u64, Duration::ZERO);
    let mut error_kinds: HashMap<ErrorKind, u64> = HashMap::new();
    let mut held = VecDeque::new();
    for k in 0..total {
        let due = started + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_late = max_late.max(now - due);
        }
        let addr = ports[(index + k as usize) % ports.len()];
        match TcpStream::connect(addr).and_then(|s| reset_on_close(&s).map(|()| s)) {
            Ok(s) => {
                connects += 1;
                held.push_back((Instant::now() + hold, s));
            }
            Err(e) => {
                errors += 1;
                *error_kinds.entry(e.kind()).or_default() += 1;
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(until, _)| *until <= now) {
            held.pop_front();
        }
    }
    let connecting = started.elapsed();
    if let Some((until, _)) = held.back() {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    drop(held);
    if !error_kinds.is_empty() {
        eprintln!("hids-conn-load client {index}: connect errors {error_kinds:?}");
    }
    println!(
        "done {connects} {errors} {:.3} {:.1}",
        connecting.as_secs_f64(),
        max_late.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A zero linger: `close` sends a reset and the socket leaves no TIME_WAIT.
fn reset_on_close(s: &TcpStream) -> std::io::Result<()> {
    rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO)).map_err(Into::into)
}
