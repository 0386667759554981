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
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A connected plugin.
pub struct Session {
    pub mode: Mode,
    /// The master's hello (in standalone mode, one made up from local facts).
    pub hello: MasterHello,
    output: Output,
    shutdown: Arc<AtomicBool>,
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
            let hello = MasterHello {
                protocol: PROTOCOL_VERSION,
                plugin: name.to_owned(),
                host_id: hids_procfs::host::machine_id().unwrap_or_else(|_| "unknown".into()),
                hostname: hids_procfs::host::hostname(),
                run_id: hids_wire::new_run_id(),
                labels: Default::default(),
            };
            return Ok(Session {
                mode: Mode::Standalone,
                hello,
                output: Output::new(stdout, Mode::Standalone),
                shutdown,
            });
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
        let flag = shutdown.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || read_control(input, flag))?;
        Ok(Session {
            mode: Mode::Supervised,
            hello,
            output,
            shutdown,
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
}

fn read_control(mut input: File, shutdown: Arc<AtomicBool>) {
    let mut payload = Vec::new();
    loop {
        match hids_wire::read_frame(&mut input, DEFAULT_MAX_PAYLOAD, &mut payload) {
            Ok(Some(h)) if h.kind == Kind::Control => {
                match hids_wire::decode::<Control>("control", &payload) {
                    Ok(Control::Shutdown) => break,
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
