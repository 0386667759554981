//! `hidsctl rollout`: a plugin build pushed in waves by the stable percentage buckets
//! (1%, 10%, 50%, 100%), each wave written through the push stages
//! ([`crate::push::write`]) and followed until every host of it runs the build healthy,
//! failed or rolled back; halted by itself when failures cross a threshold.
//!
//! - [`plan`]: the builds the settings name and the waves, checked before any write.
//! - [`wave`]: each host's verdict from its status key, and the halting rule.
//! - [`record`]: `rollouts/<id>`, written at the start, as each wave is written and
//!   when it ends: `rollout status` resumes from it.
//! - [`report`]: the summary, or `--json`.

mod plan;
mod record;
mod report;
mod wave;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Client;
use hids_control::select::Target;
use hids_control::writer::HistoryRecord;
use hids_control::{Keys, SigningKey};
use hids_types::Timestamp;

use crate::exit::Exit;
use crate::progress::counting_bar;
use crate::push::{self, Change, Described, Request};
use record::{Plan, Record, State, TargetSpec, WaveState};
use wave::{Judge, WaveTally};

/// `rollout start`, as given on the command line.
pub struct StartArgs {
    pub file: PathBuf,
    pub target: Target,
    pub waves: Vec<f64>,
    pub max_failure_percent: f64,
    pub wave_timeout: Duration,
    pub key: SigningKey,
    pub operator: String,
    pub json: bool,
}

/// Starts a rollout and runs its waves to the end or to a halt.
///
/// # Errors
/// A bad settings file or wave list (before anything is written), etcd failing, no
/// host matching.
pub async fn start(client: &mut Client, keys: &Keys, args: StartArgs) -> anyhow::Result<Exit> {
    plan::check_waves(&args.waves)?;
    if args.target.percent.is_some() {
        anyhow::bail!(
            "--percent and --waves both choose hosts by the same stable buckets: give the \
             rollout's end as the last wave instead (e.g. --all --waves 1,5,10 for a 10% rollout)"
        );
    }
    if !(0.0..=100.0).contains(&args.max_failure_percent) {
        anyhow::bail!(
            "--max-failure-percent {}: give a share from 0 to 100",
            args.max_failure_percent
        );
    }
    let Change::Settings(settings) = Change::settings_from(&args.file)? else {
        anyhow::bail!("{}: not desired settings", args.file.display());
    };
    let plugins = plan::releases(&settings, &args.file.display().to_string())?;
    // No host at all: said before a record is written.
    push::choose(client, keys, &args.target).await?;
    let mut record = Record::new(Plan {
        plugins,
        waves: args.waves,
        by: args.operator.clone(),
        key_id: args.key.key_id(),
        target: TargetSpec::of(&args.target),
        max_failure_percent: args.max_failure_percent,
        wave_timeout: args.wave_timeout,
        settings: settings.clone(),
    });
    record.create(client, keys).await?;
    if !args.json {
        eprintln!(
            "hidsctl: rollout {}: {} to {}, waves {}",
            record.rollout,
            record.releases_text(),
            record.target.describe,
            report::waves_text(&record)
        );
    }
    let request = Request {
        key: args.key,
        operator: args.operator,
        target: args.target,
        change: Change::Settings(settings),
        wait: None,
        json: args.json,
    };
    let id = record.rollout.clone();
    eprintln_if_json(args.json, &id);
    drive(client, keys, &mut record, &request)
        .await
        .map_err(|e| {
            e.context(format!(
                "rollout {id} interrupted; `hidsctl rollout status {id}` shows where it stands \
                 and `--continue --key K` goes on"
            ))
        })?;
    finish(&record, args.json)
}

/// With `--json` the summary comes only at the end: the id goes to stderr at once, so an
/// interrupted rollout can be found again.
fn eprintln_if_json(json: bool, id: &str) {
    if json {
        eprintln!("hidsctl: rollout {id}");
    }
}

/// `rollout status ID --continue`: who signs the next waves.
pub struct GoOn {
    pub key: SigningKey,
    pub operator: String,
}

