//! `hids-auth-bench`: what etcd's Authenticate costs when a fleet (re)connects with
//! per-host credentials, as after an etcd restart (simple tokens live only in etcd's
//! memory, so every agent authenticates again) or a token expiry.
//!
//! Reads the credentials files `hidsctl enroll` wrote (`DIR/*.toml`), then sends N
//! Authenticate requests, cycling over those users, from a few gRPC connections with a
//! bounded number in flight, and prints one JSON line: count, errors, wall time, rate
//! and latency percentiles. etcd's CPU is measured by the caller (bench/enroll/run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hids_control::credentials::Credentials;
use tokio::sync::Semaphore;

/// N etcd Authenticate calls over a few connections, as a reconnecting fleet makes them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Directory of credentials files (`hidsctl enroll --out DIR`).
    #[arg(long, value_name = "DIR")]
    credentials_dir: std::path::PathBuf,
    /// Authenticate calls in all (users are reused when fewer).
    #[arg(long)]
    count: usize,
    /// gRPC connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once, over all connections.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli))
}

fn load_users(dir: &std::path::Path, want: usize) -> anyhow::Result<Vec<Credentials>> {
    let mut users = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            users.push(Credentials::load(&path)?);
            if users.len() >= want {
                break;
            }
        }
    }
    if users.is_empty() {
        anyhow::bail!("no *.toml credentials in {}", dir.display());
    }
    Ok(users)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let users = Arc::new(load_users(&cli.credentials_dir, cli.count)?);
    let config = hids_control::EtcdConfig {
        endpoints: cli.endpoints.clone(),
        ..Default::default()
    };
    let mut clients = Vec::new();
    for _ in 0..cli.connections.max(1) {
        clients.push(config.connect().await?);
    }
    let slots = Arc::new(Semaphore::new(cli.in_flight.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cli.count {
        let permit = slots.clone().acquire_owned().await?;
        let mut auth = clients[i % clients.len()].auth_client();
        let users = users.clone();
        tasks.spawn(async move {
            let u = &users[i % users.len()];
            let t = Instant::now();
            let r = auth.authenticate(u.user.clone(), u.password.clone()).await;
            drop(permit);
            r.map(|_| t.elapsed()).map_err(|e| e.to_string())
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(cli.count);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(d)) => latencies.push(d),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let line = serde_json::json!({
        "count": cli.count,
        "users": users.len(),
        "errors": errors,
        "first_error": first_error,
        "elapsed_secs": elapsed,
        "per_sec": latencies.len() as f64 / elapsed,
        "ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    });
    println!("{line}");
    Ok(())
}
