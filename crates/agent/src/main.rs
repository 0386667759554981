//! `hids-agent`: the master process of the HIDS agent.
//!
//! It supervises plugins (each a child process speaking frames over its stdin/stdout),
//! forwards their events to the sinks, and reports its status. It holds no detection
//! logic. Without a control plane it runs standalone on built-in defaults.

mod cgroups;
mod config;
mod events;
mod guard;
mod logging;
mod pipeline;
mod plugins;
mod queue;
mod status;
mod supervisor;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hids_types::status::AgentStatus;
use hids_types::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, PluginSpec};
use crate::logging::LogLevel;
use crate::pipeline::PipelineCounters;
use crate::plugins::PluginManager;
use crate::supervisor::Context;
use hids_control::state::ControlState;

/// Exit code for a configuration the agent refuses to start with (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// From SIGTERM to exit, everything included (plugins, the pipeline's last delivery
/// and spooling): what the README and the systemd unit promise.
const STOP_BUDGET: Duration = Duration::from_millis(4800);
/// Of the stop budget, what is kept for the pipeline's last delivery and spooling.
const PIPELINE_AT_STOP: Duration = Duration::from_millis(1500);

/// HIDS agent: watches what runs on this host and reports it as ECS JSON events.
///
/// With no arguments it runs standalone on built-in defaults: the process plugin,
/// events as JSON lines on stdout, logs on stderr. Needs root (the kernel's process
/// events require CAP_NET_ADMIN).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (TOML); see packaging/agent.toml for every key.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level on stderr, overriding the config: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the running agent's status (from <state_dir>/status.json).
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
        /// Read the status from this directory instead of the config's state_dir.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check the configuration and print the plugins it would run, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return config_error(&e.to_string()),
        },
        None => Config::default(),
    };
    match cli.command {
        Some(Command::Status { json, state_dir }) => {
            let dir = state_dir.unwrap_or_else(|| config.state_dir.clone());
            match status::read(&dir) {
                Ok(s) if json => match serde_json::to_string_pretty(&s) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return fail(&e.into()),
                },
                Ok(s) => print!("{}", status::render(&s, config.status_interval_secs)),
                Err(e) => return fail(&e),
            }
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig) => match config.validate(&agent_dir()) {
            Ok(specs) => {
                for s in specs {
                    println!(
                        "{:<16} {:<8} {} {}",
                        s.name,
                        if s.enabled { "enabled" } else { "disabled" },
                        s.path.display(),
                        s.args.join(" ")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e.to_string()),
        },
        None => run(config, cli.log_level),
    }
}

fn config_error(msg: &str) -> ExitCode {
    eprintln!("hids-agent: configuration error:\n{msg}");
    ExitCode::from(EXIT_CONFIG)
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("hids-agent: {e:#}");
    ExitCode::FAILURE
}