/// Prints rollout `id` (the latest when `None`). One still running (its hidsctl was
/// interrupted) has the wave in progress watched to its end first; with `go_on`, the
/// remaining waves are run.
///
/// # Errors
/// etcd failing, no such rollout, nothing left to continue.
pub async fn status(
    client: &mut Client,
    keys: &Keys,
    id: Option<&str>,
    go_on: Option<GoOn>,
    json: bool,
) -> anyhow::Result<Exit> {
    let mut record = Record::load(client, keys, id).await?;
    let before = record.state;
    if before == State::Running {
        resume(client, keys, &mut record, json).await?;
    }
    if let Some(go_on) = go_on {
        if before == State::Running && record.state != State::Paused {
            // It ended while this command watched (the last wave, or a halt): going on
            // after a halt needs a fresh decision.
            return finish(&record, json);
        }
        if record.current_wave().is_none() {
            anyhow::bail!(
                "rollout {} is {}: no wave left",
                record.rollout,
                record.state.as_str()
            );
        }
        if go_on.key.key_id() != record.key_id {
            eprintln!(
                "hidsctl: warning: rollout {} was signed with key {}, this is {}",
                record.rollout,
                record.key_id,
                go_on.key.key_id()
            );
        }
        let request = Request {
            key: go_on.key,
            operator: go_on.operator,
            target: record.target.target()?,
            change: Change::Settings(record.settings.clone()),
            wait: None,
            json,
        };
        drive(client, keys, &mut record, &request).await?;
    }
    finish(&record, json)
}

/// `rollout list`.
///
/// # Errors
/// When etcd fails.
pub async fn list(client: &mut Client, keys: &Keys, json: bool) -> anyhow::Result<Exit> {
    let records = Record::list(client, keys).await?;
    report::list(&records, json)?;
    Ok(Exit::Success)
}

fn finish(record: &Record, json: bool) -> anyhow::Result<Exit> {
    report::print(record, json)?;
    Ok(match record.state {
        State::Halted | State::TimedOut => Exit::RolloutHalted,
        State::Running | State::Paused | State::Completed => Exit::Success,
    })
}

/// Runs the waves from the current one to the last, or until one halts.
async fn drive(
    client: &mut Client,
    keys: &Keys,
    record: &mut Record,
    request: &Request,
) -> anyhow::Result<()> {
    record.state = State::Running;
    record.reason = None;
    while let Some(i) = record.current_wave() {
        if record.waves[i].state == WaveState::Watching {
            let hosts = hosts_of_wave(client, keys, record, i).await?;
            watch_wave(client, keys, record, i, &hosts, None, !request.json).await?;
        } else {
            run_wave(client, keys, record, request, i).await?;
        }
        if record.state != State::Running {
            return Ok(());
        }
    }
    record.state = State::Completed;
    record.save(client, keys).await
}

/// Hosts whose desired document has a generation of at least `generation`: written by
/// this rollout (or by a change after it began, which replaced its settings anyway).
async fn written_since(
    client: &mut Client,
    keys: &Keys,
    generation: u64,
) -> anyhow::Result<std::collections::HashSet<String>> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        doc: String,
    }
    #[derive(serde::Deserialize)]
    struct Generation {
        generation: u64,
        host_id: String,
    }
    let dir = keys.desired_dir();
    let (all, _) = crate::fleet::get_all(client, &dir).await?;
    Ok(all
        .iter()
        .filter_map(|(_, value, _)| {
            let envelope: Envelope = serde_json::from_slice(value).ok()?;
            let doc: Generation = serde_json::from_str(&envelope.doc).ok()?;
            (doc.generation >= generation).then_some(doc.host_id)
        })
        .collect())
}

