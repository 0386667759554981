//! Plugin supervision: start each plugin as a child process, speak the frame protocol
//! with it, forward its events and log, restart it with exponential backoff when it
//! dies, and quarantine it when it keeps dying.
//!
//! A plugin can never take the master down: its output is read with bounded buffers,
//! a broken frame stream kills and restarts that plugin only, and a plugin that speaks
//! no frames at all is still supervised (its stdout is discarded and counted).

use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hids_types::status::{PluginState, PluginStatus};
use hids_wire::{
    Control, Header, Kind, MasterHello, PluginHello, HEADER_LEN, MAGIC, PROTOCOL_VERSION,
};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, watch};

use crate::cgroups::{Cgroups, PluginCgroup};
use crate::config::{PluginSpec, SupervisorConfig};
use crate::internal_events::plugin::{
    EventFrameRefused, PluginOutOfMemory, PluginOutputRefused, PluginQuarantined,
    PluginRestartScheduled, PluginStarted, PluginUnframed,
};
use crate::logging::forward_plugin_log;
use crate::queue::{Batch, EventSender};

/// What every plugin task shares.
pub struct Context {
    pub host_id: String,
    pub hostname: String,
    pub labels: hids_types::event::Labels,
    pub supervisor: SupervisorConfig,
    pub events: EventSender,
    pub cgroups: Cgroups,
    /// Cgroup problems are logged once, not at every plugin start.
    pub cgroup_warned: std::sync::atomic::AtomicBool,
    /// `<state_dir>/plugins`: each plugin gets `<name>/` in it (0700), named by
    /// `HIDS_PLUGIN_STATE_DIR`, for what it must remember across restarts.
    pub plugin_state: std::path::PathBuf,
}

pub type SharedStatus = Arc<Mutex<PluginStatus>>;

pub fn new_status(spec: &PluginSpec) -> SharedStatus {
    let state = if spec.enabled {
        PluginState::Starting
    } else {
        PluginState::Disabled
    };
    let path = spec.path.display().to_string();
    Arc::new(Mutex::new(PluginStatus::new(&spec.name, &path, state)))
}

fn update<R>(status: &SharedStatus, f: impl FnOnce(&mut PluginStatus) -> R) -> R {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s)
}

/// How one run of a plugin ended.
enum Outcome {
    Exited(io::Result<ExitStatus>),
    /// Killed by the kernel for going over its cgroup memory limit (MB).
    OutOfMemory(u64),
    Violation(String),
    /// Stopped on purpose: agent shutdown, or the wanted state changed.
    Stopped,
}

/// What the manager wants of one plugin. The `generation` changes on every request
/// (also to restart a plugin with the same spec, or to release it from quarantine).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub spec: PluginSpec,
    pub run: bool,
    pub generation: u64,
}

/// Control requests waiting for one plugin (an operator's snapshot command): each is
/// written to the plugin's stdin at once, so a few are plenty.
pub const REQUEST_QUEUE: usize = 4;

