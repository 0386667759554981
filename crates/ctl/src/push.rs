//! Writing desired states: `push` (new settings) and the commands (`stop`, `resume`,
//! `restart-plugin`) all go through here.
//!
//! 1. Targets: online agents matching the target, or the given host ids.
//! 2. One new generation from the fleet-wide counter (compare-and-swap), so the push is
//!    above every earlier one on every host.
//! 3. One signed document per host. Settings larger than a few hundred bytes are
//!    written once to `blobs/<sha256>` and referenced. Commands keep the host's current
//!    settings and its still-unexpired commands (so a host that was offline still gets
//!    a `stop` followed by a `restart-plugin`).
//! 4. Transactions of at most 127 documents plus one history record each (etcd allows
//!    128 operations per transaction by default), so every change is recorded with it.
//! 5. With `--wait`, the agents' acknowledgements are followed until every target has
//!    applied or refused the document, or the time is up.

use crate::exit::Exit;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use hids_control::select::Target;
use hids_control::{Keys, SigningKey, TrustedKeys, Verified};
use hids_types::desired::{Command, CommandKind, DesiredBody, DesiredState};
use hids_types::stagger::Backoff;
use hids_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fleet::{self, get_all};

/// Documents per transaction, leaving room for the history record.
const BATCH: usize = 127;
/// Transactions in flight while writing: etcd commits concurrent ones in one raft
/// round and one fsync, so a fleet-wide write is not 800 round trips in a row.
const TXNS_IN_FLIGHT: usize = 8;
/// Settings above this size go to a blob, so a fleet push writes small values.
const INLINE_BODY_MAX: usize = 512;
/// How long a command stays runnable for a host that is offline.
const COMMAND_TTL: Duration = Duration::from_secs(3600);
/// Commands carried over from a host's previous document, at most.
const MAX_CARRIED_COMMANDS: usize = 16;

pub enum Change {
    Settings(DesiredBody),
    Command(CommandKind, Option<String>),
}

impl Change {
    fn action(&self) -> String {
        match self {
            Change::Settings(_) => "push".into(),
            Change::Command(kind, plugin) => match (kind, plugin) {
                (CommandKind::StopAll, _) => "stop".into(),
                (CommandKind::Resume, _) => "resume".into(),
                (CommandKind::RestartPlugin, p) => {
                    format!("restart-plugin {}", p.as_deref().unwrap_or("?"))
                }
            },
        }
    }
}

#[derive(Serialize)]
struct HistoryRecord<'a> {
    id: &'a str,
    at: Timestamp,
    by: &'a str,
    action: &'a str,
    generation: u64,
    target: &'a str,
    key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_sha256: Option<&'a str>,
    hosts: &'a [String],
}

#[derive(Serialize, Default)]
struct Outcome {
    action: String,
    generation: u64,
    targets: usize,
    /// Targets that applied the document (`applied_generation` reached it).
    acked: usize,
    refused: usize,
    offline: usize,
    pending: usize,
    elapsed_secs: f64,
    /// From each host's write to its acknowledgement being seen, over the hosts that
    /// applied: milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_ms: Option<Percentiles>,
    refusals: Vec<Refusal>,
    offline_hosts: Vec<String>,
    pending_hosts: Vec<String>,
    waited: bool,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        })
    }
}

/// The part of a status document a push reads to choose targets.
#[derive(Deserialize)]
struct Labelled {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The part of a status document that says whether a push arrived: parsing only this
/// keeps following 100,000 acknowledgements cheap.
#[derive(Deserialize)]
struct AckView {
    #[serde(default)]
    applied_generation: u64,
    #[serde(default)]
    desired_error: Option<String>,
    #[serde(default)]
    desired_revision: i64,
}

#[derive(Serialize)]
struct Refusal {
    host_id: String,
    reason: String,
}

/// A transaction, again after 0.2, 0.4, ... 6.4 s while etcd is overloaded. Safe to
/// repeat: it only puts fixed values.
async fn txn_retrying(
    client: &mut Client,
    ops: Vec<TxnOp>,
) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
    loop {
        match client.txn(Txn::new().and_then(ops.clone())).await {
            Err(e) if retry.failures() < 6 && hids_control::overloaded(&e) => {
                tokio::time::sleep(retry.failed()).await;
            }
            result => return result,
        }
    }
}

