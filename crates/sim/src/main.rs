//! `hids-sim`: a fleet of virtual agents in one process, against a real etcd.
//!
//! Each virtual agent runs the agent's own control-plane code: a
//! [`Session`](hids_control::session::Session) (its lease, its status key, its watch on
//! `desired/<host_id>`, signature checks) and a
//! [`ControlState`](hids_control::state::ControlState) (which commands ran, what was
//! applied), and publishes its status through the agent's own publisher after every
//! update and guard sample, so etcd sees the writes real agents would make. Only the
//! host and the plugins are simulated: the status document says what a host with a
//! running process plugin would say, with the guard figures of the simulator process
//! (sampled once for all agents), and simulated plugin updates
//! ([`update`]: phases and outcomes by `hash(host_id)`, nothing downloaded).

mod fleet;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::Client;
use hids_control::hub::WatchHub;
use hids_control::session::{Session, SessionConfig};
use hids_control::{EtcdConfig, EtcdSettings, Keys, TrustedKeys};

use crate::fleet::{Counters, Fleet, Profile};

/// Run N virtual HIDS agents against a real etcd: each with its own lease, status key
/// and watch, verifying signed desired states and acknowledging them exactly as
/// `hids-agent` does. Prints a line starting with READY once all are registered, then
/// runs until interrupted (SIGINT/SIGTERM revoke every lease on the way out).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Number of virtual agents.
    #[arg(long)]
    agents: usize,
    /// Public key the agents trust (`signing.pub` from `hidsctl keygen`; a `signing.key`
    /// is accepted too, its public half is used). Without it every desired state is
    /// refused, as an agent with no trusted key would.
    #[arg(long, value_name = "PATH")]
    trusted_key: Option<PathBuf>,
    /// gRPC connections (HTTP/2) the agents are spread over. Default: one per 10,000
    /// agents.
    #[arg(long)]
    connections: Option<usize>,
    /// `own`: every agent opens its own watch stream, as real agents do. A number K:
    /// every agent's watch goes on one of K shared streams, as behind etcd's gRPC proxy.
    #[arg(long, default_value = "own", value_parser = parse_streams)]
    watch_streams: WatchStreams,
    /// Lease TTL of every agent (keepalives go every TTL/3, staggered).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    lease_ttl: Duration,
    /// Status refresh period even without changes (the agent's default).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    status_refresh: Duration,
    /// Guard sampling period: the simulator samples itself this often (once, for all
    /// agents; the agent's `[guard] interval_secs` default). Every status written
    /// carries the latest sample; the figures never count as a change, as in the agent.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    guard_interval: Duration,
    /// Requests in flight per connection; the rest queue in the simulator, as behind a
    /// proxy. Unbounded, a fleet-wide push times requests out in etcd's queue, and
    /// each timeout resets an HTTP/2 stream until the connection is dropped.
    #[arg(long, default_value_t = 256)]
    rpc_slots: usize,
    /// Agents registering at the same time while the fleet comes up.
    #[arg(long, default_value_t = 2000)]
    ramp: usize,
    /// Simulated plugin updates: a desired state naming a plugin build (version, url,
    /// sha256) the agent does not run takes this many seconds per host (0.5 to 1.5
    /// times it, by hash(host_id)): downloading, trial, then healthy or rolled back.
    /// Nothing is downloaded.
    #[arg(long, default_value_t = 5.0)]
    update_secs: f64,
    /// Share of hosts (0-100, chosen stably by hash(host_id)) whose simulated updates
    /// fail their trial and roll back to the previous version.
    #[arg(long, default_value_t = 0.0)]
    update_fail_percent: f64,
    /// Host ids are PREFIX + a zero-padded index.
    #[arg(long, default_value = "sim-")]
    host_prefix: String,
    /// First index (several simulators can share one etcd with disjoint ranges).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Prefix of every etcd key.
    #[arg(long, default_value = hids_control::keys::DEFAULT_PREFIX)]
    prefix: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print a line of fleet counters every so often (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    report: Option<Duration>,
    /// Log level of the agents' own messages (one line per agent at `info`).
    #[arg(long, default_value = "error")]
    log_level: tracing::Level,
    /// etcd user and password (`user:password`), when etcd has authentication on.
    #[arg(long, env = "HIDS_SIM_ETCD_USER", hide_env_values = true)]
    user: Option<String>,
    /// CA certificate (PEM) for TLS to etcd.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for TLS client authentication.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
}