/// Runs one plugin as `wanted` says, until the agent shuts down. `requests` are passed
/// on to the run of the plugin that is up when they arrive.
pub async fn supervise(
    ctx: Arc<Context>,
    status: SharedStatus,
    mut wanted: watch::Receiver<Wanted>,
    mut requests: mpsc::Receiver<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut started_before = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let want = wanted.borrow_and_update().clone();
        if !want.run {
            update(&status, |s| {
                s.state = if want.spec.enabled {
                    PluginState::Stopped
                } else {
                    PluginState::Disabled
                };
                s.pid = None;
            });
            tokio::select! {
                _ = wanted.changed() => continue,
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        update(&status, |s| {
            s.consecutive_crashes = 0;
            s.path = want.spec.path.display().to_string();
        });
        let first_start = !started_before;
        started_before = true;
        if !run_with_restarts(
            &want.spec,
            &ctx,
            &status,
            first_start,
            &mut wanted,
            &mut requests,
            &mut shutdown,
        )
        .await
        {
            break;
        }
    }
    update(&status, |s| {
        s.state = PluginState::Stopped;
        s.pid = None;
    });
}

/// Runs, restarts and maybe quarantines one spec until the wanted state changes (true)
/// or the agent shuts down (false). Every start but the plugin's very first counts as a
/// restart, whatever caused it.
async fn run_with_restarts(
    spec: &PluginSpec,
    ctx: &Arc<Context>,
    status: &SharedStatus,
    first_start: bool,
    wanted: &mut watch::Receiver<Wanted>,
    requests: &mut mpsc::Receiver<Control>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let sup = &ctx.supervisor;
    let mut first = first_start;
    loop {
        if !first {
            update(status, |s| s.restarts += 1);
        }
        first = false;
        let run_id = hids_wire::new_run_id();
        let started = Instant::now();
        let outcome = match run_once(spec, ctx, status, &run_id, wanted, requests, shutdown).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Exited(Err(e)),
        };
        let last_exit = match &outcome {
            Outcome::Stopped => return !*shutdown.borrow(),
            Outcome::Exited(Ok(st)) => describe_exit(st),
            Outcome::Exited(Err(e)) => format!("could not run: {e}"),
            Outcome::OutOfMemory(mb) => format!("killed by its memory limit ({mb} MB)"),
            Outcome::Violation(why) => format!("killed for a protocol violation: {why}"),
        };
        if *shutdown.borrow() {
            update(status, |s| s.last_exit = Some(last_exit));
            return false;
        }
        let stable = started.elapsed() >= Duration::from_secs(sup.stable_after_secs);
        let crashes = update(status, |s| {
            s.consecutive_crashes = if stable { 1 } else { s.consecutive_crashes + 1 };
            s.pid = None;
            s.last_exit = Some(last_exit.clone());
            s.consecutive_crashes
        });
        if crashes >= sup.quarantine_after {
            PluginQuarantined {
                plugin: &spec.name,
                last_exit: &last_exit,
                crashes,
            }
            .emit(status);
            // Reported as quarantined until the wanted state changes (restart_plugin).
            tokio::select! {
                _ = wanted.changed() => return true,
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
        }
        let delay = backoff(sup, crashes);
        PluginRestartScheduled {
            plugin: &spec.name,
            last_exit: &last_exit,
            crashes,
            max_restarts: sup.quarantine_after - 1,
            delay,
        }
        .emit(status);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wanted.changed() => return true,
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}

/// Delay before restart number `crashes`: initial, doubled per crash, capped.
pub fn backoff(sup: &SupervisorConfig, crashes: u32) -> Duration {
    hids_types::stagger::backoff(
        crashes,
        Duration::from_millis(sup.backoff_initial_ms),
        Duration::from_secs(sup.backoff_max_secs.max(1)),
    )
}

fn describe_exit(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}

async fn run_once(
    spec: &PluginSpec,
    ctx: &Context,
    status: &SharedStatus,
    run_id: &str,
    wanted: &mut watch::Receiver<Wanted>,
    requests: &mut mpsc::Receiver<Control>,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<Outcome> {
    while requests.try_recv().is_ok() {} // meant for a run that is gone
    let cgroup = plugin_cgroup(spec, ctx);
    let oom_before = cgroup.as_ref().map_or(0, |c| c.oom_kills());
    let procs = cgroup
        .as_ref()
        .map_or(Ok(Vec::new()), PluginCgroup::open_procs)?;
    let mut child = spawn(spec, procs, plugin_state_dir(&ctx.plugin_state, &spec.name))?;
    let pid = child.id().unwrap_or(0);
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(io::Error::other("child pipes missing"));
    };
    PluginStarted { spec, pid, run_id }.emit(status);
    say_hello(&mut stdin, spec, ctx, run_id).await?;
    let mut stdin = Some(stdin);

    tokio::spawn(forward_plugin_log(spec.name.clone(), stderr));
    let pump = pump(stdout, ctx, status, &spec.name, run_id);
    tokio::pin!(pump);
    let mut pump_done = false;

    let outcome = loop {
        // Passed on after the select, whose output holds a watch guard (not Send).
        let request = tokio::select! {
            st = child.wait() => break Outcome::Exited(st),
            _ = shutdown.wait_for(|stop| *stop) => break Outcome::Stopped,
            _ = wanted.changed() => break Outcome::Stopped,
            Some(request) = requests.recv() => request,
            end = &mut pump, if !pump_done => {
                pump_done = true;
                if let Err(why) = end {
                    break Outcome::Violation(why);
                }
                continue;
            }
        };
        pass_on(stdin.as_mut(), status, &spec.name, &request).await;
    };
    match &outcome {
        Outcome::Exited(_) => {
            if let Some(oom) = out_of_memory(spec, cgroup.as_ref(), oom_before, status) {
                return Ok(oom);
            }
        }
        Outcome::OutOfMemory(_) => {}
        Outcome::Violation(why) => {
            PluginOutputRefused {
                plugin: &spec.name,
                why,
            }
            .emit(status);
            kill_group(pid, Signal::KILL);
            let _ = child.wait().await;
            return Ok(outcome);
        }
        Outcome::Stopped => {
            tracing::info!(plugin = %spec.name, pid, "stopping");
            // A plugin that never said hello cannot act on a shutdown frame: SIGTERM now.
            let framed = update(status, |s| s.framed == Some(true));
            let stop = stop_child(
                &mut child,
                stdin.take().filter(|_| framed),
                pid,
                &ctx.supervisor,
            );
            tokio::pin!(stop);
            // Its output is read while it stops: a plugin blocked writing to a full pipe
            // (an exec storm) could neither act on the shutdown frame nor flush what it
            // had numbered, and would be killed with it.
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = &mut pump, if !pump_done => pump_done = true,
                }
            }
        }
    }
    // Events written just before the exit are still in the pipe: forward them, but do
    // not wait on a grandchild that inherited the pipe and keeps it open.
    if !pump_done {
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut pump).await;
    }
    Ok(outcome)
}