/// Writes wave `i` to its hosts and follows them.
async fn run_wave(
    client: &mut Client,
    keys: &Keys,
    record: &mut Record,
    request: &Request,
    i: usize,
) -> anyhow::Result<()> {
    let from = if i == 0 {
        0.0
    } else {
        record.waves[i - 1].percent
    };
    let upto = record.waves[i].percent;
    let w = &mut record.waves[i];
    w.state = WaveState::Writing;
    w.started_at = Some(Timestamp::now());
    record.save(client, keys).await?;

    let fleet = push::choose(client, keys, &request.target).await?;
    let first_generation = record.waves[..i]
        .iter()
        .map(|w| w.generation)
        .find(|g| *g > 0);
    // This wave's buckets, always; and hosts of earlier buckets that no earlier wave
    // reached (offline then, or new): those without a document from since the rollout
    // began.
    let mut hosts = plan::wave_hosts(&fleet.hosts, from, upto);
    if let Some(g) = first_generation {
        let written = written_since(client, keys, g).await?;
        let missed = plan::wave_hosts(&fleet.hosts, 0.0, from);
        hosts.extend(missed.into_iter().filter(|h| !written.contains(h)));
    }
    record.waves[i].targets = hosts.len();
    if hosts.is_empty() {
        record.waves[i].state = WaveState::Done;
        return record.save(client, keys).await;
    }
    let action = format!(
        "rollout {} wave {}/{} ({upto}%)",
        record.rollout,
        i + 1,
        record.waves.len()
    );
    let target = format!("{}, buckets {from}% to {upto}%", record.target.describe);
    let described = Described {
        action: &action,
        target: &target,
    };
    let written = write_retrying(client, keys, request, &described, &hosts).await?;
    let w = &mut record.waves[i];
    w.generation = written.generation;
    w.written_revision = written.first_revision();
    w.history = written.history_prefix();
    w.pending = hosts.len();
    w.state = WaveState::Watching;
    record.save(client, keys).await?;
    watch_wave(
        client,
        keys,
        record,
        i,
        &hosts,
        Some(fleet.online_at),
        !request.json,
    )
    .await
}

/// [`push::write`], again while etcd is overloaded (the previous wave's hosts may still
/// be writing their statuses). Safe to repeat: the same settings under a new
/// generation; a host written by a failed attempt gets them twice.
async fn write_retrying(
    client: &mut Client,
    keys: &Keys,
    request: &Request,
    described: &Described<'_>,
    hosts: &[String],
) -> anyhow::Result<push::Written> {
    let mut attempts = 0;
    loop {
        match push::write(client, keys, request, described, hosts).await {
            Err(e) if attempts < 5 && overloaded(&e) => {
                attempts += 1;
                eprintln!("hidsctl: etcd is overloaded ({e:#}); writing the wave again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            result => return result,
        }
    }
}

/// The error says etcd could not keep up.
fn overloaded(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let etcd = cause.downcast_ref::<etcd_client::Error>().or_else(|| {
            match cause.downcast_ref::<hids_control::writer::WriteError>() {
                Some(hids_control::writer::WriteError::Etcd(e)) => Some(e),
                _ => None,
            }
        });
        etcd.is_some_and(hids_control::overloaded)
    })
}