/// Where built-in plugins live: next to this binary.
fn agent_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(mut config: Config, log_level: Option<String>) -> ExitCode {
    if let Some(level) = log_level {
        config.log_level = level;
    }
    let specs = match config.validate(&agent_dir()) {
        Ok(specs) => specs,
        Err(e) => return config_error(&e.to_string()),
    };
    let host_id = match config
        .host_id
        .clone()
        .map_or_else(hids_procfs::host::machine_id, Ok)
    {
        Ok(id) => id,
        Err(e) => {
            return config_error(&format!(
                "no host_id in the config and /etc/machine-id is unreadable ({e}); set host_id"
            ))
        }
    };
    let log = logging::init(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(agent(config, specs, host_id, log));
    // Whatever is still running (a plugin task past its deadline) is dropped, which
    // kills its child; never wait on it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn agent(
    config: Config,
    specs: Vec<PluginSpec>,
    host_id: String,
    log: LogLevel,
) -> anyhow::Result<()> {
    let hostname = hids_procfs::host::hostname();
    let state_dir = config.state_dir.clone();
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        tracing::warn!(
            "cannot create state_dir {}: {e}; status and the desired-state cache will not be written (set state_dir)",
            state_dir.display()
        );
    }
    let counters = Arc::new(PipelineCounters::default());
    let (events_tx, events_rx) =
        queue::channel(config.pipeline.queue_events, config.pipeline.queue_bytes);
    let outputs = build_outputs(&config, &host_id, &counters)?;
    let stop_by = pipeline::StopBy::default();
    let sink_thread = pipeline::start(
        events_rx,
        outputs,
        counters.clone(),
        events::Emitter::new(&host_id, &hostname, "pipeline"),
        hids_types::stagger::offset(&host_id, Duration::from_secs(60)),
        stop_by.clone(),
    )?;

    let agent_events =
        events::AgentEvents::new(&host_id, &hostname, events_tx.clone(), counters.clone());
    let cgroups = cgroups::Cgroups::detect();
    cgroups.sweep_stale();
    if specs.iter().any(|s| s.limits.any()) {
        tracing::info!("per-plugin limits: {}", cgroups.describe());
    }
    let ctx = Arc::new(Context {
        host_id: host_id.clone(),
        hostname: hostname.clone(),
        supervisor: config.supervisor.clone(),
        events: events_tx,
        cgroups: cgroups.clone(),
        cgroup_warned: std::sync::atomic::AtomicBool::new(false),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut manager = PluginManager::new(ctx.clone(), shutdown_rx.clone());
    drop(ctx);

    // The control plane, when configured: the cached last good state first, so the
    // agent runs on it whether or not etcd answers.
    let trusted = match &config.control {
        Some(c) => hids_control::TrustedKeys::load(&c.trusted_keys)?,
        None => hids_control::TrustedKeys::default(),
    };
    let mut control = if config.control.is_some() {
        ControlState::load(&state_dir, &trusted, &host_id)
    } else {
        ControlState::default()
    };
    let mut breaker = guard::Breaker::new(config.guard.clone());
    let mut sampler = guard::Sampler::new();
    let mut usage = guard::Usage::default();
    let mut agent_events = agent_events;
    let apply_all =
        |manager: &mut PluginManager, control: &ControlState, breaker: &mut guard::Breaker| {
            let (effective, warnings) = plugins::effective_specs(&specs, &control.body);
            for w in warnings {
                tracing::warn!("desired state: {w}");
            }
            if let Some(level) = &control.body.log_level {
                if let Err(e) = log.set(level) {
                    tracing::warn!("desired state: {e}");
                }
            }
            let wanted_guard = control
                .body
                .guard
                .clone()
                .unwrap_or_else(|| config.guard.clone());
            if *breaker.config() != wanted_guard {
                let problems = wanted_guard.problems("desired guard");
                if problems.is_empty() {
                    breaker.set_config(wanted_guard);
                } else {
                    tracing::warn!(
                        "desired state: {}; keeping the guard settings",
                        problems.join("; ")
                    );
                }
            }
            manager.apply(&effective, control.stopped || breaker.holding());
        };
    apply_all(&mut manager, &control, &mut breaker);

    let (mut status_publisher, status_rx) = hids_control::publish::StatusPublisher::new();
    let (updates_tx, mut updates_rx) = mpsc::channel(16);
    let mode = if config.control.is_some() {
        "managed"
    } else {
        "standalone"
    };
    if let Some(c) = &config.control {
        let session = hids_control::session::Session::new(
            hids_control::session::SessionConfig {
                etcd: c.etcd()?,
                keys: hids_control::Keys::new(&c.prefix),
                host_id: host_id.clone(),
                lease_ttl: Duration::from_secs(c.lease_ttl_secs),
                status_refresh: Duration::from_secs(c.status_refresh_secs),
                status_min_gap: Duration::from_millis(500),
            },
            trusted.clone(),
            control.applied_generation,
        );
        tokio::spawn(session.run(status_rx, updates_tx, shutdown_rx.clone()));
    } else {
        drop(updates_tx);
    }
    tracing::info!(
        "hids-agent {} started: host {host_id} ({hostname}), {mode}",
        env!("CARGO_PKG_VERSION"),
    );

    let started_at = Timestamp::now();
    let ips = hids_procfs::host::addresses();
    let snapshot = |manager: &PluginManager,
                    control: &ControlState,
                    guard: hids_types::guard::GuardStatus| AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host_id: host_id.clone(),
        hostname: hostname.clone(),
        pid: std::process::id(),
        mode: mode.to_owned(),
        labels: config.labels.clone(),
        ips: ips.clone(),
        applied_generation: control.applied_generation,
        desired_error: control.desired_error.clone(),
        desired_revision: control.desired_revision,
        stopped_by_command: control.stopped,
        started_at,
        updated_at: Timestamp::now(),
        plugins: manager.statuses(),
        pipeline: counters.status(),
        guard: Some(guard),
        cut: None,
    };
    let mut status_failed = false;
    let mut publish = |mut doc: AgentStatus| {
        // Cut before the file and etcd alike: a status over etcd's request limit is
        // refused on every write (see hids_types::status::STATUS_MAX_BYTES).
        doc.fit(hids_types::status::STATUS_MAX_BYTES);
        match status::write(&state_dir, &doc) {
            Ok(()) => status_failed = false,
            Err(e) if !status_failed => {
                status_failed = true;
                tracing::warn!("cannot write {}: {e}", status::path(&state_dir).display());
            }
            Err(_) => {}
        }
        // etcd is written at once only on a real change; counters and resource figures
        // ride along with the periodic refresh and go out in the stats events.
        status_publisher.publish(&doc);
    };
    publish(snapshot(&manager, &control, breaker.status(&usage)));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // Periodic work is phase-shifted by the host's stagger offset, so a fleet does not act
    // in the same second.
    let staggered = |period: Duration| {
        let mut t = tokio::time::interval_at(
            tokio::time::Instant::now() + hids_types::stagger::offset(&host_id, period),
            period,
        );
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut tick = staggered(Duration::from_secs(config.status_interval_secs));
    let mut guard_period = Duration::from_secs(breaker.config().interval_secs);
    let mut guard_tick = staggered(guard_period);
    let mut stats_tick = staggered(events::AGENT_STATS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => publish(snapshot(&manager, &control, breaker.status(&usage))),
            _ = stats_tick.tick() => agent_events.stats(&breaker.status(&usage)),
            _ = guard_tick.tick() => {
                let mut procs = vec![("agent".to_owned(), std::process::id())];
                procs.extend(manager.statuses().into_iter().filter_map(|p| Some((p.name, p.pid?))));
                usage = sampler.sample(&procs);
                let now = std::time::Instant::now();
                let transition = breaker.tick(now).or_else(|| breaker.sample(now, usage.cpu_percent, usage.rss_mb));
                if let Some(t) = transition {
                    let st = breaker.status(&usage);
                    match &t {
                        guard::Transition::Tripped(reason) => {
                            tracing::error!(
                                "resource guard tripped: {reason}; stopping every plugin for {} s (trip {})",
                                st.cooldown_secs, st.trips
                            );
                            agent_events.guard("guard_tripped", &st);
                        }
                        guard::Transition::Probing => {
                            tracing::warn!(
                                "resource guard: cooldown over, starting plugins again on probation for {} s",
                                breaker.config().probe_secs
                            );
                            agent_events.guard("guard_probing", &st);
                        }
                        guard::Transition::Recovered => {
                            tracing::info!("resource guard: probation passed; back to normal");
                            agent_events.guard("guard_recovered", &st);
                        }
                    }
                    apply_all(&mut manager, &control, &mut breaker);
                    publish(snapshot(&manager, &control, breaker.status(&usage)));
                }
                let period = Duration::from_secs(breaker.config().interval_secs);
                if period != guard_period {
                    guard_period = period;
                    guard_tick = staggered(period);
                }
            }
            Some(update) = updates_rx.recv() => {
                if let Some(actions) = control.take(update) {
                    apply_all(&mut manager, &control, &mut breaker);
                    for name in actions.restart {
                        if !manager.restart(&name) {
                            tracing::warn!("restart_plugin: no plugin {name:?} on this host");
                        }
                    }
                    if let Err(e) = control.save(&state_dir) {
                        tracing::warn!("cannot cache the desired state in {}: {e}", state_dir.display());
                    }
                    tracing::info!("applied desired state generation {}", control.applied_generation);
                }
                publish(snapshot(&manager, &control, breaker.status(&usage)));
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping plugins"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping plugins"); break; }
        }
    }

    let stopping = Instant::now();
    let _ = stop_by.set((stopping + STOP_BUDGET).into_std());
    let _ = shutdown_tx.send(true);
    // Each plugin gets its stop timeout; the agent must be gone within 5 s regardless,
    // and dropping a task's child kills it.
    // What the plugins may take leaves the pipeline at least PIPELINE_AT_STOP.
    let deadline = Duration::from_millis(config.supervisor.stop_timeout_ms + 500)
        .min(STOP_BUDGET.saturating_sub(PIPELINE_AT_STOP));
    if !manager.join(deadline).await {
        tracing::warn!("plugins did not stop in time; killed");
    }
    let _ = status::write(
        &state_dir,
        &snapshot(&manager, &control, breaker.status(&usage)),
    );
    cgroups.remove_all(&specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    // The pipeline ends once every sender of its queue is gone: the plugin tasks' (in
    // the manager) and the agent's own. It then declares where every run ended, gives
    // Kafka what is left of the budget and spools the rest; the process must not exit
    // under it, or what librdkafka holds is lost.
    drop(manager);
    drop(agent_events);
    let joined = tokio::task::spawn_blocking(move || sink_thread.join());
    let left = (stopping + STOP_BUDGET).saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, joined).await.is_err() {
        tracing::error!(
            "the pipeline did not finish within the stop budget; events it held may be lost"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens every configured sink and the spool. Done before any plugin starts: a sink
/// that cannot be opened is an error the operator sees at once.
fn build_outputs(
    config: &Config,
    host_id: &str,
    counters: &PipelineCounters,
) -> anyhow::Result<pipeline::Outputs> {
    use crate::config::SinkConfig;
    let mut outputs = pipeline::Outputs {
        local: Vec::new(),
        kafka: None,
        spool: None,
        fsync_interval: Duration::from_millis(
            config.spool.as_ref().map_or(1000, |s| s.fsync_interval_ms),
        ),
    };
    let sinks = config
        .sinks
        .clone()
        .unwrap_or_else(|| vec![SinkConfig::Stdout]);
    for sink in sinks {
        match sink {
            SinkConfig::Stdout => outputs.local.push(Box::new(
                hids_sink::StdoutSink::new().context("stdout is not open")?,
            )),
            SinkConfig::File {
                path,
                max_bytes,
                keep,
            } => outputs.local.push(Box::new(
                hids_sink::FileSink::open(&path, max_bytes, keep)
                    .with_context(|| format!("cannot open the file sink {}", path.display()))?,
            )),
            SinkConfig::Kafka(cfg) => {
                outputs.kafka = Some(
                    hids_sink::kafka::KafkaSink::new(cfg, host_id)
                        .context("the kafka sink's settings are refused by librdkafka")?,
                );
            }
        }
    }
    if let Some(sc) = &config.spool {
        let (spool, recovery) =
            hids_sink::spool::Spool::open(&sc.dir, sc.max_bytes, sc.segment_bytes)
                .with_context(|| format!("cannot open the spool in {}", sc.dir.display()))?;
        if recovery.records > 0 {
            tracing::info!(
                "spool: {} event(s) in {} segment(s) from before the last stop will be sent",
                recovery.records,
                recovery.segments
            );
        }
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                "spool: cut {} byte(s) of a record whose write was interrupted (a crash); that one event is lost",
                recovery.truncated_bytes
            );
            counters.count_drop("spool_partial_record", recovery.truncated_segments);
        }
        outputs.spool = Some(spool);
    }
    Ok(outputs)
}