/// A run that ended by itself was killed by its cgroup memory limit (the kernel's OOM
/// count went up).
fn out_of_memory(
    spec: &PluginSpec,
    cgroup: Option<&PluginCgroup>,
    oom_before: u64,
    status: &SharedStatus,
) -> Option<Outcome> {
    let (cg, mb) = (cgroup?, spec.limits.memory_mb?);
    if cg.oom_kills() <= oom_before {
        return None;
    }
    PluginOutOfMemory {
        plugin: &spec.name,
        limit_mb: mb,
    }
    .emit(status);
    Some(Outcome::OutOfMemory(mb))
}

/// The plugin's cgroup, when it has limits and they can be applied; the first failure
/// is logged, once for all plugins.
fn plugin_cgroup(spec: &PluginSpec, ctx: &Context) -> Option<PluginCgroup> {
    if !spec.limits.any() {
        return None;
    }
    match ctx.cgroups.prepare(&spec.name, &spec.limits) {
        Ok(cg) => Some(cg),
        Err(e) => {
            if !ctx
                .cgroup_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "cannot apply per-plugin limits ({e}); plugins run without cgroup limits \
                     (the resource guard still watches them)"
                );
            }
            None
        }
    }
}

/// The master's hello frame, first thing on the plugin's stdin.
async fn say_hello(
    stdin: &mut ChildStdin,
    spec: &PluginSpec,
    ctx: &Context,
    run_id: &str,
) -> io::Result<()> {
    let hello = MasterHello {
        protocol: PROTOCOL_VERSION,
        plugin: spec.name.clone(),
        host_id: ctx.host_id.clone(),
        hostname: ctx.hostname.clone(),
        run_id: run_id.to_owned(),
        labels: (*ctx.labels).clone(),
    };
    let mut frame = Vec::new();
    let body = serde_json::to_vec(&hello).map_err(io::Error::other)?;
    hids_wire::encode_frame(Kind::Hello, &body, &mut frame).map_err(io::Error::other)?;
    // A plugin that does not read stdin may have closed it: not an error for us.
    let _ = stdin.write_all(&frame).await;
    Ok(())
}

/// The plugin's own state directory, made if missing (0700: it may hold what the
/// plugin saw of the host). None, logged, when it cannot be made: the plugin then runs
/// without memory across restarts rather than not at all.
fn plugin_state_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = root.join(name);
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(
                "plugin {name}: cannot make its state directory {}: {e}",
                dir.display()
            );
            None
        }
    }
}

