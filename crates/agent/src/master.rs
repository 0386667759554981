//! The master: what `hids-agent` runs once its configuration is checked. It starts the
//! pipeline, the plugins and, when configured, the control-plane session; then it
//! serves one loop (status ticks, the resource guard, desired-state updates, signals)
//! until SIGTERM or SIGINT, and stops within the stop budget.

use std::sync::Arc;
use std::time::Duration;

use hids_control::publish::StatusPublisher;
use hids_control::session::Update;
use hids_control::state::ControlState;
use hids_control::TrustedKeys;
use hids_types::event::{Host, Labels};
use hids_types::guard::GuardStatus;
use hids_types::status::AgentStatus;
use hids_types::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

use crate::cgroups::Cgroups;
use crate::config::{Config, PluginSpec};
use crate::events::{AgentEvents, Emitter, Unqueued, AGENT_STATS_EVERY};
use crate::guard::{Breaker, Sampler, Transition, Usage};
use crate::internal_events::guard::{GuardProbing, GuardRecovered, GuardTripped};
use crate::logging::LogLevel;
use crate::pipeline::{self, Outputs, PipelineCounters};
use crate::plugins::{self, PluginManager};
use crate::queue::{self, EventSender};
use crate::status;
use crate::supervisor::Context;
use crate::update::launch::Launch;
use crate::update::{launch, Next, Updater};

/// From SIGTERM to exit, everything included (plugins, the pipeline's last delivery
/// and spooling): what the README and the systemd unit promise.
const STOP_BUDGET: Duration = Duration::from_millis(4800);
/// Of the stop budget, what is kept for the pipeline's last delivery and spooling.
const PIPELINE_AT_STOP: Duration = Duration::from_millis(1500);

/// How the master's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or SIGINT.
    Stopped,
    /// A new build of the agent is installed, or the running one failed its health
    /// gate: the launcher must choose again (`launch::reexec`).
    Relaunch,
}

/// The running agent build's health gate (docs/updates.md): healthy once it has run
/// `update.healthy_after_secs` and, when managed, reached the control plane; rolled
/// back when not healthy within `update.grace_secs`.
struct AgentTrial {
    version: String,
    since: Instant,
}

impl AgentTrial {
    /// The updated build this process runs (its version), and its trial when the
    /// launcher started it on one.
    fn of(launched: Launch, updater: &mut Updater) -> (Option<String>, Option<AgentTrial>) {
        let (build, running_dir) = match launched {
            Launch::Build { version, dir } => (Some(version), Some(dir)),
            Launch::Installed => (None, None),
        };
        let on_trial = updater.agent_running(running_dir.as_deref());
        let trial = build.as_ref().filter(|_| on_trial).map(|v| AgentTrial {
            version: v.clone(),
            since: Instant::now(),
        });
        (build, trial)
    }
}

/// Who this agent is, as its status says.
struct Identity {
    host_id: String,
    hostname: String,
    /// `managed` (with a control plane) or `standalone`.
    mode: &'static str,
    ips: Vec<String>,
    started_at: Timestamp,
}

pub struct Master {
    config: Config,
    /// The plugins of the local configuration, before any desired state.
    specs: Vec<PluginSpec>,
    me: Identity,
    log: LogLevel,
    manager: PluginManager,
    /// Builds the desired state names: downloads, installs, health gates, rollbacks.
    updater: Updater,
    /// The updated agent build running (its version), when the launcher started one.
    build: Option<String>,
    agent_trial: Option<AgentTrial>,
    /// The control-plane session registered at least once (the agent build's gate).
    connected: bool,
    /// Set to leave the loop for the launcher.
    relaunch: bool,
    control: ControlState,
    breaker: Breaker,
    sampler: Sampler,
    usage: Usage,
    agent_events: AgentEvents,
    counters: Arc<PipelineCounters>,
    cgroups: Cgroups,
    publisher: StatusPublisher,
    /// The status file could not be written last time (logged once per failing spell).
    status_failed: bool,
    updates: mpsc::Receiver<Update>,
    shutdown: watch::Sender<bool>,
    pipeline: pipeline::Handle,
}

