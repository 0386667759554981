//! `hids-fleet-baseline`: what etcd itself can do on this machine, with no agent logic,
//! as the yardstick for `hids-sim` + `hidsctl`.
//!
//! N plain watchers, one per key (each on its own gRPC stream, or on K shared streams),
//! spread over the same number of connections as the simulator. Each round the writer
//! puts all N keys in 128-operation transactions (as many in flight as `hidsctl` keeps)
//! and every watcher answers with a plain put of an ack key; the writer follows the
//! acks with one prefix watch, as `hidsctl --wait` does. No signatures, no JSON, no
//! leases: the floor under a fleet-wide command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, DeleteOptions, EventType, Txn, TxnOp, WatchOptions};
use tokio::sync::{mpsc, Semaphore};

/// Plain-etcd baseline for a fleet-wide command: N watchers, N puts, N ack puts.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Number of watched keys (and watchers).
    #[arg(long)]
    keys: usize,
    /// gRPC connections the watchers are spread over (default: one per 10,000).
    #[arg(long)]
    connections: Option<usize>,
    /// `own` (a stream per watcher) or a number of shared streams.
    #[arg(long, default_value = "own")]
    watch_streams: String,
    /// Rounds of put-everything-and-wait.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Transactions in flight while writing.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Value size of each put, bytes (a signed stop document is about 600).
    #[arg(long, default_value_t = 600)]
    value_bytes: usize,
    #[arg(long, default_value = "/hids-baseline/")]
    prefix: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

const OPS_PER_TXN: usize = 128;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli))
}

fn key(prefix: &str, kind: &str, i: usize) -> String {
    format!("{prefix}{kind}/{i:07}")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let n = cli.keys;
    let connections = cli
        .connections
        .unwrap_or(n.div_ceil(10_000))
        .clamp(1, n.max(1));
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Client::connect(&cli.endpoints, None).await?);
    }
    let mut writer = clients[0].clone();
    writer
        .delete(cli.prefix.clone(), Some(DeleteOptions::new().with_prefix()))
        .await?;
    let start_rev = writer
        .get(cli.prefix.clone(), None)
        .await?
        .header()
        .map_or(0, |h| h.revision());

    // Watchers: each answers every put of its key with an ack put.
    let setup = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1024);
    let watchers = Watchers {
        clients,
        prefix: cli.prefix.clone(),
        start_rev,
        keys: n,
        ready: ready_tx,
    };
    match cli.watch_streams.as_str() {
        "own" => watchers.spawn_own(),
        k => {
            let k: usize = k
                .parse()
                .map_err(|_| anyhow::anyhow!("--watch-streams: `own` or a number"))?;
            watchers.spawn_shared(k);
        }
    }
    drop(watchers);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            anyhow::bail!("watchers failed to start");
        }
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    // Shared streams: the creates were sent; give etcd a moment to register them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for round in 1..=cli.rounds {
        let Round {
            mut lat,
            elapsed_secs: total,
        } = write_and_await_acks(&writer, &cli, round).await?;
        let acked = lat.len();
        lat.sort_by(f64::total_cmp);
        let at = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
        println!(
            "{}",
            serde_json::json!({
                "round": round, "keys": n, "connections": connections,
                "watch_streams": cli.watch_streams, "setup_secs": setup_secs,
                "acked": acked, "elapsed_secs": total,
                "ack_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)},
            })
        );
    }
    writer
        .delete(cli.prefix.clone(), Some(DeleteOptions::new().with_prefix()))
        .await?;
    Ok(())
}

/// The watchers of every key, spread over the connections.
struct Watchers {
    clients: Vec<Client>,
    prefix: String,
    /// Watches start after this revision.
    start_rev: i64,
    keys: usize,
    /// One message per watch created.
    ready: mpsc::Sender<()>,
}

