//! Self-update: builds named by the signed desired state, downloaded, verified against
//! the signed hash before anything else, installed in versioned directories under
//! `state_dir`, switched atomically, and rolled back by the agent itself when the new
//! build fails its health gate (docs/updates.md).
//!
//! The [`Updater`] follows one [`Track`] per plugin the desired state names a build for.
//! It never blocks the master's loop: downloads run as tasks and report back through
//! [`Updater::events`]; the health gate is judged from the supervisor's plugin statuses
//! once a second ([`Updater::observe`]).

pub mod download;
mod gate;
pub mod launch;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hids_types::desired::{DesiredBody, DesiredPlugin, Release};
use hids_types::stagger::Backoff;
use hids_types::status::PluginStatus;
use hids_types::update::{Rollback, UpdatePhase, UpdateStatus};
use hids_types::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{PluginSpec, UpdateConfig};
use download::{ClientSettings, DownloadError, Downloader, FailureKind, Fetched};
use gate::{Gate, Verdict};
use store::Slot;

/// What the master does after the updater took a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// The plugins' builds changed: apply them again.
    Reapply,
    /// A new build of the agent itself is installed: stop, and let the launcher start it.
    Restart,
}

/// Download reports waiting for the master's loop, at most (one per plugin is typical).
const EVENT_QUEUE: usize = 64;

/// What a download task reports.
pub struct JobEvent {
    name: String,
    /// Which job: a report of a job since aborted (the entry changed) is ignored.
    job: u64,
    what: JobWhat,
}

enum JobWhat {
    /// This host's turn came: the transfer began.
    Downloading,
    Done(Result<Fetched, DownloadError>),
}

/// One plugin's updates.
struct Track {
    slot: Slot,
    /// The desired state names a build for this plugin (valid or not): the installed
    /// current build runs instead of the configured one.
    managed: bool,
    /// The entry as last taken, to see whether a new document changed it.
    entry: Option<DesiredPlugin>,
    /// The valid build it names.
    named: Option<Release>,
    /// The installed current build's executable, re-hashed when it was chosen.
    verified: Option<(store::Build, PathBuf)>,
    status: Option<UpdateStatus>,
    error: Option<String>,
    rolled_back: Option<Rollback>,
    job: Option<JoinHandle<()>>,
    /// The id of the job in `job` (ids only grow).
    job_id: u64,
    /// The download in flight resumed bytes an earlier attempt left.
    resumed: bool,
    /// The agent's slot only: the build directory this process runs (None: installed).
    running: Option<String>,
    next_try: Option<Instant>,
    retry: Backoff,
    gate: Option<Gate>,
}

impl Track {
    fn set_phase(&mut self, target: &str, phase: UpdatePhase) {
        if self
            .status
            .as_ref()
            .is_some_and(|s| s.phase == phase && s.target == target)
        {
            return;
        }
        self.status = Some(UpdateStatus {
            target: target.to_owned(),
            phase,
            since: Timestamp::now(),
        });
    }

    /// Stops a download in flight or planned. A build on trial stays on trial: its
    /// gate keeps judging what runs, whatever the desired state names next.
    fn cancel(&mut self) {
        if let Some(job) = self.job.take() {
            job.abort();
        }
        self.next_try = None;
    }

    /// Starts judging the installed current build when it is on trial (and not judged
    /// already).
    fn judge_current(&mut self) {
        if self.slot.name() == launch::AGENT_SLOT {
            return; // the running agent judges itself (master::agent_gate)
        }
        let on_trial = self.slot.manifest.trial;
        match &self.verified {
            Some((build, path)) if on_trial => {
                if self.gate.as_ref().is_none_or(|g| !g.is_for(path)) {
                    self.gate = Some(Gate::new(&build.version, path));
                }
            }
            _ => self.gate = None,
        }
    }

    fn choose_current(&mut self) {
        self.verified = self.slot.verified_current();
        self.judge_current();
    }
}

pub struct Updater {
    root: PathBuf,
    host_id: String,
    config: UpdateConfig,
    downloader: Option<Arc<Downloader>>,
    tracks: BTreeMap<String, Track>,
    next_job: u64,
    events_tx: mpsc::Sender<JobEvent>,
    /// Download reports, for the master's loop to pass to [`Updater::finish`].
    pub events: mpsc::Receiver<JobEvent>,
}