impl Master {
    /// Opens the outputs and starts the pipeline, the plugins and the control-plane
    /// session, on the cached last good desired state when there is one.
    ///
    /// # Errors
    /// When an output, the trusted keys or the etcd credentials cannot be used.
    pub fn start(
        config: Config,
        specs: Vec<PluginSpec>,
        host_id: String,
        log: LogLevel,
        launched: Launch,
    ) -> anyhow::Result<Master> {
        let hostname = hids_procfs::host::hostname();
        make_state_dir(&config);
        let counters = Arc::new(PipelineCounters::default());
        let unqueued = Arc::new(Unqueued::default());
        let host = Host {
            id: host_id.as_str().into(),
            hostname: hostname.as_str().into(),
        };
        let labels: Labels = Arc::new(config.labels.clone());
        let (events, pipeline) = start_pipeline(
            &config,
            Emitter::new(host.clone(), labels.clone(), "pipeline"),
            &counters,
            &unqueued,
        )?;
        let agent_events = AgentEvents::new(
            Emitter::new(host, labels.clone(), "agent"),
            events.clone(),
            unqueued,
        );
        let cgroups = Cgroups::detect();
        cgroups.sweep_stale();
        if specs.iter().any(|s| s.limits.any()) {
            tracing::info!("per-plugin limits: {}", cgroups.describe());
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Context {
            host_id: host_id.clone(),
            hostname: hostname.clone(),
            labels,
            supervisor: config.supervisor.clone(),
            events,
            cgroups: cgroups.clone(),
            cgroup_warned: std::sync::atomic::AtomicBool::new(false),
            plugin_state: config.state_dir.join("plugins"),
        };
        let manager = PluginManager::new(Arc::new(ctx), shutdown_rx.clone());
        // The control plane, when configured: the cached last good state first, so the
        // agent runs on it whether or not etcd answers.
        let (control, publisher, updates) = join_control_plane(&config, &host_id, shutdown_rx)?;
        let mode = if config.control.is_some() {
            "managed"
        } else {
            "standalone"
        };
        let mut updater = Updater::new(&config.state_dir, &host_id, config.update.clone());
        let (build, agent_trial) = AgentTrial::of(launched, &mut updater);
        let mut master = Master {
            updater,
            build,
            agent_trial,
            connected: false,
            relaunch: false,
            breaker: Breaker::new(config.guard.clone()),
            config,
            specs,
            me: Identity {
                host_id,
                hostname,
                mode,
                ips: hids_procfs::host::addresses(),
                started_at: Timestamp::now(),
            },
            log,
            manager,
            control,
            sampler: Sampler::new(),
            usage: Usage::default(),
            agent_events,
            counters,
            cgroups,
            publisher,
            status_failed: false,
            updates,
            shutdown,
            pipeline,
        };
        master.apply_all();
        tracing::info!(
            "hids-agent {} started: host {} ({}), {mode}",
            master.version(),
            master.me.host_id,
            master.me.hostname,
        );
        master.publish();
        Ok(master)
    }

    /// Serves until SIGTERM or SIGINT, or until the launcher must choose the agent's
    /// build again; then stops.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub async fn run(mut self) -> anyhow::Result<Ending> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = self.staggered(Duration::from_secs(self.config.status_interval_secs));
        let mut guard_period = Duration::from_secs(self.breaker.config().interval_secs);
        let mut guard_tick = self.staggered(guard_period);
        let mut stats_tick = self.staggered(AGENT_STATS_EVERY);
        let mut update_tick = tokio::time::interval(Duration::from_secs(1));
        update_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.publish(),
                _ = update_tick.tick() => self.update_tick(),
                Some(event) = self.updater.events.recv() => {
                    match self.updater.finish(event) {
                        Next::Nothing => {}
                        Next::Reapply => self.apply_all(),
                        Next::Restart => self.relaunch = true,
                    }
                    self.publish();
                }
                _ = stats_tick.tick() => self.agent_events.stats(&self.guard_status()),
                _ = guard_tick.tick() => {
                    self.guard_sample();
                    let period = Duration::from_secs(self.breaker.config().interval_secs);
                    if period != guard_period {
                        guard_period = period;
                        guard_tick = self.staggered(period);
                    }
                }
                Some(update) = self.updates.recv() => self.take_update(update),
                _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping plugins"); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT: stopping plugins"); break; }
            }
            if self.relaunch {
                tracing::info!("stopping for the launcher to start the agent's chosen build");
                break;
            }
        }
        let ending = if self.relaunch {
            Ending::Relaunch
        } else {
            Ending::Stopped
        };
        self.stop().await;
        Ok(ending)
    }

    /// The version this process runs as: an updated build's, or the installed one's.
    fn version(&self) -> String {
        self.build
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
    }

    /// Makes the plugins, the log level and the guard match the local configuration as
    /// the desired state overrides it; every plugin held stopped while the guard holds
    /// or the control plane says stop.
    fn apply_all(&mut self) {
        let body = &self.control.body;
        let (mut effective, warnings) = plugins::effective_specs(&self.specs, body);
        self.updater.want(body);
        self.updater.patch(&mut effective);
        for w in warnings {
            tracing::warn!("desired state: {w}");
        }
        if let Some(level) = &body.log_level {
            if let Err(e) = self.log.set(level) {
                tracing::warn!("desired state: {e}");
            }
        }
        let wanted_guard = body
            .guard
            .clone()
            .unwrap_or_else(|| self.config.guard.clone());
        if *self.breaker.config() != wanted_guard {
            let problems = wanted_guard.problems("desired guard");
            if problems.is_empty() {
                self.breaker.set_config(wanted_guard);
            } else {
                tracing::warn!(
                    "desired state: {}; keeping the guard settings",
                    problems.join("; ")
                );
            }
        }
        let hold = self.control.stopped || self.breaker.holding();
        self.manager.apply(&effective, hold);
    }

    /// One guard sample of the agent and every plugin; a transition is emitted, applied
    /// and published at once.
    fn guard_sample(&mut self) {
        let mut procs = vec![("agent".to_owned(), std::process::id())];
        procs.extend(
            self.manager
                .statuses()
                .into_iter()
                .filter_map(|p| Some((p.name, p.pid?))),
        );
        self.usage = self.sampler.sample(&procs);
        let now = std::time::Instant::now();
        let (cpu, rss) = (self.usage.cpu_percent, self.usage.rss_mb);
        let Some(transition) = self
            .breaker
            .tick(now)
            .or_else(|| self.breaker.sample(now, cpu, rss))
        else {
            return;
        };
        let status = self.guard_status();
        let events = &mut self.agent_events;
        match &transition {
            Transition::Tripped(reason) => GuardTripped {
                reason,
                status: &status,
            }
            .emit(events),
            Transition::Probing => GuardProbing {
                probe_secs: self.breaker.config().probe_secs,
                status: &status,
            }
            .emit(events),
            Transition::Recovered => GuardRecovered { status: &status }.emit(events),
        }
        self.apply_all();
        self.publish();
    }

    /// Downloads whose turn came, and the health gate of builds on trial.
    fn update_tick(&mut self) {
        let mut changed = self.updater.poll();
        if self.updater.judging() {
            changed |= self.updater.observe(&self.manager.statuses());
        }
        changed |= self.judge_agent_build();
        // Only a desired state that was applied, with the session up (not only the cache),
        // speaks for the agent's build: standalone, or before, whatever the launcher
        // chose runs on.
        let named_by_control = self.control.applied_generation > 0 && self.connected;
        if self
            .updater
            .agent_unnamed(self.build.is_some() && named_by_control)
        {
            self.relaunch = true;
        }
        if changed {
            self.apply_all();
            self.publish();
        }
    }

    /// The running agent build's health gate; true when it was decided.
    fn judge_agent_build(&mut self) -> bool {
        let Some(trial) = &self.agent_trial else {
            return false;
        };
        let u = &self.config.update;
        let up = trial.since.elapsed();
        let reached = self.config.control.is_none() || self.connected;
        let version = trial.version.clone();
        if up >= Duration::from_secs(u.healthy_after_secs) && reached {
            tracing::info!("agent build {version} passed its health gate");
            self.updater.agent_judged(&version, None);
            launch::forget_starts(&self.config.state_dir);
        } else if up >= Duration::from_secs(u.grace_secs) {
            // Up all along but never reached etcd: maybe etcd is away, maybe the build
            // cannot speak to it. Rolled back either way (a build that cannot be steered
            // is the worst outcome), and tried again once an agent of this host has
            // reached etcd.
            let reason = format!("did not reach the control plane within {}s", u.grace_secs);
            self.updater.agent_judged(&version, Some((&reason, true)));
            launch::forget_starts(&self.config.state_dir);
            self.relaunch = true;
        } else {
            return false;
        }
        self.agent_trial = None;
        true
    }

    /// What the control-plane session says: a new desired state is applied and cached.
    fn take_update(&mut self, update: Update) {
        if matches!(update, Update::Connected) {
            self.connected = true;
            self.updater.connected();
            self.apply_all();
        }
        if let Some(actions) = self.control.take(update) {
            for name in &actions.restart {
                self.updater.forget_bad(name);
            }
            self.apply_all();
            for name in actions.restart {
                if !self.manager.restart(&name) {
                    tracing::warn!("restart_plugin: no plugin {name:?} on this host");
                }
            }
            for s in actions.snapshot {
                let request = hids_wire::Control::Snapshot {
                    id: s.command_id.clone(),
                };
                if let Err(why) = self.manager.request(&s.plugin, request) {
                    let (id, plugin) = (s.command_id, s.plugin);
                    tracing::warn!("command {id}: no snapshot from plugin {plugin:?}: {why}");
                }
            }
            let state_dir = &self.config.state_dir;
            if let Err(e) = self.control.save(state_dir) {
                tracing::warn!(
                    "cannot cache the desired state in {}: {e}",
                    state_dir.display()
                );
            }
            tracing::info!(
                "applied desired state generation {}",
                self.control.applied_generation
            );
        }
        self.publish();
    }

    fn guard_status(&self) -> GuardStatus {
        self.breaker.status(&self.usage)
    }

    fn snapshot(&self) -> AgentStatus {
        let mut status = AgentStatus {
            version: self.version(),
            host_id: self.me.host_id.clone(),
            hostname: self.me.hostname.clone(),
            pid: std::process::id(),
            mode: self.me.mode.to_owned(),
            labels: self.config.labels.clone(),
            ips: self.me.ips.clone(),
            applied_generation: self.control.applied_generation,
            desired_error: self.control.desired_error.clone(),
            desired_revision: self.control.desired_revision,
            stopped_by_command: self.control.stopped,
            started_at: self.me.started_at,
            updated_at: Timestamp::now(),
            plugins: self.plugin_statuses(),
            pipeline: self.counters.status(),
            guard: Some(self.guard_status()),
            cut: None,
            update: None,
            update_error: None,
            rolled_back: None,
        };
        self.updater.annotate_agent(&mut status);
        status
    }

    fn plugin_statuses(&self) -> Vec<hids_types::status::PluginStatus> {
        let mut plugins = self.manager.statuses();
        self.updater.annotate(&mut plugins);
        plugins
    }

    /// The status, to the file and to the session.
    fn publish(&mut self) {
        let mut doc = self.snapshot();
        // Cut before the file and etcd alike: a status over etcd's request limit is
        // refused on every write (see hids_types::status::STATUS_MAX_BYTES).
        doc.fit(hids_types::status::STATUS_MAX_BYTES);
        let state_dir = &self.config.state_dir;
        match status::write(state_dir, &doc) {
            Ok(()) => self.status_failed = false,
            Err(e) if !self.status_failed => {
                self.status_failed = true;
                tracing::warn!("cannot write {}: {e}", status::path(state_dir).display());
            }
            Err(_) => {}
        }
        // etcd is written at once only on a real change; counters and resource figures
        // ride along with the periodic refresh and go out in the stats events.
        self.publisher.publish(doc);
    }

    /// Periodic work is phase-shifted by the host's stagger offset, so a fleet does not
    /// act in the same second.
    fn staggered(&self, period: Duration) -> Interval {
        let offset = hids_types::stagger::offset(&self.me.host_id, period);
        let mut t = tokio::time::interval_at(Instant::now() + offset, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    /// Stops the plugins, then the pipeline, within the stop budget.
    async fn stop(mut self) {
        let stopping = Instant::now();
        self.pipeline.stop_by((stopping + STOP_BUDGET).into_std());
        let _ = self.shutdown.send(true);
        // Each plugin gets its stop timeout; the agent must be gone within 5 s regardless,
        // and dropping a task's child kills it.
        // What the plugins may take leaves the pipeline at least PIPELINE_AT_STOP.
        let deadline = Duration::from_millis(self.config.supervisor.stop_timeout_ms + 500)
            .min(STOP_BUDGET.saturating_sub(PIPELINE_AT_STOP));
        if !self.manager.join(deadline).await {
            tracing::warn!("plugins did not stop in time; killed");
        }
        let _ = status::write(&self.config.state_dir, &self.snapshot());
        let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        self.cgroups.remove_all(&names);
        // The pipeline ends once every sender of its queue is gone: the plugin tasks' (in
        // the manager) and the agent's own. It then declares where every run ended, gives
        // Kafka what is left of the budget and spools the rest; the process must not exit
        // under it, or what librdkafka holds is lost.
        let Master {
            manager,
            agent_events,
            pipeline,
            ..
        } = self;
        drop(manager);
        drop(agent_events);
        let left = (stopping + STOP_BUDGET).saturating_duration_since(Instant::now());
        if !pipeline.join(left).await {
            tracing::error!(
                "the pipeline did not finish within the stop budget; events it held may be lost"
            );
        }
        tracing::info!("stopped");
    }
}

fn make_state_dir(config: &Config) {
    if let Err(e) = std::fs::create_dir_all(&config.state_dir) {
        tracing::warn!(
            "cannot create state_dir {}: {e}; status and the desired-state cache will not be written (set state_dir)",
            config.state_dir.display()
        );
    }
}

/// Opens the outputs and starts the pipeline thread; returns the sending side of its
/// queue.
fn start_pipeline(
    config: &Config,
    emitter: Emitter,
    counters: &Arc<PipelineCounters>,
    unqueued: &Arc<Unqueued>,
) -> anyhow::Result<(EventSender, pipeline::Handle)> {
    let (events, events_rx) =
        queue::channel(config.pipeline.queue_events, config.pipeline.queue_bytes);
    let host_id = emitter.host_id().to_owned();
    let outputs = Outputs::open(config, &host_id, counters)?;
    let handle = pipeline::start(
        events_rx,
        outputs,
        counters.clone(),
        unqueued.clone(),
        emitter,
        hids_types::stagger::offset(&host_id, Duration::from_secs(60)),
    )?;
    Ok((events, handle))
}

/// The cached last good desired state (so the agent runs on it whether or not etcd
/// answers), the status publisher and the session's updates.
///
/// # Errors
/// When the trusted keys or the etcd credentials cannot be used.
fn join_control_plane(
    config: &Config,
    host_id: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(ControlState, StatusPublisher, mpsc::Receiver<Update>)> {
    let (trusted, control) = match &config.control {
        Some(c) => {
            let trusted = TrustedKeys::load(&c.trusted_keys)?;
            let control = ControlState::load(&config.state_dir, &trusted, host_id);
            (trusted, control)
        }
        None => (TrustedKeys::default(), ControlState::default()),
    };
    let (publisher, updates) = connect(
        config,
        host_id,
        trusted,
        control.applied_generation,
        shutdown,
    )?;
    Ok((control, publisher, updates))
}

/// The status publisher and the updates from the control-plane session, started here
/// when configured (standalone, no update ever comes).
///
/// # Errors
/// When the etcd credentials cannot be used.
fn connect(
    config: &Config,
    host_id: &str,
    trusted: TrustedKeys,
    applied_generation: u64,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(StatusPublisher, mpsc::Receiver<Update>)> {
    let (publisher, status_rx) = StatusPublisher::new();
    let (updates_tx, updates_rx) = mpsc::channel(16);
    if let Some(c) = &config.control {
        let session = hids_control::session::Session::new(
            hids_control::session::SessionConfig {
                etcd: c.etcd()?,
                keys: hids_control::Keys::new(&c.prefix),
                host_id: host_id.to_owned(),
                lease_ttl: Duration::from_secs(c.lease_ttl_secs),
                status_refresh: Duration::from_secs(c.status_refresh_secs),
                status_min_gap: Duration::from_millis(500),
            },
            trusted,
            applied_generation,
        );
        tokio::spawn(session.run(status_rx, updates_tx, shutdown));
    }
    Ok((publisher, updates_rx))
}
