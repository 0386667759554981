//! What a plugin links to talk to the master: the hello exchange, framed event and health
//! output on stdout, control input on stdin, and logging to stderr in the form the
//! master forwards. Blocking I/O on plain threads: a plugin needs no async runtime.
//!
//! Run by hand from a terminal (stdin is a TTY), a plugin built on this SDK runs
//! standalone: events are printed as JSON lines, host identity is read locally. This is
//! for debugging; under the master everything is framed.
//!
//! Deliberately absent: anything about etcd or Kafka. Plugins know only their master.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use hids_types::event::{Host, Producer};
use hids_wire::{
    Control, Kind, MasterHello, PluginHello, WireError, DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("no hello from the master on stdin: {0}")]
    NoHello(#[source] WireError),
    #[error("the master closed stdin before saying hello")]
    ClosedBeforeHello,
    #[error("the master speaks protocol {0}, this plugin speaks {PROTOCOL_VERSION}")]
    Protocol(u32),
    #[error("cannot use stdin/stdout: {0}")]
    Io(#[from] io::Error),
}

/// How the plugin was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Under the master: framed stdout, control frames on stdin.
    Supervised,
    /// By hand from a terminal: JSON lines on stdout.
    Standalone,
}

/// Requests held for the plugin to take. An operator's command, not a data path: a
/// plugin busy for a whole snapshot still finds the next few waiting; beyond that they
/// are dropped and counted.
const REQUEST_QUEUE: usize = 16;

/// What the master asks of a running plugin, besides stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Take a full snapshot now. `id` is the operator's command id: put it on what the
    /// snapshot reports, so the operator can find the answer.
    Snapshot { id: String },
}

/// A connected plugin.
pub struct Session {
    pub mode: Mode,
    /// The master's hello (in standalone mode, one made up from local facts).
    pub hello: MasterHello,
    output: Output,
    shutdown: Arc<AtomicBool>,
    requests: Option<Receiver<Request>>,
    requests_dropped: Arc<AtomicU64>,
}

impl Session {
    /// Performs the hello exchange (or detects standalone mode) and starts the control
    /// reader thread.
    ///
    /// # Errors
    /// When the master does not open with a valid hello, or speaks another protocol.
    pub fn connect(name: &str, version: &str) -> Result<Session, SdkError> {
        Self::connect_with(name, version, Arc::new(AtomicBool::new(false)))
    }

    /// The same, with a shutdown flag made earlier: a plugin that must be capturing
    /// before it says hello (the master takes the hello as "ready") hands its workers
    /// the flag first.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub fn connect_with(
        name: &str,
        version: &str,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Session, SdkError> {
        let stdin = io::stdin();
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        if stdin.is_terminal() {
            return Self::standalone(name, shutdown);
        }
        let mut input = File::from(stdin.as_fd().try_clone_to_owned()?);
        let mut payload = Vec::new();
        let hello: MasterHello = loop {
            match hids_wire::read_frame(&mut input, DEFAULT_MAX_PAYLOAD, &mut payload) {
                Ok(Some(h)) if h.kind == Kind::Hello => {
                    break hids_wire::decode("hello", &payload).map_err(SdkError::NoHello)?;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(SdkError::ClosedBeforeHello),
                Err(e) => return Err(SdkError::NoHello(e)),
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(SdkError::Protocol(hello.protocol));
        }
        let output = Output::new(stdout, Mode::Supervised);
        let answer = PluginHello {
            protocol: PROTOCOL_VERSION,
            name: name.to_owned(),
            version: version.to_owned(),
        };
        output.frame(
            Kind::Hello,
            &serde_json::to_vec(&answer).unwrap_or_default(),
        )?;
        output.flush()?;
        let (tx, requests) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        let requests_dropped = Arc::new(AtomicU64::new(0));
        let pass_on = PassOn {
            tx,
            dropped: requests_dropped.clone(),
        };
        let flag = shutdown.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || read_control(input, flag, &pass_on))?;
        Ok(Session {
            mode: Mode::Supervised,
            hello,
            output,
            shutdown,
            requests: Some(requests),
            requests_dropped,
        })
    }

    /// Standalone whatever stdin is: JSON lines on stdout, host identity read locally.
    /// For one-shot modes (`--once`) that scripts and benchmarks run with stdin
    /// redirected.
    ///
    /// # Errors
    /// When stdout cannot be used.
    pub fn standalone(name: &str, shutdown: Arc<AtomicBool>) -> Result<Session, SdkError> {
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let hello = MasterHello {
            protocol: PROTOCOL_VERSION,
            plugin: name.to_owned(),
            host_id: hids_procfs::host::machine_id().unwrap_or_else(|_| "unknown".into()),
            hostname: hids_procfs::host::hostname(),
            run_id: hids_wire::new_run_id(),
            labels: Default::default(),
        };
        Ok(Session {
            mode: Mode::Standalone,
            hello,
            output: Output::new(stdout, Mode::Standalone),
            shutdown,
            requests: None,
            requests_dropped: Arc::default(),
        })
    }

    /// Where events and health go; cheap to clone and share between threads.
    pub fn output(&self) -> Output {
        self.output.clone()
    }

    /// Who this plugin's events come from, as the master's hello names it: the envelope
    /// of every event the plugin writes.
    pub fn producer(&self) -> Producer {
        Producer {
            host: Host {
                id: self.hello.host_id.as_str().into(),
                hostname: self.hello.hostname.as_str().into(),
            },
            labels: Arc::new(self.hello.labels.clone()),
            plugin: self.hello.plugin.as_str().into(),
            run_id: self.hello.run_id.as_str().into(),
        }
    }

    /// Set when the master asked us to stop or went away (stdin closed).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The master's requests ([`Request`]), to be received by the plugin. Taken once:
    /// `None` on a second call, and in standalone mode, where nobody sends any. While
    /// nobody takes them, up to 16 wait; more are dropped and counted.
    pub fn requests(&mut self) -> Option<Receiver<Request>> {
        self.requests.take()
    }

    /// How many requests were dropped because the plugin left 16 waiting (or dropped
    /// its receiver): a figure for the plugin's stats.
    pub fn requests_dropped(&self) -> Arc<AtomicU64> {
        self.requests_dropped.clone()
    }
}

/// Hands requests to the plugin without ever blocking the control reader: a plugin that
/// does not take them must not keep it from seeing a shutdown.
struct PassOn {
    tx: SyncSender<Request>,
    dropped: Arc<AtomicU64>,
}

impl PassOn {
    fn send(&self, request: Request) {
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) =
            self.tx.try_send(request)
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                "dropping the master's request {r:?}: {REQUEST_QUEUE} are already waiting \
                 or the plugin takes none ({dropped} dropped so far)"
            );
        }
    }
}