/// See the workspace's Cargo.toml: malloc was a fifth of this process's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchStreams {
    Own,
    Shared(usize),
}

impl std::fmt::Display for WatchStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchStreams::Own => f.write_str("own"),
            WatchStreams::Shared(k) => write!(f, "{k}"),
        }
    }
}

fn parse_streams(s: &str) -> Result<WatchStreams, String> {
    if s == "own" {
        return Ok(WatchStreams::Own);
    }
    match s.parse::<usize>() {
        Ok(k) if k > 0 => Ok(WatchStreams::Shared(k)),
        _ => Err(format!(
            "{s:?}: say `own` or a number of shared streams (1 or more)"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hids-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hids-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn trusted_keys(path: Option<&PathBuf>) -> anyhow::Result<TrustedKeys> {
    let Some(path) = path else {
        eprintln!("hids-sim: no --trusted-key: the agents will refuse every desired state");
        return Ok(TrustedKeys::default());
    };
    if path.extension().is_some_and(|e| e == "key") {
        let key = hids_control::SigningKey::load(path)?;
        return Ok(TrustedKeys::from_signing_key(&key));
    }
    Ok(TrustedKeys::load(std::slice::from_ref(path))?)
}

/// How to reach etcd: `--user` is `user:password`.
fn etcd_settings(cli: &Cli) -> anyhow::Result<EtcdSettings> {
    let (user, password) = hids_control::connect::user_and_password(cli.user.as_deref())
        .map_err(anyhow::Error::msg)?;
    Ok(EtcdSettings {
        endpoints: cli.endpoints.clone(),
        credentials_file: None,
        user,
        password,
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.agents == 0 {
        anyhow::bail!("--agents: give at least 1");
    }
    let outcomes = update::Outcomes::new(cli.update_secs, cli.update_fail_percent)?;
    let trusted = trusted_keys(cli.trusted_key.as_ref())?;
    let etcd = etcd_settings(&cli)?.config()?;
    let connections = Connections::open(&cli, &etcd).await?;
    eprintln!(
        "hids-sim: starting {} agents over {} connection(s), watch streams: {}",
        cli.agents,
        connections.clients.len(),
        cli.watch_streams
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let guard_period = cli.guard_interval.max(Duration::from_millis(100));
    let (guard_tx, guard_rx) = tokio::sync::watch::channel(fleet::idle_guard());
    tokio::spawn(fleet::sample_guard(
        guard_period,
        guard_tx,
        shutdown_rx.clone(),
    ));
    let fleet = Arc::new(Fleet {
        profile: Profile::new(&cli.host_prefix, cli.first, cli.agents),
        counters: Counters::default(),
        ramp: Arc::new(tokio::sync::Semaphore::new(cli.ramp.max(1))),
        guard: guard_rx,
        outcomes,
    });
    let started = Instant::now();
    let (agents, agent_state_bytes) =
        spawn_agents(&cli, (&etcd, &trusted), &connections, &fleet, &shutdown_rx);
    let Connections { clients, hubs, .. } = connections;
    let startup = Startup {
        started,
        connections: clients.len(),
        agent_state_bytes,
    };
    drop(clients);
    run_until_signal(&cli, &fleet.counters, &hubs, &startup).await?;
    stop(agents, &shutdown_tx).await;
    Ok(())
}

/// The gRPC connections the agents share, each with its request slots, and the shared
/// watch streams (none with `--watch-streams own`).
struct Connections {
    clients: Vec<Arc<Client>>,
    slots: Vec<Arc<tokio::sync::Semaphore>>,
    hubs: Vec<WatchHub>,
}

impl Connections {
    async fn open(cli: &Cli, etcd: &EtcdConfig) -> anyhow::Result<Connections> {
        let connections = cli
            .connections
            .unwrap_or(cli.agents.div_ceil(10_000))
            .clamp(1, cli.agents);
        let mut clients = Vec::with_capacity(connections);
        for i in 0..connections {
            // One endpoint each, in turn: with gateways, a session's lease exists only
            // where it was granted (see `EtcdConfig::one_endpoint`).
            let etcd = etcd.one_endpoint("hids-sim", i as u32);
            clients.push(Arc::new(etcd.connect().await?));
        }
        let slots = (0..connections)
            .map(|_| Arc::new(tokio::sync::Semaphore::new(cli.rpc_slots.max(1))))
            .collect();
        let hubs = match cli.watch_streams {
            WatchStreams::Own => Vec::new(),
            WatchStreams::Shared(k) => (0..k)
                .map(|i| WatchHub::new(Client::clone(&clients[i % clients.len()])))
                .collect(),
        };
        Ok(Connections {
            clients,
            slots,
            hubs,
        })
    }
}

/// Starts every virtual agent; returns their tasks and what one agent's task holds.
fn spawn_agents(
    cli: &Cli,
    (etcd, trusted): (&EtcdConfig, &TrustedKeys),
    connections: &Connections,
    fleet: &Arc<Fleet>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> (tokio::task::JoinSet<()>, usize) {
    let Connections {
        clients,
        slots,
        hubs,
    } = connections;
    let keys = Keys::new(&cli.prefix);
    let mut agents = tokio::task::JoinSet::new();
    let mut agent_state_bytes = 0;
    for i in 0..cli.agents {
        let host_id = fleet.profile.host_id(i);
        let mut session = Session::new(
            SessionConfig {
                etcd: etcd.clone(),
                keys: keys.clone(),
                host_id,
                lease_ttl: cli.lease_ttl,
                status_refresh: cli.status_refresh,
                status_min_gap: Duration::from_millis(500),
            },
            trusted.clone(),
            0,
        )
        .with_rpc_slots(slots[i % slots.len()].clone());
        if !hubs.is_empty() {
            session = session.with_shared_watch(hubs[i % hubs.len()].clone());
        }
        let agent = fleet::agent(
            i,
            session,
            clients[i % clients.len()].clone(),
            fleet.clone(),
            shutdown.clone(),
        );
        // What one agent's control-plane task holds while idle (heap beyond it: its
        // status document and last desired state, about 2 KB).
        agent_state_bytes = std::mem::size_of_val(&agent);
        agents.spawn(agent);
    }
    (agents, agent_state_bytes)
}

/// What the READY line reports.
struct Startup {
    started: Instant,
    connections: usize,
    agent_state_bytes: usize,
}

/// Reports progress until every agent is registered (then prints READY), and the
/// fleet's counters every `--report`, until SIGINT or SIGTERM.
async fn run_until_signal(
    cli: &Cli,
    counters: &Counters,
    hubs: &[WatchHub],
    startup: &Startup,
) -> anyhow::Result<()> {
    let Startup {
        started,
        connections,
        agent_state_bytes,
    } = startup;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let mut ready = false;
    let report_every = cli.report.unwrap_or(Duration::from_secs(3600));
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + report_every, report_every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !ready && counters.registered.load(Ordering::Relaxed) >= cli.agents {
            ready = true;
            println!(
                "READY agents={} connections={connections} watch_streams={} registration_secs={:.2} rss_mb={:.1} agent_task_bytes={agent_state_bytes}",
                cli.agents,
                cli.watch_streams,
                started.elapsed().as_secs_f64(),
                fleet::rss_mb(),
            );
        }
        tokio::select! {
            _ = counters.changed.notified(), if !ready => {}
            _ = progress.tick(), if !ready => {
                eprintln!(
                    "hids-sim: {}/{} registered ({:.0}s)",
                    counters.registered.load(Ordering::Relaxed),
                    cli.agents,
                    started.elapsed().as_secs_f64()
                );
            }
            _ = report.tick(), if cli.report.is_some() => {
                println!("{}", counters.line(hubs.iter().map(WatchHub::lagged).sum()));
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    Ok(())
}

/// Stops every agent (each revokes its lease), waiting at most 15 s.
async fn stop(mut agents: tokio::task::JoinSet<()>, shutdown: &tokio::sync::watch::Sender<bool>) {
    eprintln!("hids-sim: stopping: revoking every lease");
    let _ = shutdown.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !agents.is_empty() {
        match tokio::time::timeout_at(deadline, agents.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "hids-sim: {} agent(s) did not stop in time; their leases expire by TTL",
                    agents.len()
                );
                break;
            }
        }
    }
}