impl Updater {
    /// Installed builds live under `<state_dir>/versions/<plugin>/`.
    pub fn new(state_dir: &std::path::Path, host_id: &str, config: UpdateConfig) -> Updater {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        Updater {
            root: state_dir.join("versions"),
            host_id: host_id.to_owned(),
            config,
            downloader: None,
            tracks: BTreeMap::new(),
            next_job: 1,
            events_tx,
            events,
        }
    }

    /// Takes the desired state's plugin entries: a build newly named is scheduled for
    /// download at this host's turn, an entry that no longer names one hands the plugin
    /// back to its configured build. Entries that did not change change nothing, so this
    /// runs on every apply.
    pub fn want(&mut self, body: &DesiredBody) {
        for entry in &body.plugins {
            // The name becomes a directory: a bad one never gets near the file system
            // (effective_specs has warned about it).
            if hids_types::desired::plugin_name_problem(&entry.name).is_some() {
                continue;
            }
            let track = track_of(&mut self.tracks, &self.root, &self.host_id, &entry.name);
            if track.entry.as_ref() == Some(entry) {
                continue;
            }
            track.entry = Some(entry.clone());
            take_entry(track, entry, &self.host_id, &self.config);
        }
        let agent_entry = body.agent.as_deref().map(agent_entry).unwrap_or_default();
        let track = track_of(
            &mut self.tracks,
            &self.root,
            &self.host_id,
            launch::AGENT_SLOT,
        );
        if track.entry.as_ref() != Some(&agent_entry) {
            track.entry = Some(agent_entry.clone());
            take_entry(track, &agent_entry, &self.host_id, &self.config);
        }
        for (name, track) in &mut self.tracks {
            if name == launch::AGENT_SLOT {
                continue;
            }
            if track.entry.is_some() && !body.plugins.iter().any(|e| &e.name == name) {
                track.entry = None;
                take_entry(
                    track,
                    &DesiredPlugin::default(),
                    &self.host_id,
                    &self.config,
                );
            }
        }
    }

    fn track(&mut self, name: &str) -> &mut Track {
        track_of(&mut self.tracks, &self.root, &self.host_id, name)
    }

    /// An operator's `restart_plugin`: bad marks of this plugin are forgotten, so the
    /// build the desired state names is tried again.
    pub fn forget_bad(&mut self, name: &str) {
        if let Some(track) = self.tracks.get_mut(name) {
            if let Err(e) = track.slot.forget_bad_except(None) {
                tracing::warn!("plugin {name}: cannot rewrite its installed-builds manifest: {e}");
            }
            track.entry = None; // taken again at the next apply
            track.rolled_back = None;
        }
    }

    /// Starts the downloads whose turn has come. True when a status changed.
    pub fn poll(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        let names: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.job.is_none() && t.next_try.is_some_and(|at| at <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            changed |= self.start_download(&name);
        }
        changed
    }