impl Watchers {
    /// A gRPC stream per watcher.
    fn spawn_own(&self) {
        let ramp = Arc::new(Semaphore::new(2000));
        let start_rev = self.start_rev;
        for i in 0..self.keys {
            let mut c = self.clients[i % self.clients.len()].clone();
            let (ramp, ready, prefix) = (ramp.clone(), self.ready.clone(), self.prefix.clone());
            tokio::spawn(async move {
                let Ok(permit) = ramp.acquire_owned().await else {
                    return;
                };
                let opts = WatchOptions::new().with_start_revision(start_rev + 1);
                let Ok(mut w) = c.watch(key(&prefix, "w", i), Some(opts)).await else {
                    eprintln!("watch {i} failed");
                    return;
                };
                drop(permit);
                let _ = ready.send(()).await;
                drop(ready);
                while let Ok(Some(resp)) = w.message().await {
                    for ev in resp.events() {
                        if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                            let _ = c.put(key(&prefix, "a", i), kv.value(), None).await;
                        }
                    }
                }
            });
        }
    }

    /// `k` gRPC streams, each carrying the watches of every k-th key.
    fn spawn_shared(&self, k: usize) {
        let (n, start_rev) = (self.keys, self.start_rev);
        for s in 0..k.max(1) {
            let mut c = self.clients[s % self.clients.len()].clone();
            let ready = self.ready.clone();
            let prefix = self.prefix.clone();
            let mine: Vec<usize> = (s..n).step_by(k.max(1)).collect();
            tokio::spawn(async move {
                let opts = || WatchOptions::new().with_start_revision(start_rev + 1);
                let Some(&first) = mine.first() else { return };
                let Ok(mut w) = c.watch(key(&prefix, "w", first), Some(opts())).await else {
                    return;
                };
                let _ = ready.send(()).await;
                for &i in &mine[1..] {
                    if w.watch(key(&prefix, "w", i), Some(opts())).await.is_err() {
                        return;
                    }
                    let _ = ready.send(()).await;
                }
                drop(ready);
                let wkey = format!("{prefix}w/");
                while let Ok(Some(resp)) = w.message().await {
                    for ev in resp.events() {
                        if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                            let Some(i) = index_after(kv.key(), &wkey) else {
                                continue;
                            };
                            let mut c = c.clone();
                            let (ack, value) = (key(&prefix, "a", i), kv.value().to_vec());
                            tokio::spawn(async move {
                                let _ = c.put(ack, value, None).await;
                            });
                        }
                    }
                }
            });
        }
    }
}

/// The key's index after `prefix`.
fn index_after(key: &[u8], prefix: &str) -> Option<usize> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)?
        .parse::<usize>()
        .ok()
}

/// What one round measured.
struct Round {
    /// Each acked key's latency from its write to its ack, in ms.
    lat: Vec<f64>,
    /// From the first write to the last ack.
    elapsed_secs: f64,
}

/// One round: every key written, in transactions with `--in-flight` at a time, while
/// the acks are followed with one prefix watch.
async fn write_and_await_acks(writer: &Client, cli: &Cli, round: usize) -> anyhow::Result<Round> {
    let n = cli.keys;
    let mut writer = writer.clone();
    let value = format!("{round:0w$}", w = cli.value_bytes.max(1));
    let ack_rev = writer
        .get(cli.prefix.clone(), None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let mut acks = writer
        .watch(
            format!("{}a/", cli.prefix),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(ack_rev + 1),
            ),
        )
        .await?;
    let started = Instant::now();
    let mut written_at = vec![started; n];
    let mut acked_at: Vec<Option<Instant>> = vec![None; n];
    let indexes: Vec<usize> = (0..n).collect();
    let chunks: Vec<Vec<usize>> = indexes.chunks(OPS_PER_TXN).map(<[usize]>::to_vec).collect();
    let mut writes = tokio::task::JoinSet::new();
    let mut next = chunks.into_iter();
    let mut acked = 0;
    let ack_prefix = format!("{}a/", cli.prefix);
    loop {
        while writes.len() < cli.in_flight.max(1) {
            let Some(chunk) = next.next() else { break };
            let mut c = writer.clone();
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|&i| TxnOp::put(key(&cli.prefix, "w", i), value.clone(), None))
                .collect();
            writes.spawn(async move { c.txn(Txn::new().and_then(ops)).await.map(|_| chunk) });
        }
        if acked == n {
            break;
        }
        tokio::select! {
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                let chunk = done??;
                let now = Instant::now();
                for i in chunk {
                    written_at[i] = now;
                }
            }
            msg = acks.message() => {
                let Some(resp) = msg? else { anyhow::bail!("ack watch closed") };
                let now = Instant::now();
                for ev in resp.events() {
                    let Some(i) = ev.kv().and_then(|kv| index_after(kv.key(), &ack_prefix)) else { continue };
                    if i < n && acked_at[i].is_none() {
                        acked_at[i] = Some(now);
                        acked += 1;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(120)) => anyhow::bail!("round {round}: only {acked}/{n} acks in 120 s"),
        }
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    let lat = (0..n)
        .filter_map(|i| {
            Some(
                acked_at[i]?
                    .saturating_duration_since(written_at[i])
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    Ok(Round { lat, elapsed_secs })
}