fn read_control(mut input: impl Read, shutdown: Arc<AtomicBool>, requests: &PassOn) {
    let mut payload = Vec::new();
    loop {
        match hids_wire::read_frame(&mut input, DEFAULT_MAX_PAYLOAD, &mut payload) {
            Ok(Some(h)) if h.kind == Kind::Control => {
                match hids_wire::decode::<Control>("control", &payload) {
                    Ok(Control::Shutdown) => break,
                    Ok(Control::Snapshot { id }) => requests.send(Request::Snapshot { id }),
                    Err(e) => tracing::warn!("ignoring control frame: {e}"),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::error!("control stream from the master is broken: {e}");
                break;
            }
        }
    }
    shutdown.store(true, Ordering::SeqCst);
}

/// Framed (or, standalone, line-based) output to stdout. Frames are written whole under
/// a lock, so threads never interleave them. Writes block when the master is slow: the
/// caller's bounded queue in front of this is where pressure turns into counted drops.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<BufWriter<File>>>,
    mode: Mode,
}

impl Output {
    fn new(file: File, mode: Mode) -> Self {
        Output {
            inner: Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, file))),
            mode,
        }
    }

    /// JSON lines into `file`, as standalone mode writes them: for a plugin's tests.
    pub fn lines(file: File) -> Self {
        Output::new(file, Mode::Standalone)
    }

    /// Writes one event (a JSON object). Call [`Output::flush`] when the burst is over.
    ///
    /// # Errors
    /// When stdout is closed: the master is gone and the plugin should exit.
    pub fn event(&self, json: &[u8]) -> io::Result<()> {
        self.frame(Kind::Event, json)
    }

    /// Sends the plugin's counters to the master, which shows them in its status.
    ///
    /// # Errors
    /// When stdout is closed.
    pub fn health(&self, json: &[u8]) -> io::Result<()> {
        if self.mode == Mode::Standalone {
            return Ok(());
        }
        self.frame(Kind::Health, json)?;
        self.flush()
    }

    fn frame(&self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match self.mode {
            Mode::Supervised => {
                hids_wire::write_frame(&mut *w, kind, payload).map_err(|e| match e {
                    WireError::Io(e) => e,
                    other => io::Error::new(io::ErrorKind::InvalidInput, other),
                })
            }
            Mode::Standalone => {
                w.write_all(payload)?;
                w.write_all(b"\n")
            }
        }
    }

    /// # Errors
    /// When stdout is closed.
    pub fn flush(&self) -> io::Result<()> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// A plugin's exit status from its run: success, also when the master closed our stdout
/// (it is gone or stopping us: nothing left to report to); otherwise the error, logged.
pub fn exit_code(result: io::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `LEVEL message`, the form the master parses and forwards under the
/// plugin's name (it adds the time). `level` is `error`, `warn`, `info`, `debug`, `trace`.
pub fn init_logging(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(level)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_frames(commands: &[Control]) -> Vec<u8> {
        let mut stream = Vec::new();
        for c in commands {
            let body = serde_json::to_vec(c).unwrap_or_default();
            hids_wire::encode_frame(Kind::Control, &body, &mut stream)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        stream
    }

    #[test]
    fn snapshot_requests_are_passed_on_bounded_and_shutdown_still_stops() {
        let mut commands: Vec<Control> = (0..20)
            .map(|i| Control::Snapshot {
                id: format!("c{i}"),
            })
            .collect();
        commands.push(Control::Shutdown);
        commands.push(Control::Snapshot { id: "late".into() });
        let (tx, rx) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let pass_on = PassOn {
            tx,
            dropped: dropped.clone(),
        };
        read_control(&control_frames(&commands)[..], shutdown.clone(), &pass_on);
        assert!(shutdown.load(Ordering::SeqCst));
        let got: Vec<Request> = rx.try_iter().collect();
        assert_eq!(got.len(), REQUEST_QUEUE);
        assert_eq!(got[0], Request::Snapshot { id: "c0".into() });
        assert_eq!(dropped.load(Ordering::Relaxed), 4, "20 sent, 16 held");
    }

    #[test]
    fn requests_nobody_takes_are_counted_and_stdin_closed_still_stops() {
        let (tx, rx) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        drop(rx);
        let dropped = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let pass_on = PassOn {
            tx,
            dropped: dropped.clone(),
        };
        let stream = control_frames(&[Control::Snapshot { id: "a".into() }]);
        read_control(&stream[..], shutdown.clone(), &pass_on);
        assert!(
            shutdown.load(Ordering::SeqCst),
            "end of stream: the master is gone"
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
    }
}