    fn start_download(&mut self, name: &str) -> bool {
        let downloader = self.downloader();
        let default_max = self.config.max_bytes;
        let events = self.events_tx.clone();
        let job = self.next_job;
        self.next_job += 1;
        let track = self.track(name);
        track.next_try = None;
        let Some(release) = track.named.clone() else {
            return false;
        };
        let failed = |track: &mut Track, why: String| {
            track.error = Some(why);
            track.set_phase(&release.version, UpdatePhase::Failed);
            track.next_try = Some(Instant::now() + track.retry.failed());
            true
        };
        // Checked again at every attempt: a retry after the entry expired starts nothing.
        if let Some(why) = expired(&release) {
            track.error = Some(why);
            track.set_phase(&release.version, UpdatePhase::Failed);
            return true;
        }
        let downloader = match downloader {
            Ok(d) => d,
            Err(e) => return failed(track, e.to_string()),
        };
        if let Err(e) = track.slot.make_dir() {
            return failed(
                track,
                format!("cannot make {}: {e}", track.slot.dir().display()),
            );
        }
        let sha = release.sha256.to_ascii_lowercase();
        track.slot.prune(Some(&sha));
        let partial = track.slot.partial_path(&sha);
        track.resumed = std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0);
        track.job_id = job;
        let name = name.to_owned();
        track.job = Some(tokio::spawn(async move {
            let report = |what| JobEvent {
                name: name.clone(),
                job,
                what,
            };
            let _ = events.send(report(JobWhat::Downloading)).await;
            let max = release.max_bytes.unwrap_or(default_max);
            let result = downloader
                .fetch(&release.url, &release.sha256, max, &partial)
                .await;
            let _ = events.send(report(JobWhat::Done(result))).await;
        }));
        false
    }

    fn downloader(&mut self) -> Result<Arc<Downloader>, DownloadError> {
        if let Some(d) = &self.downloader {
            return Ok(d.clone());
        }
        let d = Arc::new(Downloader::new(ClientSettings {
            connect_timeout: Duration::from_secs(self.config.connect_timeout_secs),
            read_timeout: Duration::from_secs(self.config.read_timeout_secs),
            ..ClientSettings::default()
        })?);
        self.downloader = Some(d.clone());
        Ok(d)
    }

    /// A download's report: what the master must do about it.
    pub fn finish(&mut self, event: JobEvent) -> Next {
        let Some(track) = self.tracks.get_mut(&event.name) else {
            return Next::Nothing;
        };
        let Some(release) = track.named.clone() else {
            return Next::Nothing;
        };
        if track.job.is_none() || event.job != track.job_id {
            return Next::Nothing; // a job aborted since (the entry changed)
        }
        match event.what {
            JobWhat::Downloading => {
                track.set_phase(&release.version, UpdatePhase::Downloading);
                Next::Nothing
            }
            JobWhat::Done(result) => {
                track.job = None;
                match installed(track, &event.name, &release, result) {
                    false => Next::Nothing,
                    true if event.name == launch::AGENT_SLOT => Next::Restart,
                    true => Next::Reapply,
                }
            }
        }
    }

    /// The running agent build (`running`: its directory in the slot, from the launcher)
    /// passed its health gate, or failed it for `reason`. A failed one is rolled back
    /// here and the master restarts into the launcher's next choice; `until_connected`:
    /// it failed only for not reaching the control plane, so it is tried again once an
    /// agent of this host has (an etcd outage must not brand a good build).
    pub fn agent_judged(&mut self, version: &str, failure: Option<(&str, bool)>) {
        let track = self.track(launch::AGENT_SLOT);
        match failure {
            None => {
                if let Err(e) = track.slot.confirm() {
                    tracing::warn!("cannot record agent build {version} as healthy: {e}");
                }
                if track.named.as_ref().is_none_or(|r| r.version == version) {
                    track.set_phase(version, UpdatePhase::Healthy);
                }
            }
            Some((reason, until_connected)) => {
                roll_back(track, "agent", reason, until_connected);
            }
        }
    }

    /// What the launcher started, against the agent's installed builds: true when this
    /// process is the current build on trial (until [`Updater::agent_judged`]). When the
    /// launcher declined to start the current build, the status says so.
    pub fn agent_running(&mut self, running_dir: Option<&str>) -> bool {
        let track = self.track(launch::AGENT_SLOT);
        track.running = running_dir.map(str::to_owned);
        let current = track.slot.manifest.current.clone();
        match (running_dir, current) {
            (Some(dir), Some(build)) if build.dir == dir => {
                if track.slot.manifest.trial {
                    track.set_phase(&build.version, UpdatePhase::Trial);
                }
                track.slot.manifest.trial
            }
            (None, Some(build)) => {
                track.error = Some(not_started(&build.version));
                track.set_phase(&build.version, UpdatePhase::Failed);
                false
            }
            _ => false,
        }
    }

    /// The control plane answered: builds rolled back only for not reaching it are
    /// tried again.
    pub fn connected(&mut self) {
        for (name, track) in &mut self.tracks {
            match track.slot.forget_unreached() {
                Ok(true) => track.entry = None, // taken again at the next apply
                Ok(false) => {}
                Err(e) => tracing::warn!("{name}: cannot rewrite its manifest: {e}"),
            }
        }
    }

    /// The desired state names no agent build while an updated one runs: the installed
    /// binary is to run again (also how a package upgrade takes over). True when the
    /// master must relaunch.
    pub fn agent_unnamed(&mut self, running_build: bool) -> bool {
        let track = self.track(launch::AGENT_SLOT);
        // Only an absent [agent] entry: a refused one leaves things as they are.
        let absent = track.entry.as_ref().is_some_and(|e| e.version.is_none());
        if !running_build || !absent {
            return false;
        }
        if track.slot.manifest.current.is_none() {
            return false;
        }
        if let Err(e) = track.slot.back_to_installed() {
            tracing::warn!("cannot switch back to the installed agent binary: {e}");
            return false;
        }
        tracing::info!("the desired state names no agent build: back to the installed binary");
        true
    }

    /// The agent's own update state, for its status.
    pub fn annotate_agent(&self, status: &mut hids_types::status::AgentStatus) {
        if let Some(track) = self.tracks.get(launch::AGENT_SLOT) {
            status.update = track.status.clone();
            status.update_error = track.error.clone();
            status.rolled_back = track.rolled_back.clone();
        }
    }

    /// Judges builds on trial from the plugins' statuses: a healthy one is confirmed, a
    /// failing one rolled back. True when the plugins must be applied again.
    pub fn observe(&mut self, statuses: &[PluginStatus]) -> bool {
        let now = Instant::now();
        let mut reapply = false;
        for (name, track) in &mut self.tracks {
            let Some(gate) = &mut track.gate else {
                continue;
            };
            let status = statuses.iter().find(|s| &s.name == name);
            match gate.judge(status, now, &self.config) {
                Verdict::Pending => {}
                Verdict::Healthy => {
                    let version = gate.version().to_owned();
                    track.gate = None;
                    if let Err(e) = track.slot.confirm() {
                        tracing::warn!("plugin {name}: cannot record its build as healthy: {e}");
                    }
                    if track.named.as_ref().is_some_and(|r| r.version == version) {
                        track.set_phase(&version, UpdatePhase::Healthy);
                    }
                    tracing::info!("plugin {name}: version {version} passed its health gate");
                    reapply = true; // to publish the phase at once
                }
                Verdict::Failed(reason) => {
                    track.gate = None;
                    roll_back(track, name, &reason, false);
                    reapply = true;
                }
            }
        }
        reapply
    }

    fn plugin_tracks(&self) -> impl Iterator<Item = (&String, &Track)> {
        self.tracks.iter().filter(|(n, _)| *n != launch::AGENT_SLOT)
    }

    /// True while a build is on trial (the master then observes every second).
    pub fn judging(&self) -> bool {
        self.tracks.values().any(|t| t.gate.is_some())
    }

    /// Points each managed plugin at its installed current build; a plugin the host's
    /// configuration does not declare is added from its entry.
    pub fn patch(&self, specs: &mut Vec<PluginSpec>) {
        for (name, track) in self.plugin_tracks() {
            let (true, Some((build, path))) = (track.managed, &track.verified) else {
                continue;
            };
            match specs.iter_mut().find(|s| &s.name == name) {
                Some(spec) => {
                    spec.path = path.clone();
                    spec.version = Some(build.version.clone());
                }
                None => {
                    let entry = track.entry.clone().unwrap_or_default();
                    specs.push(PluginSpec {
                        name: name.clone(),
                        path: path.clone(),
                        args: entry.args.unwrap_or_default(),
                        enabled: entry.enabled.unwrap_or(true),
                        limits: Default::default(),
                        version: Some(build.version.clone()),
                    });
                }
            }
        }
    }

    /// Adds each plugin's update state to the statuses; a plugin with nothing running
    /// yet (its first build still downloading, or refused) gets a line of its own.
    pub fn annotate(&self, plugins: &mut Vec<PluginStatus>) {
        for (name, track) in self.plugin_tracks() {
            if track.status.is_none() && track.error.is_none() && track.rolled_back.is_none() {
                continue;
            }
            let index = match plugins.iter().position(|p| &p.name == name) {
                Some(i) => i,
                None => {
                    let state = hids_types::status::PluginState::Stopped;
                    plugins.push(PluginStatus::new(name, "", state));
                    plugins.len() - 1
                }
            };
            let p = &mut plugins[index];
            p.update = track.status.clone();
            p.update_error = track.error.clone();
            p.rolled_back = track.rolled_back.clone();
        }
    }
}