fn spawn(
    spec: &PluginSpec,
    cgroup_procs: Vec<std::os::fd::OwnedFd>,
    state_dir: Option<std::path::PathBuf>,
) -> io::Result<Child> {
    let master_pid = rustix::process::getpid();
    let mut cmd = Command::new(&spec.path);
    if let Some(dir) = state_dir {
        cmd.env(hids_wire::PLUGIN_STATE_DIR_ENV, dir);
    }
    // The launcher's notes to the agent build it started are not the plugin's business.
    cmd.env_remove(crate::update::launch::LAUNCHED_ENV)
        .env_remove(crate::update::launch::LAUNCHER_ENV);
    cmd.args(&spec.args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a stop reaches whatever the plugin started.
        .process_group(0);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec. It only makes raw
    // syscalls (prctl, getppid, write to fds opened before the fork) and may build an
    // io::Error from an errno; none of these allocate or take locks, so it is safe in a
    // child of a threaded process.
    unsafe {
        cmd.pre_exec(move || {
            // Into the plugin's cgroup(s) before it runs a single instruction of its own.
            for fd in &cgroup_procs {
                rustix::io::write(fd, b"0")?;
            }
            // If the master dies, even by SIGKILL, the kernel kills the plugin.
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The master may have died between fork and prctl.
            if rustix::process::getppid() != Some(master_pid) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Writes a control request to a running plugin's stdin, as [`stop_child`] writes the
/// shutdown frame. Never waits long: a plugin that does not read its stdin must not hold
/// up its own supervision.
async fn pass_on(
    stdin: Option<&mut ChildStdin>,
    status: &SharedStatus,
    plugin: &str,
    request: &Control,
) {
    let unframed = update(status, |s| s.framed == Some(false));
    let Some(stdin) = stdin.filter(|_| !unframed) else {
        tracing::warn!(%plugin, "not passing {request:?} on: the plugin speaks no frames");
        return;
    };
    let mut frame = Vec::new();
    if let Ok(body) = serde_json::to_vec(request) {
        let _ = hids_wire::encode_frame(Kind::Control, &body, &mut frame);
    }
    // Up to PIPE_BUF bytes, a pipe write is all or nothing: a timeout can never leave
    // half a frame behind to break the stream.
    if frame.is_empty() || frame.len() > 4096 {
        tracing::warn!(%plugin, "not passing {request:?} on: its frame is over 4096 bytes");
        return;
    }
    match tokio::time::timeout(Duration::from_millis(100), stdin.write_all(&frame)).await {
        Ok(Ok(())) => tracing::info!(%plugin, "passed {request:?} on"),
        Ok(Err(e)) => tracing::warn!(%plugin, "cannot pass {request:?} on: {e}"),
        Err(_) => tracing::warn!(
            %plugin,
            "not passing {request:?} on: the plugin has not read its stdin (full for 100 ms)"
        ),
    }
}

fn kill_group(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Asks a plugin to stop (shutdown frame, then stdin closed), then SIGTERM, then SIGKILL,
/// each after half of the stop timeout. Without `stdin` (a plugin that speaks no
/// frames) it starts at SIGTERM.
async fn stop_child(
    child: &mut Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    sup: &SupervisorConfig,
) {
    let half = Duration::from_millis(sup.stop_timeout_ms / 2);
    if let Some(mut stdin) = stdin {
        let mut frame = Vec::new();
        if let Ok(body) = serde_json::to_vec(&Control::Shutdown) {
            if hids_wire::encode_frame(Kind::Control, &body, &mut frame).is_ok() {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), stdin.write_all(&frame)).await;
            }
        }
        drop(stdin);
        if tokio::time::timeout(half, child.wait()).await.is_ok() {
            kill_group(pid, Signal::KILL);
            return;
        }
    }
    kill_group(pid, Signal::TERM);
    if tokio::time::timeout(half, child.wait()).await.is_ok() {
        kill_group(pid, Signal::KILL);
        return;
    }
    kill_group(pid, Signal::KILL);
    let _ = child.wait().await;
}

/// Reads the plugin's stdout until it closes. `Err` is a protocol violation (the caller
/// kills the plugin); a plugin that never says hello is unframed and its output is
/// discarded and counted.
async fn pump(
    stdout: ChildStdout,
    ctx: &Context,
    status: &SharedStatus,
    name: &str,
    run_id: &str,
) -> Result<(), String> {
    let max = ctx.supervisor.max_frame_bytes;
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    let mut head = [0u8; HEADER_LEN];
    match read_full(&mut r, &mut head).await {
        Ok(true) => {}
        Ok(false) | Err(_) => return Ok(()),
    }
    if head[..2] != MAGIC {
        PluginUnframed {
            plugin: name,
            discarded: HEADER_LEN as u64,
        }
        .emit(status);
        let mut sink = [0u8; 8192];
        loop {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => update(status, |s| s.bytes_discarded += n as u64),
            }
        }
    }
    let hello = read_hello(&mut r, &head, max).await?;
    update(status, |s| {
        s.framed = Some(true);
        // A build installed by self-update is reported by the version the desired state
        // named it (what a rollout waits for), not by what it calls itself.
        if s.version.is_none() {
            s.version = Some(hello.version.clone());
        }
    });
    let mut frames = Frames {
        ctx,
        status,
        name,
        run_id,
        batch: Batch::new(name.into(), run_id.into()),
        bad_events: 0,
    };
    loop {
        // Whole frames already read are taken straight from the read buffer; the events
        // among them go to the pipeline as one batch (one send, one status update).
        let taken = frames.take_buffered(&mut r, max);
        if !frames.send().await {
            return Ok(()); // the pipeline is gone: the agent is shutting down
        }
        taken?;
        // The next frame is not all there yet: wait for it.
        match read_full(&mut r, &mut head).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let header = Header::parse(&head, max).map_err(|e| e.to_string())?;
        let mut payload = Vec::with_capacity(header.len as usize);
        read_payload(&mut r, header.len, &mut payload).await?;
        if let Some(seq) = frames.on_frame(header.kind, &payload) {
            frames.batch.push(seq, payload);
        }
    }
}

/// Events a batch takes from the read buffer at most; a burst (at most one buffer) fits.
const BATCH_EVENTS: usize = 1024;

/// One plugin run's frames as the reader takes them: events checked and gathered into
/// a batch for the pipeline, health passed to the status.
struct Frames<'a> {
    ctx: &'a Context,
    status: &'a SharedStatus,
    name: &'a str,
    run_id: &'a str,
    batch: Batch,
    bad_events: u64,
}

impl Frames<'_> {
    /// Takes the whole frames at the start of `r`'s buffer, without waiting. `Err` is a
    /// protocol violation; what was taken before it is kept for sending.
    fn take_buffered<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut BufReader<R>,
        max: u32,
    ) -> Result<(), String> {
        // Never more than the queue holds, in events or bytes: a batch takes its share of
        // the queue's budgets whole, so one larger than them would overrun the bounds.
        let (queue_events, queue_bytes) = self.ctx.events.limits();
        let most_events = BATCH_EVENTS.min(queue_events);
        while self.batch.len() < most_events && self.batch.bytes() < queue_bytes {
            let (header, payload) = match hids_wire::split_frame(r.buffer(), max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            };
            if let Some(seq) = self.on_frame(header.kind, payload) {
                let event = payload.to_vec();
                self.batch.push(seq, event);
            }
            let used = HEADER_LEN + header.len as usize;
            std::pin::Pin::new(&mut *r).consume(used);
        }
        Ok(())
    }

    /// Handles one frame; the sequence number when it is an event to forward.
    fn on_frame(&mut self, kind: Kind, payload: &[u8]) -> Option<u64> {
        match kind {
            Kind::Event => match event_sequence(payload, self.name, self.run_id) {
                Ok(seq) => return Some(seq),
                Err(why) => {
                    self.bad_events += 1;
                    EventFrameRefused {
                        plugin: self.name,
                        why: &why,
                        refused: self.bad_events,
                    }
                    .emit(self.status);
                }
            },
            Kind::Health => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                    // Frames may be 1 MiB; the status (and etcd) gets a marker instead.
                    let (v, cut) = hids_types::status::cap_health(v);
                    update(self.status, |s| {
                        s.health = Some(v);
                        s.health_cut += u64::from(cut);
                    });
                }
            }
            // A repeated hello, a control frame going the wrong way, or a kind from a
            // newer protocol: its length is known, so skip it.
            Kind::Hello | Kind::Control | Kind::Unknown(_) => {}
        }
        None
    }

    /// Queues the batch gathered (waiting for room) and counts it; false when the
    /// pipeline is gone.
    async fn send(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let fresh = Batch::new(self.batch.plugin.clone(), self.batch.run_id.clone());
        let batch = std::mem::replace(&mut self.batch, fresh);
        let events = batch.len() as u64;
        if self.ctx.events.send_batch(batch).await.is_err() {
            return false;
        }
        update(self.status, |s| s.events += events);
        true
    }
}

