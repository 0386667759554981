//! `hids-gateway`: serves many agents' control-plane sessions from one etcd watch, its
//! own leases and batched status writes (see the library's documentation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use etcd_client::proto::{PbKvServer, PbLeaseServer, PbWatchServer};
use hids_control::{EtcdSettings, Keys};
use hids_gateway::service::Services;
use hids_gateway::{upstream, Gateway, Settings};

/// Watch gateway between HIDS agents and etcd. Agents use the gateway's address as
/// their control endpoint (`control.endpoints = ["http://HOST:PORT"]`); `hidsctl` keeps
/// talking to etcd. The gateway watches `desired/` once and serves every agent's read
/// and watch of its own key from that, keeps the agents' leases itself, and writes
/// their status keys in transactions of up to 128 on its own etcd lease. Documents are
/// relayed unchanged: agents verify every signature themselves. Several gateways can
/// serve one etcd; `hidsctl gateways` checks what each reports against `agents/`.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Address the agents connect to.
    #[arg(long, default_value = "127.0.0.1:2479")]
    listen: SocketAddr,
    /// This gateway's name in `gateways/` (default: the host name and port).
    #[arg(long)]
    name: Option<String>,
    /// Prefix of every etcd key (as the agents' `control.prefix`).
    #[arg(long, default_value = hids_control::keys::DEFAULT_PREFIX)]
    prefix: String,
    /// TTL of the gateway's own etcd lease. Every status key it writes is on it: if the
    /// gateway dies, its agents leave the listing after this long (unless they
    /// registered on another gateway first).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    lease_ttl: Duration,
    /// Shortest TTL granted to an agent's lease (an agent asking for more gets more).
    /// Agents renew at a third of the TTL granted; a lease also ends when the
    /// connection that granted it closes (an agent that exits or is killed, or a host
    /// silent for 40 s), so a long TTL only delays noticing an agent that is connected
    /// but stuck. 100,000 agents at 600 s send 500 keepalives a second.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "600s")]
    agent_lease_ttl: Duration,
    /// How often the gateway writes its report (`gateways/<name>`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    report_interval: Duration,
    /// Status transactions in flight at once (each key always goes to the same one, so
    /// its writes land in order).
    #[arg(long, default_value_t = 4)]
    lanes: usize,
    /// HTTP/2 streams one connection may open (a process speaking for many agents
    /// opens two per agent).
    #[arg(long, default_value_t = 1 << 20)]
    max_streams_per_connection: u32,
    /// Bytes of blobs (large settings) kept for the agents reading them.
    #[arg(long, default_value_t = 64 << 20)]
    blob_cache_bytes: usize,
    /// etcd user and password (`user:password`) of the gateway itself: it needs to read
    /// `desired/` and `blobs/`, write and delete `agents/` and write `gateways/`.
    #[arg(long, env = "HIDS_GATEWAY_ETCD_USER", hide_env_values = true)]
    user: Option<String>,
    /// CA certificate (PEM) for TLS to etcd; with --cert-file and --key-file for
    /// client authentication.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// See the workspace's Cargo.toml: malloc was a fifth of this process's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes (sysexits.h).
const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

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
            eprintln!("hids-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("hids-gateway: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn settings(cli: &Cli) -> anyhow::Result<EtcdSettings> {
    let (user, password) = hids_control::connect::user_and_password(cli.user.as_deref())
        .map_err(anyhow::Error::msg)?;
    Ok(EtcdSettings {
        endpoints: cli.etcd.clone(),
        credentials_file: None,
        user,
        password,
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
    })
}

/// Raises the open-files limit to its hard limit: every agent holds a connection, and
/// the usual soft limit (1,024) would refuse the 1,025th.
fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one: the kernel caps both at nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = limit.maximum.map_or(nr_open, |m| m.min(nr_open));
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!("open files: up to {target}"),
        Err(e) => {
            tracing::warn!("open files: cannot raise the limit ({e}); it caps the agents served")
        }
    }
}

async fn run(cli: Cli) -> Result<(), (u8, anyhow::Error)> {
    raise_open_files();
    let usage = |e: anyhow::Error| (EXIT_USAGE, e);
    let etcd = settings(&cli)
        .map_err(usage)?
        .config()
        .map_err(|e| usage(e.into()))?;
    let client = etcd.connect().await.map_err(|e| {
        let e = anyhow::Error::from(e).context("is etcd running? (--etcd URL)");
        (EXIT_UNAVAILABLE, e)
    })?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| usage(anyhow::anyhow!("cannot listen on {}: {e}", cli.listen)))?;
    let name = cli.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}:{}", host.trim(), cli.listen.port())
    });
    let gw = Gateway::new(
        Settings {
            keys: Keys::new(&cli.prefix),
            name,
            listen: cli.listen.to_string(),
            lanes: cli.lanes,
            blob_cache_bytes: cli.blob_cache_bytes,
            agent_lease_ttl: cli.agent_lease_ttl,
            report_interval: cli.report_interval,
        },
        client.clone(),
    );
    tokio::spawn(upstream::keep_gateway_lease(
        gw.clone(),
        client.clone(),
        cli.lease_ttl,
    ));
    tokio::spawn(upstream::follow_desired(gw.clone(), client.clone()));
    tokio::spawn(upstream::expire_agent_leases(gw.clone()));
    tokio::spawn(upstream::report(
        gw.clone(),
        client.clone(),
        cli.report_interval,
    ));
    tracing::info!(
        "hids-gateway {} listening on {}, etcd {}",
        gw.name,
        cli.listen,
        cli.etcd.join(",")
    );
    println!("LISTENING {}", cli.listen);

    let services = Services::new(gw.clone());
    let incoming = hids_gateway::conn::incoming(listener, gw.clone());
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(cli.max_streams_per_connection))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(PbKvServer::new(services.clone()))
        .add_service(PbWatchServer::new(services.clone()))
        .add_service(PbLeaseServer::new(services))
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await;
    served.map_err(|e| (EXIT_UNAVAILABLE, anyhow::anyhow!("serving: {e}")))?;
    tracing::info!("hids-gateway: stopped; the agents' keys stay until its lease expires or another gateway takes them");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