/// The agent's own build as a plugin-shaped entry, so one path takes both.
fn agent_entry(release: &Release) -> DesiredPlugin {
    DesiredPlugin {
        name: launch::AGENT_SLOT.into(),
        version: Some(release.version.clone()),
        sha256: Some(release.sha256.clone()),
        url: Some(release.url.clone()),
        max_bytes: release.max_bytes,
        spread_secs: release.spread_secs,
        expires_at: release.expires_at,
        ..DesiredPlugin::default()
    }
}

/// `name`'s track, opened (its installed builds read) the first time.
fn track_of<'a>(
    tracks: &'a mut BTreeMap<String, Track>,
    root: &std::path::Path,
    host_id: &str,
    name: &str,
) -> &'a mut Track {
    tracks.entry(name.to_owned()).or_insert_with(|| {
        let mut t = Track {
            slot: Slot::open(root, name),
            managed: false,
            entry: None,
            named: None,
            verified: None,
            status: None,
            error: None,
            rolled_back: None,
            job: None,
            job_id: 0,
            resumed: false,
            running: None,
            next_try: None,
            retry: Backoff::new(Duration::from_secs(60), Duration::from_secs(3600))
                .staggered(host_id),
            gate: None,
        };
        t.choose_current();
        // The last rollback stays in the status across restarts of the agent (also one
        // the launcher made before this process started).
        t.rolled_back = t.slot.manifest.bad.last().map(|bad| Rollback {
            from: bad.version.clone(),
            to: t.verified.as_ref().map(|(b, _)| b.version.clone()),
            reason: bad.reason.clone(),
            at: bad.at,
        });
        t
    })
}