/// The plugin's hello, whose header is `head`; `Err` when it is not a hello or speaks
/// another protocol.
async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    head: &[u8; HEADER_LEN],
    max: u32,
) -> Result<PluginHello, String> {
    let header = Header::parse(head, max).map_err(|e| e.to_string())?;
    if header.kind != Kind::Hello {
        return Err(format!("first frame is {:?}, expected hello", header.kind));
    }
    let mut payload = Vec::new();
    read_payload(r, header.len, &mut payload).await?;
    let hello: PluginHello = hids_wire::decode("hello", &payload).map_err(|e| e.to_string())?;
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "plugin speaks protocol {}, this agent speaks {PROTOCOL_VERSION}",
            hello.protocol
        ));
    }
    Ok(hello)
}

/// Checks an event frame and returns its sequence number. The sinks write one event per
/// line, so an event must be one JSON object on one line; and it must name the plugin
/// and the run it came from, and declare nothing only the master may declare (lost
/// events, ended runs): a plugin that lies about either could hide loss from
/// reconciliation. Plugins are trusted to produce the rest of the event.
fn event_sequence(p: &[u8], plugin: &str, run_id: &str) -> Result<u64, String> {
    if !is_event_object(p) {
        return Err("not a single-line JSON object".into());
    }
    let ids = hids_types::event::EventIds::parse(p)
        .map_err(|e| format!("no event.sequence, hids.plugin and hids.run_id ({e})"))?;
    if ids.hids.plugin != plugin || ids.hids.run_id != run_id {
        return Err(format!(
            "names plugin {:?} run {:?}, not its own ({plugin:?} run {run_id:?})",
            ids.hids.plugin, ids.hids.run_id
        ));
    }
    if ids.declares() {
        return Err("declares lost events or ended runs, which only the master may".into());
    }
    Ok(ids.event.sequence)
}