/// Follows wave `i`'s hosts from `revision` (or from a fresh read of every status)
/// until none is pending, failures cross the threshold, or the wave's time is up
/// (counted from its start: a resumed wave keeps its deadline); records the outcome.
async fn watch_wave(
    client: &mut Client,
    keys: &Keys,
    record: &mut Record,
    i: usize,
    hosts: &[String],
    revision: Option<i64>,
    show_progress: bool,
) -> anyhow::Result<()> {
    let releases = record.plugins.clone();
    let wave = &record.waves[i];
    let judge = Judge {
        releases: &releases,
        generation: wave.generation,
        written_revision: wave.written_revision,
    };
    let mut tally = WaveTally::new(hosts, judge, record.max_failure_percent);
    let left = record.wave_timeout().saturating_sub(wave.since_start());
    let deadline = tokio::time::Instant::now() + left;
    let progress = show_progress.then(|| {
        counting_bar(
            hosts.len() as u64,
            format!("wave {}/{} ({}%)", i + 1, record.waves.len(), wave.percent),
        )
    });
    let revision = match revision {
        Some(r) => r,
        None => push::read_all(client, keys, hosts, &mut tally).await?,
    };
    push::follow(
        client,
        keys,
        hosts,
        revision,
        deadline,
        &mut tally,
        progress.as_ref(),
    )
    .await?;
    if let Some(p) = progress {
        p.finish();
    }
    let over = tally.over_threshold();
    let counts = tally.counts;
    let failures = std::mem::take(&mut tally.failures);
    let waves = record.waves.len();
    let timeout = record.wave_timeout();
    let max = record.max_failure_percent;
    let w = &mut record.waves[i];
    w.set_counts(&counts);
    w.failures = failures;
    w.elapsed_secs = w.since_start().as_secs_f64();
    let name = format!("wave {}/{waves} ({}%)", i + 1, w.percent);
    if over {
        let failing = counts.failed + counts.rolled_back;
        w.state = WaveState::Halted;
        record.state = State::Halted;
        record.reason = Some(format!(
            "{name}: {failing} of {} host(s) failed or rolled back ({:.1}%), above \
             --max-failure-percent {max}",
            w.targets,
            failing as f64 * 100.0 / w.targets.max(1) as f64,
        ));
    } else if counts.pending > 0 {
        w.state = WaveState::TimedOut;
        record.state = State::TimedOut;
        record.reason = Some(format!(
            "{name}: {} of {} host(s) still pending after {} (offline, or still \
             downloading: see `hidsctl agents`); `hidsctl rollout status {} --continue --key K` \
             goes on",
            counts.pending,
            w.targets,
            humantime::format_duration(timeout),
            record.rollout
        ));
    } else {
        w.state = WaveState::Done;
    }
    record.save(client, keys).await
}

/// An interrupted rollout (`running` in the record): the wave in progress is watched
/// to its end; then the rollout waits for `--continue`.
async fn resume(
    client: &mut Client,
    keys: &Keys,
    record: &mut Record,
    json: bool,
) -> anyhow::Result<()> {
    let Some(i) = record.current_wave() else {
        record.state = State::Completed;
        return record.save(client, keys).await;
    };
    let name = format!("wave {}/{}", i + 1, record.waves.len());
    match record.waves[i].state {
        WaveState::Watching => {
            if !json {
                eprintln!(
                    "hidsctl: rollout {} was interrupted in {name}: following it again",
                    record.rollout
                );
            }
            let hosts = hosts_of_wave(client, keys, record, i).await?;
            watch_wave(client, keys, record, i, &hosts, None, !json).await?;
            if record.state != State::Running {
                return Ok(());
            }
            if record.current_wave().is_none() {
                record.state = State::Completed;
                return record.save(client, keys).await;
            }
            record.reason = Some(format!("{name} ended; --continue writes the next"));
        }
        WaveState::Writing => {
            record.reason = Some(format!(
                "interrupted while writing {name}; --continue writes it again"
            ));
        }
        _ => {
            record.reason = Some(format!("interrupted before {name}; --continue writes it"));
        }
    }
    record.state = State::Paused;
    record.save(client, keys).await
}

/// The hosts wave `i` was written to, from its history records.
async fn hosts_of_wave(
    client: &mut Client,
    keys: &Keys,
    record: &Record,
    i: usize,
) -> anyhow::Result<Vec<String>> {
    let wave = &record.waves[i];
    if wave.history.is_empty() {
        anyhow::bail!("rollout {}: wave {} has no history", record.rollout, i + 1);
    }
    let (all, _) = crate::fleet::get_all(client, &keys.history(&wave.history)).await?;
    let mut hosts = Vec::with_capacity(wave.targets);
    for (_, value, _) in all {
        let r: HistoryRecord = serde_json::from_slice(&value)?;
        hosts.extend(r.hosts);
    }
    if hosts.len() != wave.targets {
        eprintln!(
            "hidsctl: warning: rollout {} wave {}: {} host(s) in its history, {} targeted \
             (interrupted while writing?)",
            record.rollout,
            i + 1,
            hosts.len(),
            wave.targets
        );
    }
    Ok(hosts)
}