/// Takes one (changed) desired entry for `track`. What runs meanwhile does not change
/// until the named build is installed: the installed current build when the plugin was
/// already on one, else the configured build.
fn take_entry(track: &mut Track, entry: &DesiredPlugin, host_id: &str, config: &UpdateConfig) {
    track.cancel();
    let version = entry.version.clone().unwrap_or_default();
    let release = match entry.release() {
        Ok(r) => r,
        Err(problem) => {
            track.named = None;
            track.choose_current();
            track.managed = track.verified.is_some(); // the installed build keeps running
            track.error = Some(format!(
                "desired build refused: {problem}; the running build keeps running"
            ));
            track.set_phase(&version, UpdatePhase::Failed);
            return;
        }
    };
    track.error = None;
    track.named = release.clone();
    let Some(release) = release else {
        // The configured build runs again: the manifest says so too, so that after a
        // restart nothing but a desired state naming a build brings an installed one
        // back. (The agent's own slot: see Updater::agent_unnamed.)
        if track.managed && track.slot.name() != launch::AGENT_SLOT {
            if let Err(e) = track.slot.back_to_installed() {
                tracing::warn!("{}: cannot rewrite its manifest: {e}", entry.name);
            }
            track.choose_current();
        }
        track.managed = false;
        track.status = None;
        track.slot.prune(Some("")); // no download to resume any more
        return;
    };
    // Another build named: the bad marks of the others are forgotten, so naming one
    // of them again later is a deliberate retry. Naming none keeps them (and the record
    // of what happened).
    if let Err(e) = track.slot.forget_bad_except(Some(&release)) {
        tracing::warn!("{}: cannot rewrite its manifest: {e}", entry.name);
    }
    track.retry.succeeded();
    track.choose_current();
    // Whatever is installed and current runs until the named build replaces it.
    track.managed = track.verified.is_some();
    if let Some(why) = agent_not_started(track, &release) {
        track.error = Some(why);
        track.set_phase(&release.version, UpdatePhase::Failed);
        return;
    }
    if track.verified.as_ref().is_some_and(|(b, _)| b.is(&release)) {
        let agent_on_trial = track.slot.name() == launch::AGENT_SLOT && track.slot.manifest.trial;
        if track.gate.is_some() || agent_on_trial {
            track.set_phase(&release.version, UpdatePhase::Trial);
        } else {
            track.set_phase(&release.version, UpdatePhase::Healthy);
        }
        return;
    }
    if let Some(bad) = track.slot.is_bad(&release).cloned() {
        track.error = Some(bad_build_error(track.slot.name(), &release, &bad));
        // Also after a restart of the agent, the status still says what happened.
        if track
            .rolled_back
            .as_ref()
            .is_none_or(|r| r.from != bad.version)
        {
            track.rolled_back = Some(Rollback {
                from: bad.version.clone(),
                to: track.verified.as_ref().map(|(b, _)| b.version.clone()),
                reason: bad.reason.clone(),
                at: bad.at,
            });
        }
        track.set_phase(&release.version, UpdatePhase::RolledBack);
        return;
    }
    if let Some(why) = expired(&release) {
        track.error = Some(why);
        track.set_phase(&release.version, UpdatePhase::Failed);
        return;
    }
    let spread = Duration::from_secs(release.spread_secs.unwrap_or(config.spread_secs));
    track.next_try = Some(Instant::now() + hids_types::stagger::offset(host_id, spread));
    track.set_phase(&release.version, UpdatePhase::Waiting);
}

/// The agent's slot: the named build is current but the launcher did not start it (it
/// could not count its starts, or set it aside); said instead of a trial that is not.
fn agent_not_started(track: &Track, release: &Release) -> Option<String> {
    if track.slot.name() != launch::AGENT_SLOT {
        return None;
    }
    let (build, _) = track.verified.as_ref().filter(|(b, _)| b.is(release))?;
    if track.running.as_deref() == Some(build.dir.as_str()) {
        return None;
    }
    Some(not_started(&build.version))
}