fn is_event_object(p: &[u8]) -> bool {
    p.first() == Some(&b'{') && p.last() == Some(&b'}') && !p.contains(&b'\n')
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before the first byte.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame",
            ));
        }
        filled += n;
    }
    Ok(true)
}

async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u32,
    payload: &mut Vec<u8>,
) -> Result<(), String> {
    payload.clear();
    payload.resize(len as usize, 0);
    match read_full(r, payload).await {
        Ok(true) => Ok(()),
        Ok(false) if len == 0 => Ok(()),
        Ok(false) | Err(_) => Err("stream ended inside a frame".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let sup = SupervisorConfig {
            backoff_initial_ms: 100,
            backoff_max_secs: 1,
            ..SupervisorConfig::default()
        };
        assert_eq!(backoff(&sup, 1), Duration::from_millis(100));
        assert_eq!(backoff(&sup, 2), Duration::from_millis(200));
        assert_eq!(backoff(&sup, 4), Duration::from_millis(800));
        assert_eq!(backoff(&sup, 5), Duration::from_secs(1));
        assert_eq!(backoff(&sup, 1000), Duration::from_secs(1));
    }

    #[test]
    fn events_must_name_their_own_run_and_declare_nothing() {
        let ev = |plugin: &str, run: &str, extra: &str| {
            format!(
                r#"{{"event":{{"sequence":3}},"hids":{{"plugin":"{plugin}","run_id":"{run}"{extra}}}}}"#
            )
        };
        assert_eq!(event_sequence(ev("p", "r", "").as_bytes(), "p", "r"), Ok(3));
        assert!(event_sequence(ev("pipeline", "r", "").as_bytes(), "p", "r").is_err());
        assert!(event_sequence(ev("p", "other", "").as_bytes(), "p", "r").is_err());
        let forged = ev(
            "p",
            "r",
            r#","dropped":[{"plugin":"q","run_id":"x","from_seq":1,"to_seq":9,"reason":"x"}]"#,
        );
        assert!(event_sequence(forged.as_bytes(), "p", "r").is_err());
        assert!(event_sequence(br#"{"no":"ids"}"#, "p", "r").is_err());
    }

    #[test]
    fn event_framing_check() {
        assert!(is_event_object(b"{\"a\":1}"));
        assert!(!is_event_object(b"{\"a\":\n1}"));
        assert!(!is_event_object(b"garbage"));
        assert!(!is_event_object(b""));
    }
}