/// A written batch (its number) and the revision it was written at.
type TxnDone = Result<(usize, i64), etcd_client::Error>;

/// `f` over `items` on every core: checking and making signatures is most of the CPU
/// of a fleet-wide push (40 and 25 µs each here, 100,000 of each).
fn on_all_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The next fleet-wide generation, by compare-and-swap on the counter. Never below
/// `floor` (the highest generation already written), in case the counter was lost.
async fn next_generation(client: &mut Client, keys: &Keys, floor: u64) -> anyhow::Result<u64> {
    let key = keys.generation();
    for _ in 0..100 {
        let resp = client.get(key.clone(), None).await?;
        let (current, cmp) = match resp.kvs().first() {
            Some(kv) => (
                std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0),
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
            ),
            None => (
                0,
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            ),
        };
        let next = current.max(floor) + 1;
        let txn = Txn::new().when(vec![cmp]).and_then(vec![TxnOp::put(
            key.clone(),
            next.to_string(),
            None,
        )]);
        if client.txn(txn).await?.succeeded() {
            return Ok(next);
        }
    }
    anyhow::bail!("could not take a generation number: too many concurrent pushes")
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: &mut Client,
    keys: &Keys,
    key_path: &Path,
    operator: &str,
    target: &Target,
    change: Change,
    wait: Option<Duration>,
    json: bool,
) -> anyhow::Result<Exit> {
    let key = SigningKey::load(key_path)?;
    let own = TrustedKeys::from_signing_key(&key);
    let started = Instant::now();

    let (online, online_at) = presence(client, keys, target.selector.is_some()).await?;
    let hosts: Vec<String> = if target.hosts.is_empty() {
        online
            .iter()
            .filter(|(h, labels)| target.matches(h, labels))
            .map(|(h, _)| h.clone())
            .collect()
    } else {
        let none = BTreeMap::new();
        target
            .hosts
            .iter()
            .filter(|h| target.matches(h, online.get(*h).unwrap_or(&none)))
            .cloned()
            .collect()
    };
    if hosts.is_empty() {
        anyhow::bail!(
            "no host matches {} ({} agent(s) online)",
            target.describe(),
            online.len()
        );
    }

    // The targets' current documents: what their commands carry over, and the highest
    // generation among them (an agent only compares with its own, so the targets' are
    // the floor that matters if the counter was lost). Other hosts' documents are not
    // checked: a 10% canary does not pay for 100% of the signatures.
    let desired_dir = keys.desired_dir();
    let (existing_raw, _) = get_all(client, &desired_dir).await?;
    let targets: HashSet<&str> = hosts.iter().map(String::as_str).collect();
    let mut floor = 0;
    let mut existing: HashMap<String, DesiredState> = HashMap::new();
    let mut unverified = Vec::new();
    let verdicts = on_all_cores(&existing_raw, |(k, v, _)| {
        let host = keys
            .host_of(&desired_dir, k)
            .filter(|h| targets.contains(h))?;
        Some((host.to_owned(), own.verify(v, host, 0)))
    });
    for (host, verdict) in verdicts.into_iter().flatten() {
        match verdict {
            Ok(Verified::New(state)) => {
                floor = floor.max(state.generation);
                existing.insert(host, *state);
            }
            Ok(Verified::Current) => {}
            Err(e) => unverified.push((host, e)),
        }
    }
    // A document this key did not sign (tampered, or another operator's) is never
    // re-signed: commands for such hosts start from empty settings. Say so.
    let mut shown = 0;
    for (host, e) in &unverified {
        if matches!(change, Change::Command(..)) {
            if shown < 10 {
                eprintln!("hidsctl: warning: {host}: its current desired state does not verify ({e}); its settings are not carried over");
            }
            shown += 1;
        }
    }
    if shown > 10 {
        eprintln!(
            "hidsctl: warning: ... and {} more host(s) like that",
            shown - 10
        );
    }
    let generation = next_generation(client, keys, floor).await?;
    let now = SystemTime::now();
    let action = change.action();

    let (body, body_sha256, blob) = match &change {
        Change::Settings(body) => {
            let bytes = serde_json::to_vec(body)?;
            if bytes.len() > INLINE_BODY_MAX {
                let hash = hids_control::sign::blob_hash(&bytes);
                (None, Some(hash), Some(bytes))
            } else {
                (Some(body.clone()), None, None)
            }
        }
        Change::Command(..) => (None, None, None),
    };
    if let (Some(hash), Some(bytes)) = (&body_sha256, &blob) {
        client.put(keys.blob(hash), bytes.clone(), None).await?;
    }
    let new_command = match &change {
        Change::Command(kind, plugin) => Some(Command {
            id: format!("g{generation}"),
            kind: *kind,
            plugin: plugin.clone(),
            expires_at: Timestamp(now + COMMAND_TTL),
        }),
        Change::Settings(_) => None,
    };
    let target_text = target.describe();
    let progress = if json {
        None
    } else {
        Some(bar(hosts.len() as u64, "signing and writing"))
    };
    let mut write_revision: HashMap<String, i64> = HashMap::new();
    let mut written_at: HashMap<String, Instant> = HashMap::new();
    let key_id = key.key_id();
    let batches: Vec<&[String]> = hosts.chunks(BATCH).collect();
    let mut writes = tokio::task::JoinSet::new();
    let written = |done: Option<Result<TxnDone, tokio::task::JoinError>>,
                   revisions: &mut HashMap<String, i64>,
                   at: &mut HashMap<String, Instant>|
     -> anyhow::Result<()> {
        let Some(done) = done else { return Ok(()) };
        let (batch_no, revision) = done??;
        let now = Instant::now();
        for host in batches[batch_no] {
            revisions.insert(host.clone(), revision);
            at.insert(host.clone(), now);
        }
        if let Some(p) = &progress {
            p.inc(batches[batch_no].len() as u64);
        }
        Ok(())
    };
    let documents = on_all_cores(&hosts, |host| {
        let previous = existing.get(host);
        let mut commands: Vec<Command> = previous
            .map(|p| {
                p.commands
                    .iter()
                    .filter(|c| c.expires_at.0 > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(c) = &new_command {
            commands.push(c.clone());
        }
        let skip = commands.len().saturating_sub(MAX_CARRIED_COMMANDS);
        commands.drain(..skip);
        let (doc_body, doc_sha) = match &change {
            Change::Settings(_) => (body.clone(), body_sha256.clone()),
            Change::Command(..) => previous
                .map(|p| (p.body.clone(), p.body_sha256.clone()))
                .unwrap_or_default(),
        };
        let state = DesiredState {
            generation,
            host_id: host.clone(),
            issued_at: Timestamp(now),
            issued_by: operator.to_owned(),
            body: doc_body,
            body_sha256: doc_sha,
            commands,
        };
        serde_json::to_vec(&key.sign(&state))
    });
    let mut documents = documents.into_iter();
    for (batch_no, batch) in batches.iter().copied().enumerate() {
        let mut ops = Vec::with_capacity(batch.len() + 1);
        for (host, value) in batch.iter().zip(documents.by_ref()) {
            ops.push(TxnOp::put(keys.desired(host), value?, None));
        }
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let record_id = format!("{nanos:020}-g{generation}-{batch_no:05}");
        let record = HistoryRecord {
            id: &record_id,
            at: Timestamp(now),
            by: operator,
            action: &action,
            generation,
            target: &target_text,
            key_id: &key_id,
            body_sha256: body_sha256.as_deref(),
            hosts: batch,
        };
        ops.push(TxnOp::put(
            keys.history(&record_id),
            serde_json::to_vec(&record)?,
            None,
        ));
        let mut c = client.clone();
        writes.spawn(async move {
            let resp = txn_retrying(&mut c, ops).await?;
            Ok::<_, etcd_client::Error>((batch_no, resp.header().map_or(0, |h| h.revision())))
        });
        // Let the transaction go out while the next batch is put together.
        tokio::task::yield_now().await;
        while writes.len() >= TXNS_IN_FLIGHT {
            written(
                writes.join_next().await,
                &mut write_revision,
                &mut written_at,
            )?;
        }
    }
    while !writes.is_empty() {
        written(
            writes.join_next().await,
            &mut write_revision,
            &mut written_at,
        )?;
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }

    let mut outcome = Outcome {
        action: action.clone(),
        generation,
        targets: hosts.len(),
        ..Default::default()
    };
    let code = match wait {
        None => {
            outcome.pending = hosts.len();
            outcome.elapsed_secs = started.elapsed().as_secs_f64();
            Exit::Success
        }
        Some(limit) => {
            let written = Written {
                revision: write_revision,
                at: written_at,
            };
            let fleet = Fleet {
                hosts: &hosts,
                online: &online,
                online_at,
            };
            await_acks(
                client,
                keys,
                &fleet,
                generation,
                &written,
                limit,
                json,
                &mut outcome,
            )
            .await?;
            outcome.waited = true;
            outcome.elapsed_secs = started.elapsed().as_secs_f64();
            if outcome.acked == outcome.targets {
                Exit::Success
            } else {
                Exit::NotAllApplied
            }
        }
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_summary(&outcome);
    }
    Ok(code)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ack {
    Applied,
    Refused,
    Offline,
    Pending,
}

fn classify(status: Option<&AckView>, generation: u64, written_at: i64) -> Ack {
    match status {
        None => Ack::Offline,
        Some(s) if s.applied_generation >= generation => Ack::Applied,
        Some(s) if s.desired_revision >= written_at && s.desired_error.is_some() => Ack::Refused,
        Some(_) => Ack::Pending,
    }
}

/// When and at which revision each host's document was written.
struct Written {
    revision: HashMap<String, i64>,
    at: HashMap<String, Instant>,
}

/// Where every target stands, kept up to date one status change at a time (a fleet-wide
/// push sees 100,000 changes; nothing here walks all hosts per change).
struct Tally<'a> {
    generation: u64,
    written: &'a Written,
    hosts: HashMap<&'a str, HostAck<'a>>,
    pending: usize,
    settled: usize,
    acked_at: HashMap<&'a str, Instant>,
}

impl<'a> Tally<'a> {
    fn new(hosts: &'a [String], generation: u64, written: &'a Written) -> Self {
        Tally {
            generation,
            written,
            hosts: hosts
                .iter()
                .map(|h| {
                    let slot = HostAck {
                        name: h.as_str(),
                        ack: Ack::Offline,
                        status: None,
                    };
                    (h.as_str(), slot)
                })
                .collect(),
            pending: 0,
            settled: 0,
            acked_at: HashMap::new(),
        }
    }

    /// Online, status not read: waiting for its answer.
    fn present(&mut self, host: &str) {
        if let Some(slot) = self.hosts.get_mut(host) {
            if slot.ack == Ack::Offline {
                slot.ack = Ack::Pending;
                self.pending += 1;
            }
        }
    }

    fn set(&mut self, host: &str, status: Option<AckView>, now: Instant) {
        let Some(slot) = self.hosts.get_mut(host) else {
            return;
        };
        let written_at = self.written.revision.get(host).copied().unwrap_or(0);
        let ack = classify(status.as_ref(), self.generation, written_at);
        let count = |a: Ack| match a {
            Ack::Applied | Ack::Refused => (0, 1),
            Ack::Pending => (1, 0),
            Ack::Offline => (0, 0),
        };
        let (p0, s0) = count(slot.ack);
        let (p1, s1) = count(ack);
        slot.ack = ack;
        slot.status = status;
        self.pending = self.pending + p1 - p0;
        self.settled = self.settled + s1 - s0;
        if ack == Ack::Applied {
            self.acked_at.entry(slot.name).or_insert(now);
        }
    }
}

/// The targets, who of them was online, and the revision that was read at.
struct Fleet<'a> {
    hosts: &'a [String],
    online: &'a BTreeMap<String, BTreeMap<String, String>>,
    online_at: i64,
}

/// Online agents (their status keys) with their labels when `with_labels` (a selector
/// needs them; `--all`, `--percent` and `--hosts` need only who is there), and the
/// revision of the read.
async fn presence(
    client: &mut Client,
    keys: &Keys,
    with_labels: bool,
) -> anyhow::Result<(BTreeMap<String, BTreeMap<String, String>>, i64)> {
    if with_labels {
        let (online, revision) = fleet::online_at::<Labelled>(client, keys).await?;
        let labels = online.into_iter().map(|(h, l)| (h, l.labels)).collect();
        return Ok((labels, revision));
    }
    let dir = keys.agents();
    let (all, revision) = fleet::get_all_with(client, &dir, true).await?;
    let online = all
        .iter()
        .filter_map(|(key, _, _)| keys.host_of(&dir, key))
        .map(|host| (host.to_owned(), BTreeMap::new()))
        .collect();
    Ok((online, revision))
}

struct HostAck<'a> {
    name: &'a str,
    ack: Ack,
    status: Option<AckView>,
}

#[allow(clippy::too_many_arguments)]
async fn await_acks(
    client: &mut Client,
    keys: &Keys,
    fleet: &Fleet<'_>,
    generation: u64,
    written: &Written,
    limit: Duration,
    json: bool,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let dir = keys.agents();
    let hosts = fleet.hosts;
    let mut tally = Tally::new(hosts, generation, written);
    // Who was online when the targets were chosen; everything since comes through the
    // watch from that revision, so the fleet's statuses are not read a second time.
    for h in hosts {
        if fleet.online.contains_key(h) {
            tally.present(h);
        }
    }
    let revision = fleet.online_at;
    let progress = if json {
        None
    } else {
        Some(bar(hosts.len() as u64, "waiting for agents"))
    };
    let mut watch = client
        .watch(
            dir.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    loop {
        if let Some(p) = &progress {
            p.set_position(tally.settled as u64);
        }
        if tally.pending == 0 {
            break;
        }
        let msg = tokio::select! {
            m = watch.message() => m,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let resp = match msg {
            Ok(Some(resp)) if !resp.canceled() => resp,
            // The watch broke (etcd overloaded or restarted, watch compacted): read
            // everything again and watch from there; acknowledgements are states, so
            // none is lost by reading them late.
            other => {
                if let Err(e) = &other {
                    eprintln!("hidsctl: watch on agents/ broke ({e}); reading again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (current, revision) = get_all(client, &dir).await?;
                let now = Instant::now();
                let mut seen = HashSet::new();
                for (k, v, _) in current {
                    if let Some(host) = keys.host_of(&dir, &k) {
                        seen.insert(host.to_owned());
                        tally.set(host, serde_json::from_slice(&v).ok(), now);
                    }
                }
                for h in hosts.iter().filter(|h| !seen.contains(h.as_str())) {
                    tally.set(h, None, now);
                }
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1);
                watch = client.watch(dir.clone(), Some(opts)).await?;
                continue;
            }
        };
        let now = Instant::now();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(host) = keys.host_of(&dir, kv.key()) else {
                continue;
            };
            let status = match ev.event_type() {
                EventType::Put => serde_json::from_slice(kv.value()).ok(),
                EventType::Delete => None,
            };
            tally.set(host, status, now);
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    outcome.ack_ms = Percentiles::of(
        tally
            .acked_at
            .iter()
            .filter_map(|(h, t)| {
                Some(
                    t.saturating_duration_since(*written.at.get(*h)?)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect(),
    );
    for h in hosts {
        let Some(HostAck { ack, status, .. }) = tally.hosts.get(h.as_str()) else {
            continue;
        };
        match ack {
            Ack::Applied => outcome.acked += 1,
            Ack::Refused => {
                outcome.refused += 1;
                outcome.refusals.push(Refusal {
                    host_id: h.clone(),
                    reason: status
                        .as_ref()
                        .and_then(|s| s.desired_error.clone())
                        .unwrap_or_default(),
                });
            }
            Ack::Offline => {
                outcome.offline += 1;
                if outcome.offline_hosts.len() < 100 {
                    outcome.offline_hosts.push(h.clone());
                }
            }
            Ack::Pending => {
                outcome.pending += 1;
                if outcome.pending_hosts.len() < 100 {
                    outcome.pending_hosts.push(h.clone());
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn bar(len: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

fn print_summary(o: &Outcome) {
    out!(
        "{} generation {} to {} host(s)",
        o.action,
        o.generation,
        o.targets
    );
    if !o.waited {
        out!(
            "written in {:.2}s; not waiting for acknowledgements (use --wait)",
            o.elapsed_secs
        );
        return;
    }
    out!(
        "applied {}  refused {}  offline {}  pending {}  in {:.2}s",
        o.acked,
        o.refused,
        o.offline,
        o.pending,
        o.elapsed_secs
    );
    if let Some(p) = &o.ack_ms {
        out!(
            "acknowledged after write: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            p.p50,
            p.p99,
            p.max
        );
    }
    for r in &o.refusals {
        out!("  refused by {}: {}", r.host_id, r.reason);
    }
    if !o.offline_hosts.is_empty() {
        out!("  offline: {}", o.offline_hosts.join(" "));
    }
    if !o.pending_hosts.is_empty() {
        out!("  pending: {}", o.pending_hosts.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(applied: u64, error: Option<&str>, revision: i64) -> Option<AckView> {
        Some(AckView {
            applied_generation: applied,
            desired_error: error.map(str::to_owned),
            desired_revision: revision,
        })
    }

    #[test]
    fn tally_counts_each_change_once() {
        let hosts: Vec<String> = ["a", "b", "c"].iter().map(|h| h.to_string()).collect();
        let written = Written {
            revision: hosts.iter().map(|h| (h.clone(), 10)).collect(),
            at: hosts.iter().map(|h| (h.clone(), Instant::now())).collect(),
        };
        let mut t = Tally::new(&hosts, 5, &written);
        let now = Instant::now();
        t.set("a", view(4, None, 9), now);
        t.set("b", view(4, None, 9), now);
        assert_eq!((t.pending, t.settled), (2, 0), "c has no status: offline");
        t.set("a", view(5, None, 10), now);
        t.set("a", view(5, None, 10), now);
        assert_eq!(
            (t.pending, t.settled),
            (1, 1),
            "the same ack twice counts once"
        );
        // A refusal of an older write is not an answer to this one.
        t.set("b", view(4, Some("bad signature"), 9), now);
        assert_eq!(t.pending, 1);
        t.set("b", view(4, Some("bad signature"), 10), now);
        assert_eq!((t.pending, t.settled), (0, 2));
        // The agent left (lease gone): no longer settled, not pending either.
        t.set("a", None, now);
        assert_eq!((t.pending, t.settled), (0, 1));
        t.set("unknown-host", view(5, None, 10), now);
        assert_eq!(t.acked_at.len(), 1);
    }
}