fn not_started(version: &str) -> String {
    format!(
        "the launcher did not start agent build {version} (its log says why); the installed binary runs"
    )
}

fn bad_build_error(component: &str, release: &Release, bad: &store::BadBuild) -> String {
    let retry = if component == launch::AGENT_SLOT {
        "name another agent build first (or push this one with a new sha256)"
    } else {
        "name another build first, or `hidsctl restart-plugin`"
    };
    format!(
        "version {} was rolled back on this host ({}); it is not run again: to retry, {retry}",
        release.version, bad.reason
    )
}

/// Why `release` may no longer start an update, if it may not.
fn expired(release: &Release) -> Option<String> {
    let at = release
        .expires_at
        .filter(|at| at.0 <= std::time::SystemTime::now())?;
    Some(format!(
        "the entry for version {} expired at {}: no new update starts and the running build keeps running; push it again with a later expires_at",
        release.version,
        humantime::format_rfc3339_seconds(at.0)
    ))
}

/// A download ended: installed and switched to, or the reason kept and a retry planned.
/// True when installed.
fn installed(
    track: &mut Track,
    name: &str,
    release: &Release,
    result: Result<Fetched, DownloadError>,
) -> bool {
    let partial = track.slot.partial_path(&release.sha256);
    let failure = match result {
        Ok(fetched) => match track
            .slot
            .install(release, &partial, base_for(track.slot.name()))
        {
            Ok(()) => {
                tracing::info!(
                    "{name}: version {} installed ({} bytes, sha256 verified); starting it on trial",
                    release.version,
                    fetched.bytes
                );
                track.retry.succeeded();
                track.error = None;
                track.managed = true;
                track.choose_current();
                track.set_phase(&release.version, UpdatePhase::Trial);
                return true;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                (
                    format!("cannot install version {}: {e}", release.version),
                    None,
                )
            }
        },
        Err(e) => (e.to_string(), Some(e.kind)),
    };
    let (why, kind) = failure;
    // The server or the way to it failed: the agent tries again by itself, so a rollout
    // counts the host as pending (`waiting`, with the reason), not as failed.
    let retrying = matches!(
        kind,
        Some(FailureKind::Network | FailureKind::HttpStatus(_)) | None
    ) || (kind == Some(FailureKind::HashMismatch) && track.resumed);
    let delay = match kind {
        // The server or the way to it: soon, with backoff.
        Some(FailureKind::Network | FailureKind::HttpStatus(_)) | None => track.retry.failed(),
        // Bytes kept from an earlier attempt (a power cut can leave garbage): once more
        // from the start, at once.
        Some(FailureKind::HashMismatch) if track.resumed => Duration::from_secs(1),
        // The bytes themselves were wrong: the file may be replaced on the server, but
        // not in a minute.
        Some(_) => Duration::from_secs(3600),
    };
    track.resumed = false;
    tracing::warn!(
        failure = kind.map_or("install", |k| k.as_str()),
        "{name}: version {} not installed: {why}; the running build keeps running; retry in {}s",
        release.version,
        delay.as_secs()
    );
    track.error = Some(why);
    let phase = if retrying {
        UpdatePhase::Waiting
    } else {
        UpdatePhase::Failed
    };
    track.set_phase(&release.version, phase);
    track.next_try = Some(Instant::now() + delay);
    false
}

/// For the agent's own builds: the SHA-256 of the installed binary they are installed
/// over (see [`store::Manifest::base`]).
fn base_for(component: &str) -> Option<String> {
    if component != launch::AGENT_SLOT {
        return None;
    }
    let exe = launch::installed_exe().ok()?;
    store::sha256_of(&exe)
        .map_err(|e| {
            tracing::warn!(
                "cannot hash {} ({e}); a package upgrade will not take over from the agent build",
                exe.display()
            )
        })
        .ok()
}

/// The build on trial failed its gate: back to the previous build, marked bad.
fn roll_back(track: &mut Track, name: &str, reason: &str, until_connected: bool) {
    let failed = match track.slot.roll_back(reason, until_connected) {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            tracing::error!("{name}: cannot roll back ({e}); stopping the failed build");
            track.managed = false;
            track.verified = None;
            return;
        }
    };
    track.choose_current(); // an unproven build gone back to is judged in turn
    let to = track.verified.as_ref().map(|(b, _)| b.version.clone());
    tracing::warn!(
        "{name}: version {} rolled back to {} ({reason}); marked bad on this host",
        failed.version,
        to.as_deref().unwrap_or("the configured build")
    );
    track.rolled_back = Some(Rollback {
        from: failed.version.clone(),
        to,
        reason: reason.to_owned(),
        at: Timestamp::now(),
    });
    track.error = None;
    track.set_phase(&failed.version, UpdatePhase::RolledBack);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn entry(version: &str, url: Option<&str>, sha256: Option<&str>) -> DesiredPlugin {
        DesiredPlugin {
            name: "demo".into(),
            version: Some(version.into()),
            url: url.map(Into::into),
            sha256: sha256.map(Into::into),
            ..DesiredPlugin::default()
        }
    }

    fn status_after(updater: &Updater) -> PluginStatus {
        let mut plugins = Vec::new();
        updater.annotate(&mut plugins);
        plugins.into_iter().find(|p| p.name == "demo").unwrap()
    }

    #[test]
    fn an_entry_without_url_or_hash_or_past_its_expiry_is_reported_not_acted_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut updater = Updater::new(dir.path(), "h1", UpdateConfig::default());
        let sha = "a".repeat(64);
        let cases = [
            (entry("3", None, Some(&sha)), "names no url"),
            (
                entry("3", Some("http://127.0.0.1/x"), None),
                "names no sha256",
            ),
            (entry("3", Some("ftp://x/y"), Some(&sha)), "not http"),
            (entry("3", Some("http://x/y"), Some("abc")), "64 hex"),
            (
                DesiredPlugin {
                    version: None,
                    ..entry("3", Some("http://x/y"), Some(&sha))
                },
                "without a version",
            ),
            (
                DesiredPlugin {
                    expires_at: Some(Timestamp::from_unix_nanos(1)),
                    ..entry("3", Some("http://x/y"), Some(&sha))
                },
                "expired",
            ),
        ];
        for (e, why) in cases {
            let body = DesiredBody {
                plugins: vec![e],
                ..DesiredBody::default()
            };
            updater.want(&body);
            let s = status_after(&updater);
            let error = s.update_error.unwrap_or_default();
            assert!(error.contains(why), "{why}: {error}");
            assert_eq!(s.update.unwrap().phase, UpdatePhase::Failed);
            assert!(!updater.poll(), "nothing is downloaded");
            let mut specs = Vec::new();
            updater.patch(&mut specs);
            assert!(specs.is_empty(), "nothing installed, nothing to run");
        }
    }

    #[test]
    fn a_new_entry_waits_for_this_hosts_turn_in_the_spread() {
        let dir = tempfile::tempdir().unwrap();
        let config = UpdateConfig {
            spread_secs: 3600,
            ..UpdateConfig::default()
        };
        let mut updater = Updater::new(dir.path(), "h1", config);
        let body = DesiredBody {
            plugins: vec![entry(
                "2",
                Some("http://127.0.0.1:9/x"),
                Some(&"b".repeat(64)),
            )],
            ..DesiredBody::default()
        };
        updater.want(&body);
        assert_eq!(
            status_after(&updater).update.unwrap().phase,
            UpdatePhase::Waiting
        );
        let turn = updater.tracks["demo"].next_try.unwrap() - Instant::now();
        let offset = hids_types::stagger::offset("h1", Duration::from_secs(3600));
        assert!(
            turn <= offset && turn + Duration::from_secs(5) > offset,
            "{turn:?} vs {offset:?}"
        );
        // Dropping the entry hands the plugin back to its configured build.
        updater.want(&DesiredBody::default());
        assert!(updater.tracks["demo"].next_try.is_none());
        let mut plugins = Vec::new();
        updater.annotate(&mut plugins);
        assert!(plugins.is_empty(), "{plugins:?}");
    }

    #[test]
    fn an_expired_entry_keeps_the_installed_build_running_and_only_blocks_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"#!/bin/sh\nexec sleep 60\n";
        let sha = hids_control::hex::encode(&sha2::Sha256::digest(content));
        let installed = entry("2", Some("http://127.0.0.1:9/demo-2"), Some(&sha));
        let release = installed.release().unwrap().unwrap();
        let mut slot = Slot::open(&dir.path().join("versions"), "demo");
        slot.make_dir().unwrap();
        let partial = slot.partial_path(&sha);
        std::fs::write(&partial, content).unwrap();
        slot.install(&release, &partial, None).unwrap();
        slot.confirm().unwrap();

        let expired = Some(Timestamp::from_unix_nanos(1));
        let mut updater = Updater::new(dir.path(), "h1", UpdateConfig::default());
        let body = DesiredBody {
            plugins: vec![DesiredPlugin {
                expires_at: expired,
                ..installed.clone()
            }],
            ..DesiredBody::default()
        };
        updater.want(&body);
        let mut specs = Vec::new();
        updater.patch(&mut specs);
        assert_eq!(specs.len(), 1, "the installed build still runs");
        assert_eq!(specs[0].version.as_deref(), Some("2"));
        assert_eq!(
            status_after(&updater).update.unwrap().phase,
            UpdatePhase::Healthy
        );

        let newer = DesiredBody {
            plugins: vec![DesiredPlugin {
                expires_at: expired,
                ..entry(
                    "3",
                    Some("http://127.0.0.1:9/demo-3"),
                    Some(&"c".repeat(64)),
                )
            }],
            ..DesiredBody::default()
        };
        updater.want(&newer);
        assert!(status_after(&updater)
            .update_error
            .unwrap()
            .contains("expired"));
        // After a restart of the agent, with 4 waiting its turn, 2 still runs.
        let mut restarted = Updater::new(dir.path(), "h1", UpdateConfig::default());
        restarted.want(&DesiredBody {
            plugins: vec![entry(
                "4",
                Some("http://127.0.0.1:9/demo-4"),
                Some(&"e".repeat(64)),
            )],
            ..DesiredBody::default()
        });
        let mut specs = Vec::new();
        restarted.patch(&mut specs);
        assert_eq!(
            specs[0].version.as_deref(),
            Some("2"),
            "2 runs while 4 waits"
        );
        let mut specs = Vec::new();
        updater.patch(&mut specs);
        assert_eq!(specs[0].version.as_deref(), Some("2"), "2 keeps running");
        assert!(!updater.poll(), "3 is not fetched");
    }

    #[test]
    fn only_the_agent_build_the_launcher_started_is_on_trial_and_a_declined_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"#!/bin/sh\nexit 0\n";
        let sha = hids_control::hex::encode(&sha2::Sha256::digest(content));
        let release = entry("9", Some("http://127.0.0.1:9/a"), Some(&sha))
            .release()
            .unwrap()
            .unwrap();
        let mut slot = Slot::open(&dir.path().join("versions"), launch::AGENT_SLOT);
        slot.make_dir().unwrap();
        let partial = slot.partial_path(&sha);
        std::fs::write(&partial, content).unwrap();
        slot.install(&release, &partial, None).unwrap();
        let build_dir = slot.manifest.current.clone().unwrap().dir;

        let mut older = Updater::new(dir.path(), "h1", UpdateConfig::default());
        assert!(
            !older.agent_running(Some("1-aaaaaaaaaaaa")),
            "an older build proves nothing"
        );
        let mut running = Updater::new(dir.path(), "h1", UpdateConfig::default());
        assert!(running.agent_running(Some(&build_dir)));
        running.agent_judged("9", None);
        let reopened = Slot::open(&dir.path().join("versions"), launch::AGENT_SLOT);
        assert!(!reopened.manifest.trial && reopened.manifest.current.unwrap().passed);

        let mut declined = Updater::new(dir.path(), "h1", UpdateConfig::default());
        assert!(!declined.agent_running(None));
        let error = declined.tracks[launch::AGENT_SLOT].error.clone();
        assert!(error.unwrap().contains("did not start agent build 9"));
    }

    #[tokio::test]
    async fn a_download_the_network_failed_waits_to_retry_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let config = UpdateConfig {
            spread_secs: 0,
            ..UpdateConfig::default()
        };
        let mut updater = Updater::new(dir.path(), "h1", config);
        // Nothing listens on the discard port of loopback: connection refused.
        let body = DesiredBody {
            plugins: vec![entry(
                "2",
                Some("http://127.0.0.1:9/demo-2"),
                Some(&"d".repeat(64)),
            )],
            ..DesiredBody::default()
        };
        updater.want(&body);
        updater.poll();
        loop {
            let event = updater.events.recv().await.unwrap();
            let done = matches!(event.what, JobWhat::Done(_));
            assert_eq!(updater.finish(event), Next::Nothing);
            if done {
                break;
            }
        }
        let s = status_after(&updater);
        assert_eq!(
            s.update.unwrap().phase,
            UpdatePhase::Waiting,
            "retried by itself"
        );
        assert!(s.update_error.unwrap().contains("127.0.0.1:9"));
        let retry = updater.tracks["demo"].next_try.unwrap() - Instant::now();
        assert!(retry >= Duration::from_secs(59), "{retry:?}");
    }
}
